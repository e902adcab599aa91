"""PPO for causal language models (Ziegler et al. 2019; Ouyang et al. 2022), one file.

TRL 1.16 no longer ships ``PPOTrainer``, so this kernel is ours.  It follows TRL's conventions
where they touch language models (left-padded queries, ``tokenizer.pad_token_id``,
``save_pretrained``, logits divided by the sampling temperature, KL-shaped per-token rewards,
dropout off) and drops the Trainer ceremony.  One iteration on B queries x:

  rollout   y ~ π_θ(·|x) with ``model.generate`` (KV cache); every token after the first EOS
            is padding.  One no-grad forward gives old log-probs log π_old(y_t) and values V_t;
            one more gives log π_ref(y_t).
  rewards   r_t = −β (log π_old(y_t) − log π_ref(y_t)) + 1[t = last response token] · score
  GAE       δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γλ A_{t+1},   R_t = A_t + V_t
  update    ppo_epochs passes over shuffled minibatches, advantages whitened, minimising
            −min(ρ_t A_t, clip(ρ_t, 1±ε) A_t) + c_v · ½ max((V_t − R_t)², (clip V_t − R_t)²),
            ρ_t = π_θ(y_t) / π_old(y_t); gradient-norm clipping; one AdamW step per minibatch.
  schedule  the learning rate stays fixed or decays to 0 over total_steps iterations (cosine,
            linear); β stays fixed or, with a kl_target, adapts (Ziegler et al. 2019):
            β ← β (1 + clip(KL / kl_target − 1, ±0.2) · B / kl_horizon), KL = mean_b Σ_t log π_old/π_ref.

Shapes: B sequences, Q query positions (left-padded), T response positions (right-padded).
Token t of the response is predicted by the logits at position Q − 1 + t of query+response.
The value head shares the policy's backbone (CleanRL style): one forward gives both logits and
values, no second network to store, run or shard.  With a LoRA (peft) policy the reference is
the same network with adapters disabled, so one copy of the weights serves both.

Several processes (``accelerator=``; the section "several processes" below): the policy and its
value head are one module wrapped by ``accelerator.prepare`` (DDP or FSDP), and every forward of θ
runs through it.  Each process rolls out and scores its own B sequences; the whitening, the
per-token means of the loss and the KL that drives β are over all processes' sequences, so W
processes take the step one process would take on the W·B sequences (the minibatches are each
process's own shuffles).
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .lm import fused_gelu  # re-exported: the policies' and reward models' fused GELU lives in lm
from .sampling import _is_peft, mixture_sample, truncate_after_eos  # the sampler the trainers and the frontier share

__all__ = [
    "PPOConfig",
    "LR_SCHEDULES",
    "lr_multiplier",
    "ValueHead",
    "masked_mean",
    "fused_gelu",
    "sample_responses",
    "whiten",
    "gae",
    "per_token_rewards",
    "ppo_loss",
    "response_logprobs_and_values",
    "truncate_after_eos",
    "Rollout",
    "PPO",
    "load_value_head",
    "PolicyModule",
    "GlobalBatch",
    "make_accelerator",
    "make_optimizer",
]


LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # transformers' TrainingArguments.optim names


@dataclass
class PPOConfig:
    """Hyper-parameters (TRL's names where they exist).  kl_coef is β in the shaped reward (the
    initial β when kl_target is set: the adaptive controller of Ziegler et al. 2019 / TRL's
    AdaptiveKLController, horizon kl_horizon); cliprange/cliprange_value are ε for the ratio and
    the value; top_k=0 means no top-k, top_p=1 no nucleus cut; lr_schedule decays learning_rate to
    0 over total_steps PPO iterations (calls to :meth:`PPO.step`; needed unless "constant");
    missing_eos_penalty is subtracted from the score of responses that never emit EOS.  optim picks
    the AdamW implementation (:func:`make_optimizer`, transformers' names)."""

    batch_size: int = 64
    mini_batch_size: int = 16
    ppo_epochs: int = 4
    learning_rate: float = 1e-3
    kl_coef: float = 0.05
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_grad_norm: float = 1.0
    lr_schedule: str = "constant"
    total_steps: int | None = None
    kl_target: float | None = None
    kl_horizon: int = 10000
    missing_eos_penalty: float | None = None
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

        for name in ("batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(self.mini_batch_size <= self.batch_size, "mini_batch_size", f"<= batch_size={self.batch_size}")
        need(self.batch_size % self.mini_batch_size == 0, "mini_batch_size",
             f"a divisor of batch_size={self.batch_size}")
        for name in ("learning_rate", "cliprange", "cliprange_value", "temperature", "max_grad_norm"):
            need(is_num(getattr(self, name)) and getattr(self, name) > 0, name, "a finite number > 0")
        for name in ("kl_coef", "vf_coef"):
            need(is_num(getattr(self, name)) and getattr(self, name) >= 0, name, ">= 0")
        for name in ("gamma", "lam"):
            need(is_num(getattr(self, name)) and 0 <= getattr(self, name) <= 1, name, "in [0, 1]")
        need(is_int(self.top_k) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)")
        need(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1] (1 = off)")
        need(isinstance(self.lr_schedule, str) and self.lr_schedule in LR_SCHEDULES, "lr_schedule",
             f"one of {LR_SCHEDULES}")
        need(self.total_steps is None or (is_int(self.total_steps) and self.total_steps >= 1), "total_steps",
             "None or an integer >= 1")
        need(self.lr_schedule == "constant" or self.total_steps is not None, "total_steps",
             f"an integer >= 1 when lr_schedule={self.lr_schedule!r}")
        need(self.kl_target is None or (is_num(self.kl_target) and self.kl_target > 0), "kl_target",
             "None or a finite number > 0")
        need(is_int(self.kl_horizon) and self.kl_horizon >= 1, "kl_horizon", "an integer >= 1")
        need(self.missing_eos_penalty is None or is_num(self.missing_eos_penalty), "missing_eos_penalty",
             "None or a finite number")
        need(isinstance(self.whiten_rewards, bool), "whiten_rewards", "a bool")
        need(isinstance(self.optim, str) and self.optim in OPTIMIZERS, "optim", f"one of {OPTIMIZERS}")
        need(is_int(self.seed), "seed", "an integer")


def lr_multiplier(schedule: str, k: int, total_steps: int | None) -> float:
    """learning_rate's factor at iteration k (k PPO steps done): 1 for "constant"; with
    κ = min(k, total_steps) / total_steps, ½(1 + cos πκ) for "cosine" and 1 − κ for "linear",
    so 1 at iteration 0 and 0 from iteration total_steps on."""
    if schedule == "constant":
        return 1.0
    frac = min(k, total_steps) / total_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


class ValueHead(nn.Module):
    """V(s_t) = w·h_t + b on the policy's last hidden state h_t (B, T, d) → (B, T).

    Zero-initialised, so the first advantages are the rewards-to-go.  It sits on the policy's own
    backbone rather than on a separate value model: one forward gives logits and values."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 if there are none)."""
    return (x * mask).sum() / mask.sum().clamp_min(1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total=None) -> torch.Tensor:
    """(x − mean) / std over the masked entries (unbiased variance); shift_mean=False adds the
    mean back (scale only, used for rewards).  Zero outside the mask.  ``total`` sums a tensor
    over the processes of a data-parallel run (:meth:`GlobalBatch.sum`), making
    mean and std those of every process's entries; None: this process's alone."""
    total = total if total is not None else (lambda t: t)
    n = total(mask.sum())
    mean = total((x * mask).sum()) / n.clamp_min(1)
    var = total(((x - mean) ** 2 * mask).sum()) / n.clamp_min(1) * n / (n - 1).clamp_min(1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation, right to left.  rewards, values, mask: (B, T), mask a
    prefix of ones (response tokens, then padding); V after the last real token is 0.
    Returns (advantages (B, T), returns = advantages + values (B, T)), zero beyond the mask."""
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """Shaped rewards r_t = −β (log π(y_t) − log π_ref(y_t)), plus the sequence score (B,) on the
    last real response token.  logprobs, ref_logprobs, mask: (B, T).  Returns (rewards, kl), both
    (B, T) and zero outside the mask."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    T = mask.shape[1]
    last = T - 1 - (mask > 0).flip(1).int().argmax(1)  # index of the last 1 in each row
    rewards[torch.arange(len(last), device=mask.device), last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def ppo_loss(new_logprobs, old_logprobs, advantages, new_values, old_values, returns, mask,
             cliprange: float, cliprange_value: float, vf_coef: float, n_tokens=None):
    """Clipped surrogate + clipped value loss, masked means over (B, T) tokens.

    pg_loss = mean max(−A ρ, −A clip(ρ, 1−ε, 1+ε)),  ρ = exp(new − old)
    vf_loss = ½ mean max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²)
    The means divide the masked sums by ``n_tokens`` (default: the number of masked tokens; with
    several processes :meth:`GlobalBatch.per_process_count`, so that DDP's average
    of the processes' gradients is the gradient of the mean over all their tokens).
    Returns (pg_loss + vf_coef · vf_loss, stats) with detached floats policy_loss, value_loss,
    clipfrac (tokens where the clipped branch is active), value_clipfrac, approx_kl (½ mean
    (log ρ)²) and ratio (mean ρ)."""
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    n = mask.sum().clamp_min(1) if n_tokens is None else n_tokens
    pg_loss = (torch.maximum(pg1, pg2) * mask).sum() / n

    v_clipped = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    vf1 = (new_values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    vf_loss = 0.5 * ((torch.maximum(vf1, vf2) * mask).sum() / n)

    loss = pg_loss + vf_coef * vf_loss
    with torch.no_grad():
        stats = {
            "policy_loss": float(pg_loss),
            "value_loss": float(vf_loss),
            "clipfrac": float(masked_mean((pg2 > pg1).to(mask.dtype), mask)),
            "value_clipfrac": float(masked_mean((vf2 > vf1).to(mask.dtype), mask)),
            "approx_kl": float(0.5 * masked_mean(log_ratio ** 2, mask)),
            "ratio": float(masked_mean(ratio, mask)),
        }
    return loss, stats


def response_logprobs_and_values(model, value_head, input_ids, attention_mask, n_query: int, temperature: float,
                                 entropy: bool = True):
    """One forward over query+response (B, Q+T) → (logprobs (B, T), values (B, T) or None,
    entropy (B, T) detached, or None with entropy=False).

    logprobs are of the response tokens under softmax(logits / temperature); values are read
    at the positions Q−1 … Q+T−2 that predict each response token (value_head=None skips them).
    Position ids count only attended tokens, as ``generate`` does with left padding.  The LM head
    runs on those T positions (and the last) only (``logits_to_keep``): the query's other logits
    would be computed to be thrown away, and with short answers they are a third of the work."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    T = input_ids.shape[1] - n_query
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=value_head is not None, use_cache=False, logits_to_keep=T + 1)
    logits = out.logits[:, -(T + 1):-1]  # (B, T, V): positions Q−1 … Q+T−2
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # PPO ratios and KL in fp32 for a half-precision model
    logits = logits / temperature
    response = input_ids[:, n_query:]
    lse = torch.logsumexp(logits, dim=-1)
    logprobs = torch.gather(logits, -1, response.unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if entropy:
        with torch.no_grad():
            ent = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, n_query - 1:-1]
        values = value_head(hidden.to(value_head.summary.weight.dtype))
    return logprobs, values, ent


def sample_responses(model, query_ids: torch.Tensor, query_mask: torch.Tensor, generation_kwargs: dict,
                     return_token_logprobs: bool = False):
    """y ~ π(·|x) for left-padded queries (B, Q) → (response ids (B, T) with pad after the first
    EOS, mask (B, T) bool up to and including it), T ≤ max_new_tokens.  With
    ``return_token_logprobs`` a third value: the drawn tokens' log π_T(y_t) (B, T) from the
    sampler's own logits, 0 outside the mask — or None where ``generate`` sampled (then score the
    response with a forward pass).

    ``model.generate`` with ``generation_kwargs``, except for plain sampling (top_k 0, top_p 1) on
    CPU: there :func:`pluralign.sampling.mixture_sample` at β = 0 draws from the same
    softmax(logits / temperature) with its own KV cache and one uniform per row (inverse CDF).  Why
    bypass ``generate``: on CPU its ``torch.multinomial`` over a 4,096-token vocabulary costs ~11 ms
    per token at batch 64 (measured in the cpu profile's PPO runs: a fifth of a run), more than the
    model's forward; the inverse-CDF draw costs a cumulative sum."""
    kw = generation_kwargs
    eos, pad = kw["eos_token_id"], kw["pad_token_id"]
    if kw.get("top_k", 0) == 0 and kw.get("top_p", 1.0) == 1.0 and query_ids.device.type == "cpu":
        return mixture_sample(model, model, query_ids, query_mask, 0.0, kw["max_new_tokens"], eos, pad,
                              kw["temperature"], return_token_logprobs=return_token_logprobs)
    out = model.generate(input_ids=query_ids, attention_mask=query_mask, **kw)
    response = truncate_after_eos(out[:, query_ids.shape[1]:], eos, pad)
    return response + (None,) if return_token_logprobs else response


@dataclass
class Rollout:
    """One batch of sampled responses.  query_ids/query_mask (B, Q), left-padded;
    response_ids (B, T), pad after the first EOS; response_mask (B, T) bool, EOS included;
    logprobs, ref_logprobs, values (B, T): log π_old, log π_ref and V_old of each response token."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask.long(), self.response_mask.long()], dim=1)

    def __len__(self) -> int:
        return self.query_ids.shape[0]


# -- several processes: where the kernels meet accelerate ---------------------------------------
# Data parallelism (DDP) and sharding (FSDP2) of the policy without putting either into the
# algorithm's lines.  A trainer keeps its policy (with PPO's value head) in one PolicyModule, the
# module that ``accelerator.prepare`` wraps together with the optimizer.  Everything that runs θ —
# sampling, log-probs with gradients, the adapter-disabled reference — runs as that module's
# forward (``policy(f, *args)`` is ``f(*args)``), so the wrapper sees every use: DDP all-reduces the
# gradients in buckets during ``accelerator.backward``, FSDP gathers each layer's shards when it
# runs and reduce-scatters its gradients.  GlobalBatch sums over the processes where the algorithm
# needs a statistic of the whole batch (PPO's whitening, its per-token normaliser, the KL that
# drives β), so that W processes with B sequences each take the step one process would take on
# the W·B sequences.  Without an accelerator — the pipeline's path — each helper is the plain torch
# call the kernels made before accelerate was added, in the same order (bit-identical, tested).

class PolicyModule(nn.Module):
    """π_θ (``model``) and, for PPO, its value head, as one module: what accelerate wraps.

    ``policy(f, *args, **kwargs)`` returns ``f(*args, **kwargs)``, run as this module's forward:
    the DDP / FSDP hooks around the forward fire for whatever ``f`` does with ``model`` (one
    generation, one log-prob pass).  ``_no_split_modules`` is the model's, so FSDP's default
    auto-wrap policy shards it by decoder layer."""

    def __init__(self, model, value_head=None):
        super().__init__()
        self.model = model
        self.value_head = value_head
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, f, *args, **kwargs):
        return f(*args, **kwargs)


def make_accelerator(cpu: bool = False, **kwargs):
    """``accelerate.Accelerator`` for the kernels: DDP with ``find_unused_parameters`` (a process whose
    batch leaves a trainable tensor without gradient must not stall the others' all-reduce) and
    without a per-forward broadcast of buffers (the policy's are constants, e.g. RoPE frequencies;
    the rollout's generation runs as one forward).  The launch config (``accelerate launch
    --config_file …``) picks DDP, FSDP or one process."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # broadcast_buffers (torch 2.13 warns it is deprecated for forward_sync_buffers, which accelerate
    # 1.16's DistributedDataParallelKwargs does not take yet); buffers are still synced at init
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    return Accelerator(cpu=cpu, kwargs_handlers=[ddp, *kwargs.pop("kwargs_handlers", [])], **kwargs)


def check_supported(accelerator) -> None:
    """One-line error for a distributed type the kernels are not built for (DeepSpeed: its engine
    owns the optimiser step and the gradient clipping; use FSDP to shard)."""
    if accelerator is None:
        return
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(f"distributed type {accelerator.distributed_type} is not supported by pluralign's PPO / "
                         "Nash-MD kernels: shard with FSDP (configs/accelerate/fsdp.yaml) instead")


def is_sharded(accelerator) -> bool:
    """Whether the policy's parameters are sharded across the processes (FSDP)."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def is_main_process(accelerator) -> bool:
    return accelerator is None or accelerator.is_main_process


def trainable(module) -> list:
    """The parameters that require a gradient, in module order."""
    return [p for p in module.parameters() if p.requires_grad]


def accelerate_prepare(accelerator, module, optimizer):
    """(module, optimizer) wrapped by ``accelerator.prepare`` (DDP, FSDP, device placement, mixed
    precision), or as they are without an accelerator."""
    check_supported(accelerator)
    if accelerator is None:
        return module, optimizer
    return accelerator.prepare(module, optimizer)


def prepare_frozen(accelerator, model):
    """A frozen model used beside the policy (a full copy as reference μ or EMA θ̄): sharded like the
    policy under FSDP; as it is otherwise (each DDP process holds the same frozen copy)."""
    if not is_sharded(accelerator):
        return model
    return accelerator.prepare(model)  # FSDP2: through prepare (accelerate's prepare_model refuses it)


def make_optimizer(params, learning_rate: float, optim: str = "adamw_torch"):
    """AdamW without weight decay (the HF / TRL default) over ``params``, named as transformers'
    ``TrainingArguments.optim``: "adamw_torch" is torch's default multi-tensor (foreach) kernel,
    "adamw_torch_fused" its fused kernel — TrainingArguments' default since torch 2.8, so what TRL's
    trainers run.  The fused kernel reads and writes each parameter, gradient and moment once per
    step, where the foreach one takes several passes and temporaries: at GPT-2 size on 2 CPU cores
    383 ms against 100 ms per step, beside ~0.9 s for a 2-sequence minibatch's forward and backward
    (benchmarks/profile_gpt2_update.py).  The two agree to
    float rounding, not bit for bit; "adamw_torch" stays the default so the recorded CPU runs keep
    their numbers."""
    if optim not in OPTIMIZERS:
        raise ValueError(f"optim must be one of {OPTIMIZERS}, got {optim!r}")
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0,
                             fused=True if optim == "adamw_torch_fused" else None)


def optimiser_step(accelerator, optimizer, params, loss, max_grad_norm: float) -> float:
    """One AdamW step on ``loss``: zero the gradients, backward (through accelerate: DDP's bucketed
    all-reduce, FSDP's reduce-scatter), clip their global norm, step.  Returns the norm before
    clipping."""
    optimizer.zero_grad(set_to_none=True)
    if accelerator is None:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(accelerator, module) -> dict | None:
    """The whole module's state dict on the main process (gathered from the shards under FSDP:
    every process must call this), None on the others; ``module.state_dict()`` without sharding."""
    if not is_sharded(accelerator):
        return module.state_dict() if is_main_process(accelerator) else None
    state = accelerator.get_state_dict(module)
    return state if accelerator.is_main_process else None


class GlobalBatch:
    """Sums and means over the batch of every process of a data-parallel run (one all-reduce
    each); on one process, the plain local computation.  ``world`` is the number of processes."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.world = 1 if accelerator is None else accelerator.num_processes

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the processes (x itself on one)."""
        if self.world == 1:
            return x
        return self.accelerator.reduce(x, "sum")

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of x's entries over every process's x (``x.mean()`` on one)."""
        if self.world == 1:
            return x.mean()
        return self.sum(x.sum()) / self.sum(torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device))

    def size(self, n: int) -> int:
        """The number of sequences of all processes when this one holds n (n on one process)."""
        if self.world == 1:
            return n
        return int(self.sum(torch.tensor(n, device=self.accelerator.device)))

    def per_process_count(self, mask: torch.Tensor) -> torch.Tensor:
        """The normaliser of a per-token mean over the global minibatch for a loss whose gradients
        DDP averages over the processes: (tokens on all processes) / W, at least 1/W.  On one
        process ``mask.sum().clamp_min(1)``, the denominator of :func:`pluralign.ppo.masked_mean`."""
        if self.world == 1:
            return mask.sum().clamp_min(1)
        return self.sum(mask.sum()).clamp_min(1) / self.world


class PPO:
    """PPO on a causal LM ``model`` (a transformers model or a peft ``PeftModel``).

    Reference policy: the adapter-disabled model for a PeftModel (ref_model must be None),
    else ``ref_model`` or a frozen deepcopy of the initial model.  A zero-initialised
    :class:`ValueHead` on the last hidden state; one AdamW (no weight decay) over the trainable
    parameters of the policy and the head, its learning rate driven by ``lr_scheduler`` (a LambdaLR
    stepped once per :meth:`step`).  ``kl_coef`` is the current β (the config's is only the
    initial one); ``n_updates`` counts the optimizer steps taken so far (ppo_epochs ×
    batch_size / mini_batch_size per :meth:`step`).  ``torch.manual_seed(config.seed)`` is called
    here (sampling uses the global generator); minibatch shuffles use a private generator seeded
    likewise.  Dropout is
    off throughout (the model is kept in eval mode, as TRL's PPO disables dropout), so old and new
    log-probs are one function: with dropout on, ρ = π_θ/π_old would differ from 1 even before
    the first update, by noise alone, and the clipping would act on that noise.  (For that reason
    the Tulu2 policy's LoRA has no dropout at all: :func:`pluralign.lora.lora_policy`.)

    ``accelerator``: an ``accelerate.Accelerator`` (:func:`make_accelerator`) when
    several processes train together; ``policy`` (model and value head, :class:`PolicyModule`)
    and ``optimizer`` are then what ``accelerator.prepare`` made of them, and under FSDP the full
    model's reference is sharded too.  None (the default): plain torch on one process.  ``model``
    and ``value_head`` stay the unwrapped modules."""

    def __init__(self, model, tokenizer, config: PPOConfig | None = None, ref_model=None, accelerator=None):
        self.config = cfg = config if config is not None else PPOConfig()
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer.pad_token_id is None; add a pad token distinct from eos, e.g. "
                             "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings "
                             "(pluralign.lm.load_tokenizer adds it): PPO itself copes with pad = eos, but the reward "
                             "and pairwise models pool at the last non-pad token and need pad ≠ eos")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer.eos_token_id is None; the tokenizer needs an eos_token")
        self.is_peft = _is_peft(model)
        if self.is_peft and ref_model is not None:
            raise ValueError("ref_model must be None for a PeftModel: the reference is the adapter-disabled model")
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.model, self.tokenizer = fused_gelu(model).eval(), tokenizer
        p = next(model.parameters())
        # rewards, values and advantages in the model's dtype, or fp32 for a half-precision model
        self.device, self.dtype = p.device, (torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype)
        self.ref_model = None
        if not self.is_peft:
            self.ref_model = fused_gelu(ref_model if ref_model is not None else copy.deepcopy(model)).eval()
            self.ref_model.requires_grad_(False)
        self.value_head = ValueHead(model.config.hidden_size).to(self.device, self.dtype)
        # π_θ and V as one module: the one that runs θ, and that accelerate wraps (section "several processes")
        self.policy = PolicyModule(self.model, self.value_head)
        self.optimizer = make_optimizer(trainable(self.policy), cfg.learning_rate, cfg.optim)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(lr_multiplier, cfg.lr_schedule, total_steps=cfg.total_steps))
        self.accelerator, self.batch = accelerator, GlobalBatch(accelerator)
        self.policy, self.optimizer = accelerate_prepare(accelerator, self.policy, self.optimizer)
        if self.ref_model is not None:
            self.ref_model = prepare_frozen(accelerator, self.ref_model)
        self.params = trainable(self.policy)  # after prepare: FSDP replaces them with their shards
        self.kl_coef = cfg.kl_coef  # β: fixed, or adapted after every step when cfg.kl_target is set
        self.n_updates = 0  # optimizer steps so far
        self.generation_kwargs = dict(
            do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=1.0,
            max_new_tokens=cfg.max_new_tokens, min_new_tokens=0, use_cache=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )

    # -- rollout ---------------------------------------------------------------------------
    def ref_logprobs(self, input_ids, attention_mask, n_query: int) -> torch.Tensor:
        """log π_ref of the response tokens (B, T), no grad."""
        with torch.no_grad():
            if self.is_peft:
                with self.model.disable_adapter():
                    lp, _, _ = self.policy(response_logprobs_and_values, self.model, None, input_ids, attention_mask,
                                           n_query, self.config.temperature, entropy=False)
            else:
                lp, _, _ = response_logprobs_and_values(self.ref_model, None, input_ids, attention_mask,
                                                        n_query, self.config.temperature, entropy=False)
        return lp

    @torch.no_grad()
    def rollout(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Rollout:
        """Sample one response per left-padded query (B, Q); score nothing yet.

        Sampling (:func:`sample_responses`) is softmax(logits / temperature), cut to the top_k tokens when top_k > 0 and then
        to the nucleus (the most probable tokens whose mass reaches top_p) when top_p < 1; the
        log-probs stay those of the uncut temperature softmax, as in TRL.  Other logit processors
        left in ``model.generation_config`` would make the samples off-policy: clear them."""
        query_ids, query_mask = query_ids.to(self.device), query_mask.to(self.device).long()
        if not bool(query_mask[:, -1].all()):
            raise ValueError("queries must be left-padded (tokenizer.padding_side = 'left')")
        self.model.eval()
        Q = query_ids.shape[1]
        response, mask = self.policy(sample_responses, self.model, query_ids, query_mask, self.generation_kwargs)
        ids = torch.cat([query_ids, response], dim=1)
        am = torch.cat([query_mask, mask.long()], dim=1)
        logprobs, values, _ = self.policy(response_logprobs_and_values, self.model, self.value_head, ids, am, Q,
                                          self.config.temperature, entropy=False)
        ref = self.ref_logprobs(ids, am, Q)
        return Rollout(query_ids, query_mask, response, mask, logprobs, ref, values)

    # -- update ----------------------------------------------------------------------------
    def step(self, rollout: Rollout, scores) -> dict:
        """One PPO iteration from a rollout and its sequence scores (B,).  Returns mean stats, among
        them learning_rate and kl_coef, the lr and β this iteration used.  Afterwards the lr
        schedule advances one iteration and, when kl_target is set, β adapts to the stat kl."""
        cfg = self.config
        lr, beta = self.optimizer.param_groups[0]["lr"], self.kl_coef
        B, Q = len(rollout), rollout.query_ids.shape[1]
        mask = rollout.response_mask.to(self.dtype)
        scores = torch.as_tensor(scores, dtype=self.dtype, device=self.device).reshape(-1)
        if scores.shape[0] != B:
            raise ValueError(f"scores must have one entry per sequence ({B}), got {scores.shape[0]}")
        raw_scores = scores
        has_eos = ((rollout.response_ids == self.tokenizer.eos_token_id) & rollout.response_mask).any(1)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~has_eos).to(self.dtype)

        rewards, kl = per_token_rewards(scores, rollout.logprobs, rollout.ref_logprobs, mask, beta)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, total=self.batch.sum)
        advantages, returns = gae(rewards, rollout.values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask, total=self.batch.sum)  # over every process's tokens

        ids, am = rollout.input_ids, rollout.attention_mask
        lengths = rollout.response_mask.sum(1)
        self.model.eval()
        sums, n = {}, 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.generator).to(self.device)
            for start in range(0, B, cfg.mini_batch_size):
                idx = perm[start:start + cfg.mini_batch_size]
                T = int(lengths[idx].max())  # drop columns that are padding for the whole minibatch
                lp, v, ent = self.policy(response_logprobs_and_values, self.model, self.value_head,
                                         ids[idx, :Q + T], am[idx, :Q + T], Q, cfg.temperature)
                m = mask[idx, :T]
                loss, st = ppo_loss(lp, rollout.logprobs[idx, :T], advantages[idx, :T], v, rollout.values[idx, :T],
                                    returns[idx, :T], m, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef,
                                    n_tokens=self.batch.per_process_count(m))
                st["grad_norm"] = optimiser_step(self.accelerator, self.optimizer, self.params, loss,
                                                 cfg.max_grad_norm)
                self.n_updates += 1
                st["entropy"] = float(masked_mean(ent, m))
                for k, x in st.items():
                    sums[k] = sums.get(k, 0.0) + x
                n += 1
        stats = {
            "score": float(raw_scores.mean()),
            "kl": float(self.batch.mean(kl.sum(1))),  # every process's sequences: one β for all
            "non_score_reward": float((-beta * kl).sum(1).mean()),
            "rlhf_reward": float(rewards.sum(1).mean()) if not cfg.whiten_rewards else float("nan"),
            "response_length": float(lengths.float().mean()),
            "eos_frac": float(has_eos.float().mean()),
            "learning_rate": float(lr),
            "kl_coef": float(beta),
        }
        stats.update({k: x / n for k, x in sums.items()})
        if cfg.kl_target is not None:  # Ziegler et al. 2019: proportional control of log β, n_steps = B
            e = min(max(stats["kl"] / cfg.kl_target - 1.0, -0.2), 0.2)
            self.kl_coef = beta * (1.0 + e * self.batch.size(B) / cfg.kl_horizon)  # the global batch's B
        self.lr_scheduler.step()
        return stats

    # -- helpers ---------------------------------------------------------------------------
    def decode(self, rollout: Rollout) -> list[str]:
        """The response texts (special tokens, including EOS and padding, skipped)."""
        return [self.tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
                for ids, m in zip(rollout.response_ids.cpu(), rollout.response_mask.cpu())]

    def save_pretrained(self, path) -> None:
        """TRL layout: the policy (adapter only for a PeftModel) and tokenizer via
        ``save_pretrained``, plus ``value_head.safetensors`` (the head's state dict; no pickle, like
        the rest).  :func:`load_value_head` reads it back.  With an accelerator call it on every
        process: the main one writes (under FSDP from the state gathered off the shards)."""
        from safetensors.torch import save_file

        path = Path(path)
        state = None
        if is_sharded(self.accelerator):
            state = full_state_dict(self.accelerator, self.policy)
        if not is_main_process(self.accelerator):
            return
        path.mkdir(parents=True, exist_ok=True)
        if state is None:
            self.model.save_pretrained(path)
            head = self.value_head.state_dict()
        else:
            self.model.save_pretrained(path, state_dict=_part(state, "model."))
            head = _part(state, "value_head.")
        self.tokenizer.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(path / VALUE_HEAD_FILE))

    # -- checkpoints (accelerate's save_state / load_state) -----------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs besides the model and optimizer (which ``accelerator.save_state``
        saves itself, with the global random states): β, the update count, the lr schedule and the
        minibatch shuffles' generator.  Register the trainer with ``accelerator.register_for_checkpointing``."""
        return {"kl_coef": self.kl_coef, "n_updates": self.n_updates, "lr_scheduler": self.lr_scheduler.state_dict(),
                "shuffle_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef, self.n_updates = state["kl_coef"], state["n_updates"]
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["shuffle_generator"])


def _part(state: dict, prefix: str) -> dict:
    """The entries of a state dict under ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


VALUE_HEAD_FILE = "value_head.safetensors"


def load_value_head(path, device=None) -> ValueHead:
    """The :class:`ValueHead` that :meth:`PPO.save_pretrained` wrote to ``path`` (its folder), in the
    saved dtype, on ``device`` (default CPU)."""
    from safetensors.torch import load_file

    file = Path(path) / VALUE_HEAD_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {VALUE_HEAD_FILE} in {path} (written by PPO.save_pretrained)")
    state = load_file(str(file), device=str(device) if device is not None else "cpu")
    head = ValueHead(state["summary.weight"].shape[1]).to(state["summary.weight"].dtype)
    head.load_state_dict(state)
    return head.to(device) if device is not None else head
