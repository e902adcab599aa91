#!/usr/bin/env python
"""MaxMin-PPO of a LoRA policy against K LoRA reward models: the Tulu2-7B stage's alignment run.

    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/tulu2_ppo.py \\
        --params params.yaml --base BASE --rewards RM0 [RM1 …] --prompts alpaca.json --out DIR
    python scripts/tulu2_ppo.py …            # the same on CPU (cpu profile, tiny stand-in)

Each step: every process samples its own batch of prompts (seed + rank), rolls out the policy
(:class:`pluralign.ppo.PPO`), scores the responses with every reward model (standardised on
base-policy samples), gathers the (K, B) scores of all processes so that the ``rule``
(:func:`pluralign.maxmin_ppo.combine`: single / argmin / sample_min / mean) sees the global batch,
and takes a PPO step on its own slice.

Accelerate's part: device placement (``accelerator.device``), mixed precision
(``accelerator.autocast()`` around rollout, scoring and update), ``gather`` of the scores, and
with several processes the gradient sync.  ``ppo.PPO`` owns its forward, backward and optimiser,
so the policy is not ``accelerator.prepare``d; instead each LoRA gradient is all-reduced
(averaged) by a hook as soon as it is accumulated — what DDP does, for the few trainable tensors.
FSDP / DeepSpeed need the forward itself to go through the wrapped model, so they are refused.

Models: :func:`pluralign.lora.ppo_models` (also what benchmarks/bench_tulu_7b.py measures): the
LoRA policy and the K reward adapters on one copy of the base in memory when the reward adapters
were trained on the policy's base (no ``--reward-base``) and the base is full precision; the
policy runs without dropout (PPO keeps it in eval mode; see :mod:`pluralign.lora`).

Prompts: the questions of ``--prompts`` in the Tulu template (``<|user|>`` …; paper and cpu
profiles) or in the base's own chat template (small profile: SmolLM2-135M-Instruct), as
:func:`pluralign.tulu_data.format_prompt` writes them — the same text the reward models read.

Reads the ``tulu2`` and ``tulu_align`` sections of the params file; writes ``DIR/policy``
(adapter, tokenizer, ``value_head.safetensors``), ``DIR/history.json`` (one row per step) and
``DIR/run.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from pluralign import lm, lora, soups, tulu_data  # noqa: E402
from pluralign.checks import ParamError, validate  # noqa: E402
from pluralign.maxmin_ppo import RULES, GroupRewards, combine  # noqa: E402
from pluralign.ppo import PPO, PPOConfig  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def read_params(path) -> dict:
    """The ``tulu2`` (shared) and ``tulu_align`` sections of the params file, each checked by
    :func:`pluralign.checks.validate` (one line naming ``section.key`` on the first problem),
    merged into one dict."""
    params = yaml.safe_load(Path(path).read_text()) or {}
    merged = {}
    for section in ("tulu2", "tulu_align"):
        if not isinstance(params.get(section), dict):
            raise ParamError(f"{path} has no mapping named {section!r}")
        merged.update(validate(section, params[section]))
    return merged


def sync_gradients(params, world: int) -> None:
    """Average each parameter's gradient over the processes right after backward accumulates it."""
    def hook(p):
        torch.distributed.all_reduce(p.grad)  # SUM: gloo (CPU) has no AVG
        p.grad.div_(world)

    for p in params:
        p.register_post_accumulate_grad_hook(hook)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", required=True, help="params file with the tulu2 and tulu_align sections")
    ap.add_argument("--rule", default="argmin", choices=RULES, help="how the K rewards become one (maxmin_ppo.combine)")
    ap.add_argument("--base", required=True, help="policy base: local path or hub id (also the reward base)")
    ap.add_argument("--reward-base", default=None, help="base of the reward adapters if not --base")
    ap.add_argument("--rewards", nargs="+", required=True, help="reward adapter folders, one per group")
    ap.add_argument("--prompts", required=True, help="alpaca-style prompts: path or http(s) URL")
    ap.add_argument("--cache-dir", default=None, help="where URLs are downloaded to")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=None, help="this run's seed (default: the first of tulu_align.seeds)")
    ap.add_argument("--cpu", action="store_true", help="force CPU even if a GPU is visible")
    args = ap.parse_args(argv)
    try:
        p = read_params(args.params)
    except ParamError as e:
        raise SystemExit(f"error: {e}") from None
    p["rule"] = args.rule
    p["seed"] = p["seeds"][0] if args.seed is None else args.seed
    if p["seed"] < 0:
        raise SystemExit(f"error: --seed must be >= 0, got {p['seed']}")
    if p["rule"] == "single" and len(args.rewards) != 1:
        raise SystemExit(f"error: rule 'single' takes one reward model, got {len(args.rewards)}")

    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise SystemExit(f"error: {accelerator.distributed_type} shards the model, so PPO's forward must run through "
                         "accelerator.prepare(model), which pluralign.ppo.PPO does not do; use "
                         "configs/accelerate/single_gpu.yaml or multi_gpu.yaml")
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, accelerator.num_processes)))

    tok = lm.load_tokenizer(args.base)
    dtype = DTYPES[p["dtype"]]
    # same seed on every process: identical LoRA initialisation everywhere; the models are placed on
    # `device` while they are built (a shared backbone must not be moved afterwards)
    policy, rms = lora.ppo_models(args.base, tok, args.rewards, r=p["lora_r"], alpha=p["lora_alpha"],
                                  gradient_checkpointing=p["gradient_checkpointing"], dtype=dtype,
                                  load_in_bits=p["load_in_bits"], seed=p["seed"], reward_base=args.reward_base,
                                  device=device)
    rewards = GroupRewards(rms, tok)
    cfg = PPOConfig(batch_size=p["batch_size"], mini_batch_size=p["mini_batch_size"], ppo_epochs=p["ppo_epochs"],
                    learning_rate=p["lr"], kl_coef=p["kl_coef"], kl_target=p["kl_target"], kl_horizon=p["kl_horizon"],
                    lr_schedule=p["lr_schedule"], total_steps=p["steps"] if p["lr_schedule"] != "constant" else None,
                    top_p=p["top_p"], max_new_tokens=p["max_new_tokens"],
                    temperature=p["temperature"], seed=p["seed"] + rank)  # own samples per process
    ppo = PPO(policy, tok, cfg)
    if world > 1:
        sync_gradients(ppo.params, world)

    # the Tulu template (paper, cpu stand-in) or the base's own chat template (small: SmolLM2-Instruct)
    questions = soups.load_questions(args.prompts, args.cache_dir, limit=p["n_prompts"] or None)
    prompts = tulu_data.format_prompts(questions, tulu_data.prompt_style(p["profile"]), tok)
    g = torch.Generator().manual_seed(p["seed"] * 1000 + rank)
    draw = lambda n: [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]  # noqa: E731

    def gathered(x: torch.Tensor) -> torch.Tensor:
        """(K, B) on this process → (K, B·world), process-major."""
        return accelerator.gather(x.T.contiguous().to(device)).T.cpu()

    def respond(batch):
        ids, mask = lm.encode_prompts(tok, batch)
        roll = ppo.rollout(ids, mask)
        return roll, [t.strip() for t in ppo.decode(roll)]

    t0 = time.perf_counter()
    with accelerator.autocast():  # the policy starts as the base (LoRA B = 0): these are base samples
        base_prompts, base_texts = [], []
        for i in range(0, p["n_standardise"], p["batch_size"]):
            batch = draw(min(p["batch_size"], p["n_standardise"] - i))
            base_prompts += batch
            base_texts += respond(batch)[1]
        raw = gathered(rewards.raw(base_prompts, base_texts))
    rewards.mean, rewards.std = raw.mean(1), raw.std(1).clamp_min(1e-6)

    history = []
    for step in range(1, p["steps"] + 1):
        batch = draw(p["batch_size"])
        with accelerator.autocast():
            roll, texts = respond(batch)
            scores = gathered(rewards(batch, texts))  # (K, B·world) z-scores
            reward, group = combine(scores, p["rule"])
            mine = reward[rank * len(batch):(rank + 1) * len(batch)]
            stats = ppo.step(roll, mine)
        if world > 1 and p["kl_target"] is not None:
            # one beta for every process: each adapted it from its own share's KL; their mean is the
            # controller applied to the mean KL (exactly, while no process's error is clipped)
            ppo.kl_coef = float(accelerator.reduce(torch.tensor(ppo.kl_coef, device=device), "mean"))
        row = {"step": step, "group": group, "seconds": time.perf_counter() - t0,
               **{f"reward_{k}": float(s.mean()) for k, s in enumerate(scores)}, **stats}
        history.append(row)
        if accelerator.is_main_process:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = Path(args.out)
        ppo.save_pretrained(out / "policy")
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        run = {"params": p, "rewards": args.rewards, "base": args.base, "processes": world, "device": str(device),
               "distributed_type": str(accelerator.distributed_type), "mixed_precision": accelerator.mixed_precision,
               "reward_mean": rewards.mean.tolist(), "reward_std": rewards.std.tolist(),
               "reward_backbone_shares_policy_weights": lora.backbone_shared(policy, rms)}
        (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    accelerator.end_training()


if __name__ == "__main__":
    main()
