"""LoRA models for the Tulu2-7B stage (peft): reward models, their EM mixture, and the policy.

Settings from the authors' code (shared/PAPERS.md): reward models are one-output sequence
classifiers with LoRA r=8, α=32, dropout 0.1 (peft's default targets for Llama: q_proj, v_proj)
and a fully trained ``score`` head; the policy is a causal LM with LoRA r=16, α=32 (the authors'
dropout 0.05 is dropped: see below).  The `cpu` profile runs everything on :func:`tiny_llama`, a
Llama-architecture stand-in.

K reward models share ONE base in memory: a peft model with K named adapters (``rm0`` …), each
with its own LoRA weights and its own copy of the score head; ``set_adapter`` picks the model.
:class:`AdapterView` makes one adapter look like a model, so :func:`pluralign.reward_models.score`
and :class:`pluralign.maxmin_ppo.GroupRewards` take them unchanged.

TRL's RewardTrainer trains a ``PeftModel`` as given (only the active adapter's parameters
require grad, so only they move; no ``peft_config`` needed).  Two of its defaults matter here:
``RewardConfig.disable_dropout=True`` sets every ``nn.Dropout`` to p=0, LoRA dropout included
(:func:`pluralign.reward_models.train_reward_model` gives the LoRA dropouts their p back, so
tulu_reward.lora_dropout acts on the adapter input while the backbone's dropout stays off), and
``bf16=True`` (off there, which also removes the autocast wrapper the Trainer leaves on
``model.forward``).

Dropout, per stage.  Reward training: LoRA dropout on (p = tulu_reward.lora_dropout, the authors'
0.1), backbone dropout off (TRL's disable_dropout; Llama has none anyway).  PPO: none.  Our PPO,
like TRL's, keeps the policy in eval mode, because the ratio π_θ/π_old must compare one function
at two parameter values: dropout in the update (and not in the rollout, or drawn afresh) would
make ρ ≠ 1 before any step, by noise alone.  A policy LoRA dropout could therefore never act, so
the policy has none (``lora_dropout=0``) and tulu_align has no lora_dropout parameter.

One MaxMin-PPO run (scripts/tulu2_ppo.py, and benchmarks/bench_tulu_7b.py at 7B) builds its
models with :func:`ppo_models`: the LoRA policy and the K reward adapters on ONE copy of the base
in memory (:func:`share_backbone`) whenever both use the same full-precision base.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .preferences import PreferencePairs
from .reward_models import pair_margins, train_reward_model

__all__ = ["tiny_llama", "reward_lora_config", "policy_lora_config", "lora_reward_model", "lora_policy",
           "checkpoint_layers", "share_backbone", "shared_classifier", "ppo_models", "backbone_shared", "AdapterView",
           "LoraRewardMixture", "save_reward_adapters", "load_reward_adapters", "refuse_too_long", "pooled_features"]


def tiny_llama(tokenizer, hidden_size: int = 64, n_layer: int = 2, n_head: int = 4, n_kv_head: int = 2,
               intermediate_size: int = 128, max_position_embeddings: int = 512, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` (grouped-query attention, RoPE, SwiGLU, RMSNorm:
    Tulu2's architecture) sized for 2 CPU cores; ``save_pretrained`` it to get a base path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv_head,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).float()


def reward_lora_config(r: int = 8, alpha: int = 32, dropout: float = 0.1, target_modules=None):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules, modules_to_save=["score"])


def policy_lora_config(r: int = 16, alpha: int = 32, target_modules=None):
    """The policy's LoRA: no dropout (PPO runs the policy in eval mode; see the module docstring)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=target_modules, bias="none")


def _quantization(load_in_bits, dtype):
    """bitsandbytes config for 8/4-bit base weights (None: full precision)."""
    if load_in_bits is None:
        return None
    if load_in_bits not in (4, 8):
        raise ValueError(f"load_in_bits must be None, 4 or 8, got {load_in_bits!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(f"load_in_bits={load_in_bits} needs the bitsandbytes package (pip install bitsandbytes) "
                          "and a CUDA GPU; use load_in_bits=None for full-precision weights") from None
    if not torch.cuda.is_available():
        raise RuntimeError(f"load_in_bits={load_in_bits} needs a CUDA GPU (bitsandbytes); none is visible")
    from transformers import BitsAndBytesConfig

    if load_in_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _load_base(auto_cls, base_path: str, tokenizer, dtype, load_in_bits, **kwargs):
    from transformers.utils import logging as hf_logging

    from .lm import check_source

    check_source(base_path, "base model")
    quant = _quantization(load_in_bits, dtype)
    extra = {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}} if quant else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists lm_head/score as unexpected/missing: by design
    try:
        model = auto_cls.from_pretrained(base_path, dtype=dtype, **extra, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a pad token added to a Llama tokenizer
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_reward_model(base_path: str, tokenizer, r: int = 8, alpha: int = 32, dropout: float = 0.1,
                      dtype=torch.float32, load_in_bits: int | None = None, target_modules=None,
                      adapter_name: str = "default", seed: int = 0):
    """A LoRA reward model: ``AutoModelForSequenceClassification`` (num_labels=1) on the base at
    ``base_path``, wrapped by peft with the head in modules_to_save.  The head is new, drawn under
    ``seed``, when ``base_path`` is a base LM (it has none); a saved classifier's own head is loaded
    and ``seed`` then only seeds the LoRA initialisation.  ``load_in_bits`` 8 or 4 loads the base
    through bitsandbytes (GPU only)."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base = _load_base(AutoModelForSequenceClassification, base_path, tokenizer, dtype, load_in_bits, num_labels=1)
    return get_peft_model(base, reward_lora_config(r, alpha, dropout, target_modules), adapter_name=adapter_name)


def _wrap_policy(base, r: int, alpha: int, gradient_checkpointing: bool, target_modules, seed: int):
    """peft-wrap a loaded causal LM as the policy; the LoRA initialisation is drawn under ``seed``."""
    from peft import get_peft_model

    torch.manual_seed(seed)  # the same LoRA A whatever loading the base drew from the generator
    model = get_peft_model(base, policy_lora_config(r, alpha, target_modules))
    if gradient_checkpointing:
        checkpoint_layers(model)
    return model.eval()


def lora_policy(base_path: str, tokenizer, r: int = 16, alpha: int = 32, gradient_checkpointing: bool = False,
                dtype=torch.float32, load_in_bits: int | None = None, target_modules=None, seed: int = 0):
    """A LoRA causal-LM policy for :class:`pluralign.ppo.PPO` (reference = adapters disabled).
    The LoRA B matrices start at zero, so the policy starts as the base.  No LoRA dropout: PPO runs
    the policy in eval mode, where it could not act (module docstring)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = _load_base(AutoModelForCausalLM, base_path, tokenizer, dtype, load_in_bits)
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    return _wrap_policy(base, r, alpha, gradient_checkpointing, target_modules, seed)


def checkpoint_layers(model) -> int:
    """Activation checkpointing of every decoder layer whenever gradients are on; returns how many.

    We bypass ``model.gradient_checkpointing_enable()``: transformers checkpoints only modules in
    training mode, and PPO keeps the policy in eval mode (dropout off, so old and new log-probs are
    one function).  Each layer's forward is wrapped in non-reentrant ``torch.utils.checkpoint``;
    generation (no grad, KV cache) runs the layers as they are.  (A deep copy of a wrapped model
    would still call the original's layers: wrap copies separately.)"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer) and "forward" not in vars(layer):
            inner = layer.forward

            def forward(*args, _inner=inner, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
                return _inner(*args, **kwargs)

            layer.forward = forward
            n += 1
    return n


def share_backbone(reward_model, policy_base) -> None:
    """Point a reward model's backbone at the policy base's weight tensors (same architecture and
    config): one copy of the frozen base in memory for both.  Build the reward model on the meta
    device (no memory), call this before wrapping either model in peft, then initialise its head.
    Modules stay separate, so each peft wrapper adds its own adapters; only tensors are shared."""
    dst = getattr(reward_model, reward_model.base_model_prefix)
    src = getattr(policy_base, policy_base.base_model_prefix)
    dst.load_state_dict(src.state_dict(), strict=True, assign=True)
    for name, buf in src.named_buffers():  # non-persistent buffers (RoPE inv_freq) are not in state_dict
        path, _, attr = name.rpartition(".")
        dst.get_submodule(path)._buffers[attr] = buf
    dst.requires_grad_(False)


class AdapterView:
    """One named adapter of a multi-adapter reward model, callable like a model: activates the
    adapter (frozen), moves the inputs to the model's device and runs the model."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, **inputs):
        self.model.set_adapter(self.name, inference_mode=True)
        device = self.device
        return self.model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})

    def eval(self):
        self.model.eval()
        return self


def _score_head(model, name: str):
    return model.base_model.model.score.modules_to_save[name]


def _seed_heads(model, names, seed: int) -> None:
    """Distinct seeded score heads (private generators), as NeuralRewardMixture seeds seed·100 + k."""
    std = model.config.initializer_range
    with torch.no_grad():
        for k, name in enumerate(names):
            head = _score_head(model, name).weight
            head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(seed * 100 + k)) * std)


class LoraRewardMixture:
    """K LoRA reward models on one shared base (adapters ``rm0`` … ``rm{K-1}``) behind the EM
    interface of :class:`pluralign.reward_models.NeuralRewardMixture`: ``K``,
    ``pair_log_likelihood``, ``fit`` (hard M-step: adapter k continues training on the pairs of
    its users with TRL's RewardTrainer), ``state``/``load_state``.  ``models`` are
    :class:`AdapterView`s, for ``GroupRewards`` and ``reward_models.score``.  Oracle reward
    models are the same object fitted once on the true groups: ``fit(data, one_hot(group))``.
    ``min_steps``: each adapter's M-step takes at least this many optimiser steps (0: just ``epochs``)."""

    def __init__(self, base_path: str, tokenizer, K: int, r: int = 8, alpha: int = 32, dropout: float = 0.1,
                 epochs: float = 1.0, lr: float = 2e-5, batch_size: int = 8, max_length: int = 512,
                 dtype=torch.float32, load_in_bits: int | None = None, seed: int = 0, min_steps: int = 0):
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        self.K, self.tokenizer, self.min_steps = K, tokenizer, min_steps
        self.names = [f"rm{k}" for k in range(K)]
        self.model = lora_reward_model(base_path, tokenizer, r, alpha, dropout, dtype, load_in_bits,
                                       adapter_name=self.names[0], seed=seed)
        for name in self.names[1:]:
            self.model.add_adapter(name, reward_lora_config(r, alpha, dropout))
        _seed_heads(self.model, self.names, seed)
        self.models = [AdapterView(self.model, n) for n in self.names]
        self.train_kw = dict(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length)
        self.seed, self.n_fits = seed, 0
        self.trained_pairs: list[dict[str, int]] = []  # per fit: {adapter: pairs RewardTrainer trained it on}
        self.model.eval()

    def pair_log_likelihood(self, data: PreferencePairs) -> torch.Tensor:
        """(K, N) log σ(r_k(chosen) − r_k(rejected))."""
        return torch.stack([F.logsigmoid(pair_margins(m, self.tokenizer, data)).cpu() for m in self.models]).double()

    def fit(self, data: PreferencePairs, resp: torch.Tensor) -> None:
        if not bool(((resp == 0) | (resp == 1)).all()):
            raise ValueError("LoraRewardMixture takes hard assignments only (run mixture_em with soft=False)")
        owner = resp.argmax(1)[data.user]
        refuse_too_long(self.tokenizer, data, self.train_kw["max_length"])
        counts = {}
        for k, name in enumerate(self.names):
            rows = (owner == k).nonzero().flatten()
            counts[name] = int(rows.numel())  # every one fits max_length, so RewardTrainer drops none
            self.model.set_adapter(name)  # only this adapter requires grad: RewardTrainer moves only it
            # a small cluster (the minority) still gets min_steps updates: `epochs` passes over a few
            # dozen pairs cannot move a warm-started adapter away from the majority it began with
            kw = dict(self.train_kw)
            if not len(rows):  # an empty cluster keeps its adapter (EM's split start fits cluster 0 alone)
                continue
            kw["epochs"] = max(kw["epochs"], self.min_steps * kw["batch_size"] / len(rows))
            train_reward_model(self.model, self.tokenizer, data.subset(rows), seed=self.seed + self.n_fits, **kw)
        self.model.set_adapter(self.names[0], inference_mode=True)
        self.trained_pairs.append(counts)
        self.n_fits += 1

    @torch.no_grad()
    def features(self, prompts: list[str], responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """(N, hidden) what the score head of every adapter reads for each (prompt, response): the
        backbone's last hidden state at the last non-pad token of the reward text, tokenised as
        for training and scoring (:func:`pluralign.reward_models.score`).  Taken from the first
        adapter's forward; for adapters whose LoRA B is still zero (``fit_heads``) it is the
        same for every adapter and the base's.  Texts are batched by length (less padding)."""
        return pooled_features(self.models[0], self.tokenizer, prompts, responses, batch_size)

    def set_heads(self, weights: torch.Tensor) -> None:
        """Write (K, hidden) ``weights`` into the K adapters' score heads (no bias: Llama's has none)."""
        if tuple(weights.shape) != (self.K, _score_head(self.model, self.names[0]).weight.shape[1]):
            raise ValueError(f"expected ({self.K}, hidden) head weights, got {tuple(weights.shape)}")
        with torch.no_grad():
            for k, name in enumerate(self.names):
                head = _score_head(self.model, name).weight
                head.copy_(weights[k : k + 1].to(head.dtype))

    def state(self):
        """{adapter: {parameter name: tensor copy}} of the LoRA weights and heads."""
        return {n: {p: t.detach().clone() for p, t in self.model.named_parameters() if f".{n}." in p}
                for n in self.names}

    def load_state(self, state) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for tensors in state.values():
                for p, t in tensors.items():
                    params[p].copy_(t)

    def save(self, out_dir, base_name=None) -> list[str]:
        """Write each adapter (``save_pretrained``, with its head) to ``out_dir/rm{k}``, naming
        ``base_name`` as its base when given (:func:`recorded_base`)."""
        return save_reward_adapters(self.model, out_dir, self.names, base_name=base_name)


def refuse_too_long(tokenizer, data: PreferencePairs, max_length: int) -> None:
    """TRL's RewardTrainer silently drops every pair whose chosen or rejected text is longer than
    ``max_length`` tokens.  Refuse such pairs instead (one line, with the count and the cure)."""
    from .tulu_data import too_long

    n = too_long(tokenizer, data, max_length)
    if n:
        raise ValueError(f"{n} of {data.n_pairs} pairs have a reward text longer than max_length={max_length} "
                         "tokens, which TRL's RewardTrainer would drop without a word: cut them first "
                         "(pluralign.tulu_data.truncate_pairs) or raise max_length")


@torch.no_grad()
def pooled_features(view, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16) -> torch.Tensor:
    """(N, hidden) float32: the input of ``view``'s score head at the token it pools (the last
    non-pad token, as transformers' sequence classifiers pick it), for each reward text
    (:func:`pluralign.reward_models.reward_text`, right-padded as :func:`pluralign.reward_models.score`
    pads).  ``view``: an :class:`AdapterView`."""
    from .reward_models import check_pad, encode, reward_text

    check_pad(tokenizer)
    texts = [reward_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    ids = encode(tokenizer, texts)["input_ids"] if texts else []
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    head = view.model.base_model.model.score
    grabbed = []
    hook = head.register_forward_hook(lambda mod, args, out: grabbed.append(args[0].detach()))
    out = torch.zeros(len(ids), view.model.config.hidden_size, dtype=torch.float32)
    try:
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            L = max(len(ids[j]) for j in rows)
            x = torch.full((len(rows), L), tokenizer.pad_token_id)
            mask = torch.zeros(len(rows), L, dtype=torch.long)
            for r, j in enumerate(rows):
                x[r, : len(ids[j])] = torch.tensor(ids[j])
                mask[r, : len(ids[j])] = 1
            grabbed.clear()
            view(input_ids=x, attention_mask=mask)
            hidden = grabbed[-1].float().cpu()  # (B, L, hidden)
            non_pad = (x != tokenizer.pad_token_id).int()
            last = (torch.arange(L) * non_pad).argmax(-1)  # transformers' rule for the pooled token
            out[rows] = hidden[torch.arange(len(rows)), last]
    finally:
        hook.remove()
    return out


@contextmanager
def recorded_base(model, base_name=None):
    """While a peft ``model`` is saved, its adapter files are the same bytes on every run and clone:
    (1) with ``base_name``, every adapter_config.json and peft's model card name it as the base
    (``base_model_name_or_path``) instead of the path the base was loaded from — a stage's staging
    folder, which is gone once the stage publishes, or this checkout's absolute path; (2) set-valued
    fields (LoRA's ``target_modules``) are written sorted — peft writes a set in its iteration
    order, which for strings changes with every process's hash seed."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        yield model
        return
    before = {name: dict(vars(config)) for name, config in configs.items()}
    inner = model.get_base_model()  # peft's model card reads the base model's own name
    card = (inner.config._name_or_path, inner.__dict__.get("name_or_path"))
    try:
        for config in configs.values():
            for key, value in vars(config).items():
                if isinstance(value, set):
                    setattr(config, key, sorted(value))
            if base_name is not None:
                config.base_model_name_or_path = str(base_name)
        if base_name is not None:
            inner.config._name_or_path = inner.name_or_path = str(base_name)
        yield model
    finally:
        for name, fields in before.items():
            for key, value in fields.items():
                setattr(configs[name], key, value)
        inner.config._name_or_path = card[0]
        if card[1] is None:
            inner.__dict__.pop("name_or_path", None)
        else:
            inner.name_or_path = card[1]


def save_reward_adapters(model, out_dir, names=None, base_name=None) -> list[str]:
    """Save the named adapters of a peft reward model to ``out_dir/<name>``; returns the folders.
    ``base_name``: the base recorded in each adapter's config (:func:`recorded_base`)."""
    from pathlib import Path

    out = Path(out_dir)
    names = list(model.peft_config) if names is None else names
    folders = []
    with recorded_base(model, base_name):
        for name in names:
            model.save_pretrained(out, selected_adapters=[name])  # peft writes non-default adapters to out/name
            folders.append(str(out / name) if name != "default" else str(out))
    return folders


def load_reward_adapters(base_path: str, tokenizer, adapter_dirs, dtype=torch.float32,
                         load_in_bits: int | None = None) -> list[AdapterView]:
    """K saved reward adapters on one freshly loaded base, frozen: [AdapterView] in the given order."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    if not adapter_dirs:
        raise ValueError("need at least one reward adapter folder")
    base = _load_base(AutoModelForSequenceClassification, base_path, tokenizer, dtype, load_in_bits, num_labels=1)
    return _reward_adapters(base, list(adapter_dirs))


def _reward_adapters(classifier, rewards, r: int = 8, alpha: int = 32, dropout: float = 0.1,
                     seed: int = 0) -> list[AdapterView]:
    """Reward adapters ``rm0`` … on one sequence classifier, frozen and in eval mode: loaded from
    the folders ``rewards``, or ``rewards`` = K fresh ones (LoRA r, α, dropout; seeded heads)."""
    from peft import PeftModel, get_peft_model

    if isinstance(rewards, int):
        if rewards < 1:
            raise ValueError(f"need at least one reward adapter, got K={rewards}")
        names = [f"rm{k}" for k in range(rewards)]
        model = get_peft_model(classifier, reward_lora_config(r, alpha, dropout), adapter_name=names[0])
        for name in names[1:]:
            model.add_adapter(name, reward_lora_config(r, alpha, dropout))
        _seed_heads(model, names, seed)
    else:
        if not rewards:
            raise ValueError("need at least one reward adapter folder")
        names = [f"rm{k}" for k in range(len(rewards))]
        model = PeftModel.from_pretrained(classifier, str(rewards[0]), adapter_name=names[0], is_trainable=False)
        for name, d in zip(names[1:], rewards[1:]):
            model.load_adapter(str(d), adapter_name=name, is_trainable=False)
    model.requires_grad_(False)
    model.eval()
    return [AdapterView(model, name) for name in names]


def shared_classifier(policy_base, tokenizer=None, seed: int = 0):
    """A one-output ``AutoModelForSequenceClassification`` of ``policy_base``'s architecture whose
    backbone IS ``policy_base``'s (:func:`share_backbone`; built on the meta device, so no second
    copy is ever allocated), with a new ``score`` head (drawn from a private generator under
    ``seed``) on the base's device and dtype.  Call before peft-wrapping ``policy_base``; once it
    is shared, do not ``.to()`` either model to another device (that would copy the tensors)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    p = next(policy_base.parameters())
    config = copy.deepcopy(policy_base.config)
    config.num_labels = 1
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        rm = AutoModelForSequenceClassification.from_config(config, dtype=p.dtype)
    share_backbone(rm, policy_base)
    old = rm.score
    rm.score = torch.nn.Linear(old.in_features, old.out_features, bias=old.bias is not None, device=p.device,
                               dtype=p.dtype)
    with torch.no_grad():
        w = torch.randn(rm.score.weight.shape, generator=torch.Generator().manual_seed(seed))
        rm.score.weight.copy_(w * config.initializer_range)
        if rm.score.bias is not None:
            rm.score.bias.zero_()
    left = [n for n, t in [*rm.named_parameters(), *rm.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"shared_classifier: {left[:3]} … are still on the meta device")
    return rm


def ppo_models(base, tokenizer, rewards, r: int = 16, alpha: int = 32, gradient_checkpointing: bool = False,
               dtype=torch.float32, load_in_bits: int | None = None, target_modules=None, seed: int = 0,
               reward_base: str | None = None, device=None, reward_r: int = 8, reward_alpha: int = 32,
               reward_dropout: float = 0.1, share_backbone: bool = True):
    """The models of one MaxMin-PPO run: (LoRA policy, [AdapterView] reward models).

    The one builder of scripts/tulu2_ppo.py and benchmarks/bench_tulu_7b.py, so that the benchmark
    measures what the script runs.  ``base``: the policy base, a path / hub id (loaded with
    ``dtype`` / ``load_in_bits``) or an already built causal LM (the benchmark's random 7B).
    ``rewards``: saved reward adapter folders (the script) or an int K, K fresh adapters (LoRA
    ``reward_r`` / ``reward_alpha`` / ``reward_dropout``, seeded heads: the benchmark).

    The reward adapters sit on a sequence classifier whose backbone is the policy base's own tensors
    (:func:`shared_classifier`) — one copy of the frozen base serves the policy, the reference
    (adapters disabled) and the K reward models — when ``reward_base`` is None or ``base`` and the
    base is full precision.  A different ``reward_base``, or a bitsandbytes base (quantised tensors
    carry extra state the meta model lacks), loads the reward base separately
    (:func:`load_reward_adapters`' path).  Either way the reward models give the same scores.
    ``device``: where a full-precision base goes, before any sharing (bitsandbytes places it itself).
    ``share_backbone=False`` loads the reward base separately in any case: for a policy that FSDP
    will shard (its tensors become shards; the reward models need whole ones).
    The policy equals :func:`lora_policy`'s for the same arguments."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if isinstance(rewards, bool) or not isinstance(rewards, (int, list, tuple)):
        raise TypeError(f"rewards must be adapter folders or a number of fresh adapters, got {rewards!r}")
    torch.manual_seed(seed)
    if isinstance(base, str):
        policy_base = _load_base(AutoModelForCausalLM, base, tokenizer, dtype, load_in_bits)
    else:
        policy_base = base
    policy_base.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None and load_in_bits is None:
        policy_base.to(device)  # before sharing: moving a shared model later would copy its tensors
    share = share_backbone and load_in_bits is None and (reward_base is None or reward_base == base)
    if share:
        classifier = shared_classifier(policy_base, tokenizer, seed=seed)
    else:
        if reward_base is None and not isinstance(base, str):
            raise ValueError("a reward base that cannot share the policy's tensors needs a path: pass reward_base")
        classifier = _load_base(AutoModelForSequenceClassification, reward_base or base, tokenizer, dtype,
                                load_in_bits, num_labels=1)
        if device is not None and load_in_bits is None:
            classifier.to(device)
    views = _reward_adapters(classifier, rewards if isinstance(rewards, int) else list(rewards),
                             reward_r, reward_alpha, reward_dropout, seed)
    policy = _wrap_policy(policy_base, r, alpha, gradient_checkpointing, target_modules, seed)
    return policy, views


def backbone_shared(policy, reward_models) -> bool:
    """Whether every backbone tensor of the reward models' classifier is one of the policy base's
    (same storage): one copy of the base in memory."""
    ptrs = {p.data_ptr() for n, p in policy.get_base_model().named_parameters() if "lora_" not in n}
    rm = reward_models[0].model.get_base_model()
    backbone = [p for n, p in getattr(rm, rm.base_model_prefix).named_parameters() if "lora_" not in n]
    return bool(backbone) and all(p.data_ptr() in ptrs for p in backbone)
