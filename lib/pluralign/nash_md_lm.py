"""Nash-MD-PG for causal language models (Munos et al. 2024, §7), one file.

One iteration on B prompts x ~ ρ:

  y  ~ π_θ(·|x)          ``model.generate`` (KV cache)
  y' ~ π'(·|x)           token by token from the geometric mixture of the policy and μ,
                         log π'(·|x, y'_<t) = (1−β) log π_θ(·|x, y'_<t) + β log μ(·|x, y'_<t) + c_t,
                         renormalised at every token; no gradient flows through π'
  P  = P(y ≻ y'|x)       from a preference callable (a pairwise model, or σ(r(y) − r(y')))
  ∇  ≈ mean_b ∇ log π_θ(y|x) · [P − ½ − τ log(π_θ(y|x) / μ(y|x))]      (ascent)

β = 0 is self-play (the opponent is the current policy), β = 1 the best response to μ.

The update (:meth:`NashMD.step`) gets PPO's budget of gradient steps (``pluralign.ppo.PPO``):
ppo_epochs passes over the batch in shuffled minibatches of M sequences, one AdamW step (after
gradient-norm clipping) per minibatch, ppo_epochs · ⌈B / M⌉ in all.  To reuse a batch soundly the
advantage is held fixed and the policy's change is clipped, as in PPO:

  k_b  = Σ_t (log π_old − log μ)(y_bt)                the sequence log-ratio at θ_old, once per batch
  A_b  = P_b − ½ − τ k_b                              (P_b less the missing-EOS penalty), held fixed
  ρ_bt = exp(log π_θ(y_bt) − log π_old(y_bt))         per token
  loss = − mean_b Σ_t mask_bt · min(ρ_bt A_b, clip(ρ_bt, 1−ε, 1+ε) A_b)      (ε = cliprange)

At θ = θ_old (ρ = 1) its gradient is −mean_b A_b Σ_t ∇ log π_θ(y_bt), the score-function estimator
above, so ppo_epochs = 1 with one minibatch is the plain Nash-MD-PG step (:func:`nash_md_loss`).
θ̄ (the EMA opponents) moves once per ``step``, after all its passes.

The opponent y' (``NashMDConfig.opponent``), with θ̄ ← d θ̄ + (1−d) θ after every step (d = ema_decay):

  "mixture"      Nash-MD-PG (the paper's):  log π' = (1−β) log π_θ + β log μ + c   (default)
  "ema"          Nash-EMA-PG (the paper's): π' = π_θ̄, the EMA policy alone (β unused for y')
  "ema_mixture"  ours, not the paper's:     log π' = (1−β) log π_θ̄ + β log μ + c

μ is the reference (initial) policy: a frozen copy, or for a peft ``PeftModel`` the same
network with its adapters disabled.  θ̄ is a frozen copy of the model, or for a ``PeftModel`` a
second adapter ("ema") on the same frozen base, active only while y' is drawn.

TRL 1.13's ``NashMDTrainer`` sampled y' by re-running both models on the whole sequence for
every new token (O(T²)); :func:`mixture_sample` keeps one KV cache per model view instead, and
:func:`mixture_sample_nocache` is that O(T²) computation, kept as the test oracle (both in
:mod:`pluralign.sampling`, shared with PPO's rollouts and the KL frontier's checkpoints).

Shapes: B sequences, Q query positions (left-padded), T response positions (right-padded),
V vocabulary.  Dropout is off throughout (models stay in eval mode).

Several processes (``accelerator=``; ``pluralign.ppo``, section "several processes"): the policy
is wrapped by ``accelerator.prepare`` (DDP or FSDP) and every forward of θ — y, y', log π — runs
through it.  The loss is a mean over sequences of per-sequence terms, so with B sequences on each
process DDP's average of the gradients is the gradient on all W·B of them.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import lm
from .ppo import (OPTIMIZERS, PolicyModule, Rollout, accelerate_prepare, full_state_dict, fused_gelu,
                  is_main_process, is_sharded, make_optimizer, optimiser_step, prepare_frozen,
                  response_logprobs_and_values, sample_responses, trainable)
# the opponent's sampler (the geometric mixture, token by token) lives in pluralign.sampling, shared
# with PPO's rollouts and the KL frontier; re-exported here, where the algorithm box uses it
from .sampling import _check_left_padded, _is_peft, mixture_logprobs, mixture_sample, mixture_sample_nocache

__all__ = [
    "NashMDConfig",
    "mixture_logprobs",
    "mixture_sample",
    "mixture_sample_nocache",
    "nash_md_loss",
    "nash_md_advantage",
    "nash_md_clipped_loss",
    "adapter_active",
    "add_ema_adapter",
    "preference_from_reward",
    "NashMDRollout",
    "NashMD",
    "train_nash_md",
]


OPPONENTS = ("mixture", "ema", "ema_mixture")
OPPONENT_STREAM = 7_919  # offset of the opponent's seed from the policy's (any value but 0)


@dataclass
class NashMDConfig:
    """Hyper-parameters.  beta is the mixture weight of μ in the opponent (TRL's mixture_coef),
    tau the KL regularisation τ (TRL's beta).  opponent picks y' (see the module docstring):
    "mixture" (Nash-MD-PG, the default), "ema" (Nash-EMA-PG: y' ~ π_θ̄; beta is not used) or
    "ema_mixture" (ours: the geometric mixture of π_θ̄ and μ with weight beta); ema_decay d of
    θ̄ ← d θ̄ + (1−d) θ is required by the two EMA opponents and refused otherwise.
    missing_eos_penalty is subtracted from P(y ≻ y') for responses y that never emit EOS.

    The update budget, PPO's names and meaning (``pluralign.ppo.PPOConfig``): ppo_epochs passes
    over each batch in minibatches of mini_batch_size sequences (None: the whole batch, one
    minibatch; else a divisor of batch_size), one AdamW step per minibatch, on the clipped
    surrogate with ratio clip ε = cliprange.  The defaults (1, None) take one step per batch: the
    plain Nash-MD-PG update, where cliprange has no effect (ρ = 1).  optim: the AdamW kernel
    (:func:`pluralign.ppo.make_optimizer`)."""

    beta: float = 0.125
    tau: float = 0.01
    learning_rate: float = 1e-3
    batch_size: int = 64
    max_new_tokens: int = 32
    temperature: float = 1.0
    max_grad_norm: float = 1.0
    ema_decay: float | None = None
    opponent: str = "mixture"
    missing_eos_penalty: float | None = None
    ppo_epochs: int = 1
    mini_batch_size: int | None = None
    cliprange: float = 0.2
    optim: str = "adamw_torch"
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, name: str, rule: str):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_num(self.beta) and 0 <= self.beta <= 1, "beta", "in [0, 1]")
        for name in ("tau", "learning_rate", "temperature", "max_grad_norm", "cliprange"):
            need(is_num(getattr(self, name)) and getattr(self, name) > 0, name, "a finite number > 0")
        for name in ("batch_size", "max_new_tokens", "ppo_epochs"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.mini_batch_size is None or (is_int(self.mini_batch_size) and self.mini_batch_size >= 1
                                              and self.batch_size % self.mini_batch_size == 0),
             "mini_batch_size", f"None or a divisor of batch_size={self.batch_size}")
        need(self.ema_decay is None or (is_num(self.ema_decay) and 0 <= self.ema_decay <= 1), "ema_decay",
             "None or in [0, 1]")
        need(self.opponent in OPPONENTS, "opponent", f"one of {', '.join(map(repr, OPPONENTS))}")
        if self.opponent == "mixture" and self.ema_decay is not None:
            raise ValueError(f"ema_decay is only used by the EMA opponents: set opponent='ema' (Nash-EMA-PG) "
                             f"or 'ema_mixture' (θ̄–μ mixture, ours), or ema_decay=None; "
                             f"got ema_decay={self.ema_decay!r}")
        if self.opponent != "mixture" and self.ema_decay is None:
            raise ValueError(f"opponent {self.opponent!r} needs ema_decay (θ̄ ← d θ̄ + (1−d) θ), got None")
        need(self.missing_eos_penalty is None or is_num(self.missing_eos_penalty), "missing_eos_penalty",
             "None or a finite number")
        need(isinstance(self.optim, str) and self.optim in OPTIMIZERS, "optim", f"one of {OPTIMIZERS}")
        need(is_int(self.seed), "seed", "an integer")


# -- θ̄ for a peft model: a second adapter on the same base ------------------------------------
EMA_ADAPTER = "ema"


@contextmanager
def adapter_active(model, name: str):
    """Context: the PeftModel ``model`` runs with adapter ``name`` active (frozen).  On exit the
    previously active adapter is active again and every parameter's requires_grad is what it was
    (peft's ``set_adapter`` and ``disable_adapter`` both rewrite those flags)."""
    previous = model.active_adapter
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    model.set_adapter(name, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for p, flag in requires_grad:
            p.requires_grad_(flag)


@torch.no_grad()
def add_ema_adapter(model, name: str = EMA_ADAPTER) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """θ̄ as adapter ``name`` of the PeftModel ``model``, beside its active (policy) adapter on the
    same base weights: the policy adapter's config in inference mode, θ̄_0 = θ_0 (copied), frozen.
    The active adapter and every requires_grad flag are left as they were.

    Returns the pairs (θ̄_i, θ_i), one per trainable parameter of the policy (each θ̄_i with
    θ_i's shape, dtype and device), for θ̄ ← d θ̄ + (1−d) θ."""
    policy = model.active_adapter
    if not isinstance(policy, str):
        raise ValueError(f"the policy must have one active adapter, got {policy!r}")
    if name in model.peft_config:
        raise ValueError(f"the model already has an adapter named {name!r}")
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    theta = {n: p for n, p in model.named_parameters() if p.requires_grad}
    config = copy.deepcopy(model.peft_config[policy])
    config.inference_mode = True
    model.add_adapter(name, config)
    for p, flag in requires_grad:
        p.requires_grad_(flag)
    params = dict(model.named_parameters())
    pairs = []
    for n, p in theta.items():
        n_bar = n.replace(f".{policy}.", f".{name}.")
        if n_bar == n or n_bar not in params:
            model.delete_adapter(name)
            raise ValueError(f"trainable parameter {n} is not part of the adapter {policy!r}: an EMA adapter cannot "
                             "hold its average (freeze it, or give the trainer a model without peft)")
        bar = params[n_bar].requires_grad_(False)
        if bar.dtype != p.dtype or bar.device != p.device:
            bar.data = torch.empty_like(p)
        bar.copy_(p)
        pairs.append((bar, p))
    return pairs


# -- the policy gradient -----------------------------------------------------------------------
def nash_md_loss(logprobs, ref_logprobs, mask, preference, tau: float):
    """Score-function surrogate of Nash-MD-PG.

    logprobs (B, T): log π_θ(y_t) with grad; ref_logprobs (B, T): log μ(y_t); mask (B, T);
    preference (B,): P(y ≻ y'|x).  With the sequence log-ratio k = Σ_t (log π_θ − log μ)(y_t) and
    A = P − ½ − τ k (detached: the bracket is a weight, not a function to differentiate),

        loss = −mean_b A_b Σ_t log π_θ(y_bt),   so   −∇loss = mean_b ∇ log π_θ(y_b|x) · A_b.

    This is the one-update step (ppo_epochs = 1, one minibatch), whose gradient
    :func:`nash_md_clipped_loss` has at θ = θ_old; :meth:`NashMD.step` uses that one, and this is
    kept as its reference.  Returns (loss, stats) with detached floats preference (mean P), kl
    (mean k), loss, advantage."""
    mask = mask.to(logprobs.dtype)
    seq_logprob = (logprobs * mask).sum(1)
    with torch.no_grad():
        kl = ((logprobs - ref_logprobs) * mask).sum(1)
        advantage = preference.to(logprobs.dtype) - 0.5 - tau * kl
    loss = -(advantage * seq_logprob).mean()
    stats = {"preference": float(preference.float().mean()), "kl": float(kl.mean()), "loss": float(loss.detach()),
             "advantage": float(advantage.mean())}
    return loss, stats


@torch.no_grad()
def nash_md_advantage(old_logprobs, ref_logprobs, mask, preference, tau: float):
    """A_b = P_b − ½ − τ k_b with k_b = Σ_t (log π_old − log μ)(y_bt), no grad.

    old_logprobs, ref_logprobs, mask (B, T); preference (B,) (already less any missing-EOS
    penalty).  Returns (A (B,), k (B,)) in old_logprobs' dtype: computed once per batch at θ_old
    and held fixed over the passes of :meth:`NashMD.step`, as PPO holds its advantages."""
    mask = mask.to(old_logprobs.dtype)
    kl = ((old_logprobs - ref_logprobs) * mask).sum(1)
    return preference.to(old_logprobs.dtype) - 0.5 - tau * kl, kl


def nash_md_clipped_loss(logprobs, old_logprobs, advantage, mask, cliprange: float):
    """Clipped surrogate of Nash-MD-PG, for reusing a batch (PPO's clip on a sequence advantage).

    logprobs (B, T): log π_θ(y_t) with grad; old_logprobs (B, T): log π_old(y_t), the policy that
    sampled y (no grad); advantage (B,): A_b = P_b − ½ − τ k_b (:func:`nash_md_advantage`, fixed);
    mask (B, T).  With the per-token ratio ρ_bt = exp(log π_θ(y_bt) − log π_old(y_bt)) and ε = cliprange,

        loss = − mean_b Σ_t mask_bt · min(ρ_bt A_b, clip(ρ_bt, 1−ε, 1+ε) A_b)

    (a sum over tokens, a mean over sequences).  At θ = θ_old, ρ = 1 and
    −∇loss = mean_b A_b Σ_t ∇ log π_θ(y_bt), the gradient of :func:`nash_md_loss`.  A token whose
    ratio has left [1−ε, 1+ε] on the side its advantage favours (ρ > 1+ε with A > 0, ρ < 1−ε with
    A < 0) gets no gradient.

    Returns (loss, stats) with detached floats loss, clipfrac (the fraction of tokens where the
    clipped branch is the smaller), approx_kl (½ mean (log ρ)²) and ratio (mean ρ), means over
    the masked tokens."""
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    a = advantage.to(logprobs.dtype)[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange) * a
    loss = -(torch.minimum(unclipped, clipped) * mask).sum(1).mean()
    with torch.no_grad():
        n = mask.sum().clamp_min(1)
        stats = {"loss": float(loss), "clipfrac": float(((clipped < unclipped) * mask).sum() / n),
                 "approx_kl": float(0.5 * (log_ratio ** 2).sum() / n), "ratio": float((ratio * mask).sum() / n)}
    return loss, stats


def preference_from_reward(reward):
    """Bradley–Terry preference P(y ≻ y'|x) = σ(r(x, y) − r(x, y')) from a reward callable
    ``reward(prompts, responses) -> (B,)`` (the only kind of preference TRL 1.13's Nash-MD took)."""

    def preference(prompts, responses, opponents):
        return torch.sigmoid(reward(prompts, responses) - reward(prompts, opponents))

    return preference


# -- the trainer -------------------------------------------------------------------------------
@dataclass
class NashMDRollout:
    """One batch: query_ids/query_mask (B, Q) left-padded; y = response_ids/response_mask (B, T)
    from π_θ; y' = opponent_ids/opponent_mask (B, T') from π'; ref_logprobs (B, T): log μ(y_t)."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    opponent_ids: torch.Tensor
    opponent_mask: torch.Tensor
    ref_logprobs: torch.Tensor

    # query + y and its mask, and the batch size: exactly as for a PPO rollout
    input_ids = Rollout.input_ids
    attention_mask = Rollout.attention_mask
    __len__ = Rollout.__len__


class NashMD:
    """Nash-MD-PG (or, by ``config.opponent``, Nash-EMA-PG or our θ̄–μ mixture) on a causal LM
    ``model`` (a transformers model or a peft ``PeftModel``).

    μ: the adapter-disabled model for a PeftModel (ref_model must be None), else ``ref_model`` or a
    frozen deepcopy of the initial model.  θ̄ (opponents "ema", "ema_mixture"): for a PeftModel the
    adapter ``ema_adapter`` added beside the policy's by :func:`add_ema_adapter` (no copy of the
    base; ``ema_model`` is None), else ``ema_model``, a frozen deepcopy.  One AdamW (no weight
    decay) over the trainable parameters; ``n_updates`` counts its steps so far (ppo_epochs ·
    ⌈B / mini_batch_size⌉ per :meth:`step`).  ``torch.manual_seed(config.seed)`` is called here
    (y is drawn from the global generator); y' with a private generator seeded config.seed +
    OPPONENT_STREAM (another stream: see ``__init__``), and minibatches are shuffled with another (so that minibatching leaves the draws of y' alone).

    ``accelerator``: as for :class:`pluralign.ppo.PPO` — ``policy`` (:class:`pluralign.ppo.PolicyModule`)
    and ``optimizer`` are what ``accelerator.prepare`` made of them; under FSDP the frozen full
    copies (μ, θ̄) are sharded too.  None: plain torch on one process."""

    def __init__(self, model, tokenizer, config: NashMDConfig | None = None, ref_model=None, accelerator=None):
        self.config = cfg = config if config is not None else NashMDConfig()
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer.pad_token_id is None; add a distinct pad token "
                             "(tokenizer.add_special_tokens({'pad_token': '<pad>'})): pad must differ from eos")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer.eos_token_id is None; the tokenizer needs an eos_token")
        self.is_peft = _is_peft(model)
        if self.is_peft and ref_model is not None:
            raise ValueError("ref_model must be None for a PeftModel: the reference is the adapter-disabled model")
        self.model, self.tokenizer = fused_gelu(model).eval(), tokenizer
        self.device = next(model.parameters()).device
        self.ref_model = None
        if not self.is_peft:
            self.ref_model = fused_gelu(ref_model if ref_model is not None else copy.deepcopy(model)).eval()
            self.ref_model.requires_grad_(False)
        self.policy = PolicyModule(self.model)  # the module that runs θ, and that accelerate wraps
        self.params = trainable(self.policy)
        self.policy_adapter = model.active_adapter if self.is_peft else None
        # θ̄: pairs (θ̄_i, θ_i) over the trainable parameters
        self.ema_model, self.ema_adapter, self.ema_pairs = None, None, []
        if cfg.opponent != "mixture" and self.is_peft:
            self.ema_adapter = EMA_ADAPTER
            self.ema_pairs = add_ema_adapter(model, EMA_ADAPTER)
        elif cfg.opponent != "mixture":
            self.ema_model = copy.deepcopy(model).eval()
            self.ema_model.requires_grad_(False)
            self.ema_pairs = [(bar, p) for bar, p in zip(self.ema_model.parameters(), model.parameters())
                              if p.requires_grad]
        # seeded after add_ema_adapter, whose initialisation draws from the global generator
        torch.manual_seed(cfg.seed)
        # y' draws from its own stream, never the one y draws from: y and y' sample by the same
        # inverse CDF (pluralign.ppo.sample_responses), so with one seed and π' = π_θ (β = 0, or at
        # the start, when θ = μ) they would be the same responses and P(y ≻ y') would be ½ throughout
        self.generator = torch.Generator().manual_seed(cfg.seed + OPPONENT_STREAM)
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        self.optimizer = make_optimizer(self.params, cfg.learning_rate, cfg.optim)
        self.accelerator = accelerator
        self.policy, self.optimizer = accelerate_prepare(accelerator, self.policy, self.optimizer)
        if is_sharded(accelerator):  # FSDP replaced the parameters with their shards
            self.ref_model = prepare_frozen(accelerator, self.ref_model) if self.ref_model is not None else None
            self.ema_model = prepare_frozen(accelerator, self.ema_model) if self.ema_model is not None else None
            self.params = trainable(self.policy)
            self.ema_pairs = self._ema_pairs_by_name()
        self.n_updates = 0
        self.generation_kwargs = dict(
            do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
            max_new_tokens=cfg.max_new_tokens, min_new_tokens=0, use_cache=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )

    def _ema_pairs_by_name(self) -> list:
        """The pairs (θ̄_i, θ_i) looked up by parameter name (again after FSDP has sharded them)."""
        if self.config.opponent == "mixture":
            return []
        theta = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.ema_adapter is not None:
            params = dict(self.model.named_parameters())
            return [(params[n.replace(f".{self.policy_adapter}.", f".{self.ema_adapter}.")], p) for n, p in theta]
        params = dict(self.ema_model.named_parameters())
        return [(params[n], p) for n, p in theta]

    @contextmanager
    def opponent_policy(self):
        """Context yielding the model that is π in the opponent: θ ("mixture"), θ̄ ("ema", "ema_mixture"):
        ``ema_model``, or for a PeftModel the policy with its EMA adapter active until the context ends."""
        if self.config.opponent == "mixture":
            yield self.model
        elif self.ema_adapter is not None:
            with adapter_active(self.model, self.ema_adapter) as model:
                yield model
        else:
            yield self.ema_model

    @torch.no_grad()
    def sample_opponent(self, query_ids: torch.Tensor, query_mask: torch.Tensor, generator=None,
                        return_logprobs: bool = False):
        """y' ~ π'(·|x) for left-padded queries (B, Q), by :func:`mixture_sample`:

          "mixture"      log π' = (1−β) log π_θ + β log μ + c    (Nash-MD-PG)
          "ema"          π' = π_θ̄                                (Nash-EMA-PG: mixture_sample at β = 0)
          "ema_mixture"  log π' = (1−β) log π_θ̄ + β log μ + c    (ours)

        generator: the trainer's own by default.  Returns (B, T) ids and mask and, with
        return_logprobs, the (B, T, V) log π' at every step, as :func:`mixture_sample`."""
        cfg, tok = self.config, self.tokenizer
        beta = 0.0 if cfg.opponent == "ema" else cfg.beta
        with self.opponent_policy() as pi:
            return self.policy(mixture_sample, pi, self.ref_model, query_ids.to(self.device),
                               query_mask.to(self.device).long(), beta, cfg.max_new_tokens, tok.eos_token_id,
                               tok.pad_token_id, cfg.temperature, self.generator if generator is None else generator,
                               return_logprobs)

    # -- rollout ---------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> NashMDRollout:
        """y ~ π_θ (:func:`pluralign.ppo.sample_responses`), y' ~ π' (:meth:`sample_opponent`), and log μ(y_t)."""
        cfg, tok = self.config, self.tokenizer
        query_ids, query_mask = query_ids.to(self.device), query_mask.to(self.device).long()
        _check_left_padded(query_mask)
        Q = query_ids.shape[1]
        response, mask = self.policy(sample_responses, self.model, query_ids, query_mask, self.generation_kwargs)
        opponent, opponent_mask = self.sample_opponent(query_ids, query_mask)
        ids = torch.cat([query_ids, response], 1)
        am = torch.cat([query_mask, mask.long()], 1)
        if self.is_peft:  # μ: the policy with its adapters disabled
            with self.model.disable_adapter():
                ref_lp, _, _ = self.policy(response_logprobs_and_values, self.model, None, ids, am, Q,
                                           cfg.temperature, entropy=False)
        else:
            ref_lp, _, _ = response_logprobs_and_values(self.ref_model, None, ids, am, Q, cfg.temperature,
                                                        entropy=False)
        return NashMDRollout(query_ids, query_mask, response, mask, opponent, opponent_mask, ref_lp)

    # -- update ----------------------------------------------------------------------------
    def step(self, rollout: NashMDRollout, preference) -> dict:
        """Update θ from a rollout and P(y ≻ y'|x) (B,): ppo_epochs passes over the batch in
        minibatches of mini_batch_size (shuffled with the trainer's private generator when there
        is more than one), one AdamW step with gradient-norm clipping per minibatch on
        :func:`nash_md_clipped_loss`; then, once, θ̄ ← d θ̄ + (1−d) θ.

        log π_old(y_t) and the advantages A_b (:func:`nash_md_advantage`) are computed here, once,
        before the first update, and held fixed over the passes.  Here rather than in
        :meth:`rollout` because (i) with one update (ppo_epochs = 1, one minibatch) the update's own
        forward runs at θ = θ_old, so its detached log-probs are log π_old: no extra forward, and the
        update is the plain Nash-MD-PG step of :func:`nash_md_loss`; only with more than one
        update does one no-grad forward (in minibatch-sized chunks) come first; and (ii) they are
        then always of the tokens trained on.  θ does not move between ``rollout`` and ``step``
        (θ̄ too moves only here), so θ_old is the policy that sampled y.

        Returns the batch's preference (mean P, unpenalised), kl (mean k_b), advantage (mean A_b),
        lengths and eos_frac, and the means over the minibatch updates of loss, grad_norm,
        clipfrac, approx_kl and ratio."""
        cfg = self.config
        B, Q = len(rollout), rollout.query_ids.shape[1]
        preference = torch.as_tensor(preference, device=self.device).reshape(-1).float()
        if preference.shape[0] != B:
            raise ValueError(f"preference must have one entry per sequence ({B}), got {preference.shape[0]}")
        if not bool(((preference >= 0) & (preference <= 1)).all()):
            raise ValueError("preference must be probabilities P(y ≻ y') in [0, 1]")
        has_eos = ((rollout.response_ids == self.tokenizer.eos_token_id) & rollout.response_mask).any(1)
        target = preference
        if cfg.missing_eos_penalty is not None:
            target = preference - cfg.missing_eos_penalty * (~has_eos).float()

        ids, am, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        lengths = mask.sum(1)
        M = B if cfg.mini_batch_size is None else cfg.mini_batch_size
        starts = range(0, B, M)

        def policy_logprobs(idx):
            # columns that are padding for every row of idx are dropped, as in PPO.step
            T = int(lengths[idx].max())
            lp, _, _ = self.policy(response_logprobs_and_values, self.model, None, ids[idx, :Q + T],
                                   am[idx, :Q + T], Q, cfg.temperature, entropy=False)
            return lp

        self.model.eval()
        first = None
        if cfg.ppo_epochs == 1 and len(starts) == 1:  # one update, at θ = θ_old: its forward gives log π_old
            first = policy_logprobs(slice(None))
            old = torch.nn.functional.pad(first.detach(), (0, mask.shape[1] - first.shape[1]))
        else:
            with torch.no_grad():
                parts = [policy_logprobs(slice(s0, s0 + M)) for s0 in starts]
            old = torch.zeros(mask.shape, dtype=parts[0].dtype, device=self.device)
            for s0, lp in zip(starts, parts):
                old[s0:s0 + M, :lp.shape[1]] = lp
        advantage, kl = nash_md_advantage(old, rollout.ref_logprobs, mask, target, cfg.tau)

        sums, n = {}, 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.shuffle_generator).to(self.device) if len(starts) > 1 else None
            for s0 in starts:
                idx = perm[s0:s0 + M] if perm is not None else slice(None)
                if first is not None:
                    lp, first = first, None
                else:
                    lp = policy_logprobs(idx)
                T = lp.shape[1]
                loss, st = nash_md_clipped_loss(lp, old[idx, :T], advantage[idx], mask[idx, :T], cfg.cliprange)
                st["grad_norm"] = optimiser_step(self.accelerator, self.optimizer, self.params, loss,
                                                 cfg.max_grad_norm)
                self.n_updates += 1
                for k, x in st.items():
                    sums[k] = sums.get(k, 0.0) + x
                n += 1
        if self.ema_pairs:
            self.update_ema()
        stats = {k: x / n for k, x in sums.items()}
        stats.update({
            "preference": float(preference.mean()),
            "kl": float(kl.mean()),
            "advantage": float(advantage.mean()),
            "response_length": float(lengths.float().mean()),
            "opponent_length": float(rollout.opponent_mask.sum(1).float().mean()),
            "eos_frac": float(has_eos.float().mean()),
        })
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        """θ̄ ← d θ̄ + (1−d) θ over the trainable parameters (the rest never move)."""
        d = self.config.ema_decay
        for theta_bar, theta in self.ema_pairs:
            theta_bar.lerp_(theta, 1 - d)

    # -- helpers ---------------------------------------------------------------------------
    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Texts of (B, T) responses (special tokens, including EOS and padding, skipped)."""
        return [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
                for row, m in zip(ids.cpu(), mask.cpu())]

    def save_pretrained(self, path) -> None:
        """The policy (its adapter only for a PeftModel, not the EMA's) and tokenizer via ``save_pretrained``.
        With an accelerator call it on every process: the main one writes (under FSDP from the
        state gathered off the shards)."""
        path = Path(path)
        extra = {}
        if is_sharded(self.accelerator):
            state = full_state_dict(self.accelerator, self.policy)
            extra = {"state_dict": {k[len("model."):]: v for k, v in state.items()}} if state is not None else {}
        if not is_main_process(self.accelerator):
            return
        path.mkdir(parents=True, exist_ok=True)
        if self.ema_adapter is not None:
            self.model.save_pretrained(path, selected_adapters=[self.policy_adapter], **extra)
        else:
            self.model.save_pretrained(path, **extra)
        self.tokenizer.save_pretrained(path)

    # -- checkpoints (accelerate's save_state / load_state) -----------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs besides the model and optimizer (``accelerator.save_state`` saves
        those, θ̄'s adapter with the model, and the global random states): the update count and the
        opponent's and the shuffles' generators; an unsharded full-model θ̄'s weights (a sharded one
        is one of accelerate's prepared models, saved with them).  Register the trainer with
        ``accelerator.register_for_checkpointing``."""
        state = {"n_updates": self.n_updates, "generator": self.generator.get_state(),
                 "shuffle_generator": self.shuffle_generator.get_state()}
        if self.ema_model is not None and not is_sharded(self.accelerator):
            state["ema_model"] = self.ema_model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.n_updates = state["n_updates"]
        self.generator.set_state(state["generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        if "ema_model" in state:
            self.ema_model.load_state_dict(state["ema_model"])


def train_nash_md(base_path: str, tokenizer, preference, prompts: list[str], steps: int, config: NashMDConfig,
                  progress: bool = True, monitor=None, on_step=None):
    """Nash-MD-PG from the base policy at ``base_path`` for ``steps`` iterations.

    Prompts are drawn (seeded) in batches of ``config.batch_size``; ``preference(prompts, y, y')``
    returns P(y ≻ y'|x) (B,) for the decoded texts (" " + text.strip()).  Returns (trainer,
    history) with, per step, the mean preference, KL estimate, loss and the rest of the step's
    stats, plus ``monitor(texts_y)``'s numbers.  ``on_step(step, policy)`` runs after every update
    (e.g. :class:`pluralign.frontier.Checkpoints`)."""
    policy = lm.load_causal_lm(base_path, tokenizer)
    trainer = NashMD(policy, tokenizer, config)
    g = torch.Generator().manual_seed(config.seed)
    history = []
    for step in tqdm(range(1, steps + 1), desc=f"Nash-MD (β={config.beta})", disable=not progress, mininterval=10):
        batch = [prompts[i] for i in torch.randint(len(prompts), (config.batch_size,), generator=g).tolist()]
        ids, mask = lm.encode_prompts(tokenizer, batch)
        roll = trainer.rollout(ids, mask)
        texts_y = [" " + t.strip() for t in trainer.decode(roll.response_ids, roll.response_mask)]
        texts_y_prime = [" " + t.strip() for t in trainer.decode(roll.opponent_ids, roll.opponent_mask)]
        p = preference(batch, texts_y, texts_y_prime)
        stats = trainer.step(roll, p)
        row = {"step": step, **{k: float(v) for k, v in stats.items()}}
        if monitor is not None:
            row.update(monitor(texts_y))
        history.append(row)
        if on_step is not None:
            on_step(step, trainer.model)
    return trainer, history
