#!/usr/bin/env python
"""MaxMin-PPO of a LoRA policy against K LoRA reward models: the Tulu2-7B stage's alignment run.

    accelerate launch --config_file configs/accelerate/single_gpu.yaml scripts/tulu2_ppo.py \\
        --params params.yaml --base BASE --rewards RM0 [RM1 …] --prompts alpaca.json --out DIR
    python scripts/tulu2_ppo.py …            # the same on CPU (cpu profile, tiny stand-in)

Each step: every process samples its own batch of prompts (seed + rank), rolls out the policy
(:class:`pluralign.ppo.PPO`), scores the responses with every reward model (standardised on
base-policy samples), gathers the (K, B) scores of all processes so that the ``rule``
(:func:`pluralign.maxmin_ppo.combine`: single / argmin / sample_min / mean) sees the global batch,
and takes a PPO step on its own slice — with the whitening, per-token means and KL of the global
batch, so W processes take the step one process would take on all W·B sequences.

Accelerate's part: the policy with its value head and the optimizer go through
``accelerator.prepare`` inside ``PPO`` (DDP: bucketed gradient all-reduce during
``accelerator.backward``; FSDP2: the policy sharded by decoder layer, its shards gathered for each
forward and the state gathered for saving), device placement, mixed precision
(``accelerator.autocast()`` around rollout, scoring and update), ``gather`` of the scores,
checkpoints (``--checkpoint-every`` / ``--resume``: ``accelerator.save_state`` / ``load_state``).
DeepSpeed is refused (its engine owns the optimiser step; shard with FSDP).

Models: :func:`pluralign.lora.ppo_models` (also what benchmarks/bench_tulu_7b.py measures): the
LoRA policy and the K reward adapters on one copy of the base in memory when the reward adapters
were trained on the policy's base (no ``--reward-base``) and the base is full precision — except
under FSDP, which shards the policy's tensors: there the reward models load their own (whole,
frozen) base on every process.  The policy runs without dropout (PPO keeps it in eval mode; see
:mod:`pluralign.lora`).

Prompts: the questions of ``--prompts`` in the Tulu template (``<|user|>`` …; paper and cpu
profiles) or in the base's own chat template (small profile: SmolLM2-135M-Instruct), as
:func:`pluralign.tulu_data.format_prompt` writes them — the same text the reward models read.

Reads the ``tulu2`` and ``tulu_align`` sections of the params file; writes ``DIR/policy``
(adapter, tokenizer, ``value_head.safetensors``), ``DIR/history.json`` (one row per step) and
``DIR/run.json``; with ``--checkpoint-every N``, ``DIR/checkpoint`` (accelerate's format: the
trainable weights — all of a sharded model's shards under FSDP —, optimizer, random states, the
trainer's and the run's counters) every N steps, which ``--resume`` continues from.
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
from pluralign.ppo import PPO, PPOConfig, check_supported, is_sharded, make_accelerator  # noqa: E402

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


def setup_accelerator(cpu: bool):
    """The run's Accelerator (:func:`pluralign.ppo.make_accelerator`; the launch config picks one
    process, DDP or FSDP), refused with one line for DeepSpeed; this process's share of the CPU threads."""
    accelerator = make_accelerator(cpu=cpu or not torch.cuda.is_available())
    try:
        check_supported(accelerator)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, accelerator.num_processes)))
    return accelerator


def build_models(args, p, tok, accelerator):
    """(LoRA policy, reward views): :func:`pluralign.lora.ppo_models` on ``accelerator.device``, the
    reward backbone shared with the policy's unless FSDP will shard the policy."""
    # same seed on every process: identical LoRA initialisation everywhere; the models are placed on
    # `device` while they are built (a shared backbone must not be moved afterwards)
    return lora.ppo_models(args.base, tok, args.rewards, r=p["lora_r"], alpha=p["lora_alpha"],
                           gradient_checkpointing=p["gradient_checkpointing"], dtype=DTYPES[p["dtype"]],
                           load_in_bits=p["load_in_bits"], seed=p["seed"], reward_base=args.reward_base,
                           device=accelerator.device, share_backbone=not is_sharded(accelerator))


def load_prompts(args, p, tok):
    # the Tulu template (paper, cpu stand-in) or the base's own chat template (small: SmolLM2-Instruct)
    questions = soups.load_questions(args.prompts, args.cache_dir, limit=p["n_prompts"] or None)
    return tulu_data.format_prompts(questions, tulu_data.prompt_style(p["profile"]), tok)


class RunState:
    """The script's own part of a checkpoint: steps done, history, the reward standardisation and
    the prompt sampler's generator (``accelerator.register_for_checkpointing``)."""

    def __init__(self, generator, rewards):
        self.step, self.history, self.generator, self.rewards = 0, [], generator, rewards

    def state_dict(self) -> dict:
        return {"step": self.step, "history": json.dumps(self.history), "generator": self.generator.get_state(),
                "reward_mean": self.rewards.mean, "reward_std": self.rewards.std}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.history = state["step"], json.loads(state["history"])
        self.generator.set_state(state["generator"])
        self.rewards.mean, self.rewards.std = state["reward_mean"], state["reward_std"]


def checkpointing(accelerator, trainer, run, folder: Path):
    """Register the trainer and the run for ``accelerator.save_state``; without sharding keep only
    the trainable tensors of the prepared models (LoRA and value head, not a copy of the frozen
    base).  Returns ``load(folder)``, which restores all of it."""
    accelerator.register_for_checkpointing(trainer, run)
    sharded = is_sharded(accelerator)
    if not sharded:
        def trainable_only(models, weights, output_dir):
            for i, model in enumerate(models):
                keep = {n for n, q in model.named_parameters() if q.requires_grad}
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

        accelerator.register_save_state_pre_hook(trainable_only)
    return lambda: accelerator.load_state(str(folder), **({} if sharded else {"strict": False}))


def add_run_args(ap) -> None:
    """The arguments both Tulu2 scripts take."""
    ap.add_argument("--params", required=True, help="params file with the tulu2 and tulu_align sections")
    ap.add_argument("--base", required=True, help="policy base: local path or hub id (also the reward base)")
    ap.add_argument("--reward-base", default=None, help="base of the reward adapters if not --base")
    ap.add_argument("--rewards", nargs="+", required=True, help="reward adapter folders, one per group")
    ap.add_argument("--prompts", required=True, help="alpaca-style prompts: path or http(s) URL")
    ap.add_argument("--cache-dir", default=None, help="where URLs are downloaded to")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=None, help="this run's seed (default: the first of tulu_align.seeds)")
    ap.add_argument("--cpu", action="store_true", help="force CPU even if a GPU is visible")
    ap.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                    help="write DIR/checkpoint (accelerator.save_state) every N steps; 0: never")
    ap.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint if it exists")


def run_params(args) -> dict:
    """The params file's two sections, with --rule (where given) and the seed; one-line errors."""
    try:
        p = read_params(args.params)
    except ParamError as e:
        raise SystemExit(f"error: {e}") from None
    p["rule"] = args.rule
    p["seed"] = p["seeds"][0] if args.seed is None else args.seed
    if p["seed"] < 0:
        raise SystemExit(f"error: --seed must be >= 0, got {p['seed']}")
    if args.checkpoint_every < 0:
        raise SystemExit(f"error: --checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if p["rule"] == "single" and len(args.rewards) != 1:
        raise SystemExit(f"error: rule 'single' takes one reward model, got {len(args.rewards)}")
    return p


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap)
    ap.add_argument("--rule", default="argmin", choices=RULES, help="how the K rewards become one (maxmin_ppo.combine)")
    args = ap.parse_args(argv)
    p = run_params(args)

    accelerator = setup_accelerator(args.cpu)
    rank, device = accelerator.process_index, accelerator.device

    tok = lm.load_tokenizer(args.base)
    policy, rms = build_models(args, p, tok, accelerator)
    rewards = GroupRewards(rms, tok)
    cfg = PPOConfig(batch_size=p["batch_size"], mini_batch_size=p["mini_batch_size"], ppo_epochs=p["ppo_epochs"],
                    learning_rate=p["lr"], kl_coef=p["kl_coef"], kl_target=p["kl_target"], kl_horizon=p["kl_horizon"],
                    lr_schedule=p["lr_schedule"], total_steps=p["steps"] if p["lr_schedule"] != "constant" else None,
                    top_p=p["top_p"], max_new_tokens=p["max_new_tokens"],
                    temperature=p["temperature"], optim=p["optim"], seed=p["seed"] + rank)  # own samples per process
    ppo = PPO(policy, tok, cfg, accelerator=accelerator)

    prompts = load_prompts(args, p, tok)
    g = torch.Generator().manual_seed(p["seed"] * 1000 + rank)
    draw = lambda n: [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]  # noqa: E731
    out = Path(args.out)
    run = RunState(g, rewards)
    resume = checkpointing(accelerator, ppo, run, out / "checkpoint")

    def gathered(x: torch.Tensor) -> torch.Tensor:
        """(K, B) on this process → (K, B·world), process-major."""
        return accelerator.gather(x.T.contiguous().to(device)).T.cpu()

    def respond(batch):
        ids, mask = lm.encode_prompts(tok, batch)
        roll = ppo.rollout(ids, mask)
        return roll, [t.strip() for t in ppo.decode(roll)]

    t0 = time.perf_counter()
    if args.resume and (out / "checkpoint").is_dir():
        resume()  # weights, optimizer, random states, PPO's counters, this run's step and history
    else:
        standardise(accelerator, rewards, draw, respond, gathered, p)

    for step in range(run.step + 1, p["steps"] + 1):
        batch = draw(p["batch_size"])
        with accelerator.autocast():
            roll, texts = respond(batch)
            scores = gathered(rewards(batch, texts))  # (K, B·world) z-scores
            reward, group = combine(scores, p["rule"])
            mine = reward[rank * len(batch):(rank + 1) * len(batch)]
            stats = ppo.step(roll, mine)  # β adapts to the global batch's KL: the same on every process
        row = {"step": step, "group": group, "seconds": time.perf_counter() - t0,
               **{f"reward_{k}": float(s.mean()) for k, s in enumerate(scores)}, **stats}
        run.history.append(row)
        run.step = step
        if accelerator.is_main_process:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            accelerator.save_state(str(out / "checkpoint"))

    finish(accelerator, ppo, run, out, {"params": p, "rewards": args.rewards, "base": args.base,
                                        "reward_mean": rewards.mean.tolist(), "reward_std": rewards.std.tolist(),
                                        "reward_backbone_shares_policy_weights": lora.backbone_shared(policy, rms)})


def standardise(accelerator, rewards, draw, respond, gathered, p) -> None:
    """Each reward model's mean and std over n_standardise base-policy samples per process, all
    processes' together."""
    with accelerator.autocast():  # the policy starts as the base (LoRA B = 0): these are base samples
        base_prompts, base_texts = [], []
        for i in range(0, p["n_standardise"], p["batch_size"]):
            batch = draw(min(p["batch_size"], p["n_standardise"] - i))
            base_prompts += batch
            base_texts += respond(batch)[1]
        raw = gathered(rewards.raw(base_prompts, base_texts))
    rewards.mean, rewards.std = raw.mean(1), raw.std(1).clamp_min(1e-6)


def portable(base: str) -> str:
    """The base as the saved adapter records it: relative to the repository when it lies inside
    (the same on every clone), else as given (a hub id, or a path elsewhere)."""
    path = Path(base).resolve()
    return str(path.relative_to(ROOT)) if path.exists() and path.is_relative_to(ROOT) else base


def finish(accelerator, trainer, run, out: Path, info: dict) -> None:
    """Save the policy (every process takes part: FSDP gathers its shards), then, on the main
    process, history.json and run.json."""
    accelerator.wait_for_everyone()
    with lora.recorded_base(trainer.model, portable(info["base"])):
        trainer.save_pretrained(out / "policy")
    if accelerator.is_main_process:
        (out / "history.json").write_text(json.dumps(run.history, indent=1) + "\n")
        info = {**info, "processes": accelerator.num_processes, "device": str(accelerator.device),
                "distributed_type": str(accelerator.distributed_type), "mixed_precision": accelerator.mixed_precision}
        (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    accelerator.end_training()


if __name__ == "__main__":
    main()
