#!/usr/bin/env python
"""Nash-MD-PG of a LoRA policy against a preference from K LoRA reward models: the Tulu2 models
under Nash-MD instead of PPO.

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml scripts/tulu2_nash_md.py \\
        --params params.yaml --base BASE --rewards RM0 [RM1 …] --prompts alpaca.json --out DIR \\
        [--beta 0.125 --tau 0.01 --opponent mixture]
    python scripts/tulu2_nash_md.py …        # the same on CPU (cpu profile, tiny stand-in)

Each step: every process samples its own prompts (seed + rank); :class:`pluralign.nash_md_lm.NashMD`
draws y from the policy and y' from the opponent (the geometric mixture of π_θ and μ, or the EMA
policy); every reward model scores both (standardised on base-policy samples); the scores of all
processes are gathered, the ``rule`` (:func:`pluralign.maxmin_ppo.combine`) turns the K rewards of
y into one — for ``argmin`` the group with the lowest mean over the global batch, whose reward then
also scores y' — and the preference is Bradley–Terry, P(y ≻ y') = σ(r(y) − r(y')) (what TRL 1.13's
Nash-MD took).  Each process steps on its own slice; the loss is a mean over sequences, so DDP's
averaged gradient is that of the global batch.

The same machinery as scripts/tulu2_ppo.py (imported from it): the ``tulu2`` and ``tulu_align``
params sections (lr, batch sizes, ppo_epochs = passes per batch, max_new_tokens, LoRA, the
seeds; PPO-only keys are not used), :func:`pluralign.lora.ppo_models`, one Accelerator (one process,
DDP or FSDP from the launch config; DeepSpeed refused), ``--checkpoint-every`` / ``--resume``.
Writes ``DIR/policy`` (adapter and tokenizer), ``DIR/history.json`` and ``DIR/run.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tulu2_ppo as common  # noqa: E402  (puts lib/ on sys.path)

from pluralign import lm, lora  # noqa: E402
from pluralign.maxmin_ppo import RULES, GroupRewards, combine  # noqa: E402
from pluralign.nash_md_lm import OPPONENTS, NashMD, NashMDConfig  # noqa: E402


def bt_preference(scores_y: torch.Tensor, scores_y_prime: torch.Tensor, rule: str):
    """(K, N) standardised scores of y and y' over the global batch → (P(y ≻ y') (N,), group).
    The rule picks the reward from y's scores (argmin: the worst-off group on the policy's own
    samples); that group's reward (or the same per-sample rule) scores y'."""
    r_y, group = combine(scores_y, rule)
    r_y_prime = scores_y_prime[group] if group >= 0 else combine(scores_y_prime, rule)[0]
    return torch.sigmoid(r_y - r_y_prime), group


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_run_args(ap)
    ap.add_argument("--rule", default="argmin", choices=RULES, help="how the K rewards become one (maxmin_ppo.combine)")
    ap.add_argument("--beta", type=float, default=0.125, help="the mixture weight of μ in the opponent")
    ap.add_argument("--tau", type=float, default=0.01, help="the KL regularisation τ")
    ap.add_argument("--opponent", default="mixture", choices=OPPONENTS)
    ap.add_argument("--ema-decay", type=float, default=None, help="θ̄'s decay, for the EMA opponents")
    args = ap.parse_args(argv)
    p = common.run_params(args)
    try:
        cfg = NashMDConfig(beta=args.beta, tau=args.tau, learning_rate=p["lr"], batch_size=p["batch_size"],
                           max_new_tokens=p["max_new_tokens"], temperature=p["temperature"], opponent=args.opponent,
                           ema_decay=args.ema_decay, ppo_epochs=p["ppo_epochs"], mini_batch_size=p["mini_batch_size"],
                           optim=p["optim"], seed=p["seed"])
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None

    accelerator = common.setup_accelerator(args.cpu)
    rank, device = accelerator.process_index, accelerator.device
    cfg.seed = p["seed"] + rank  # own samples per process
    tok = lm.load_tokenizer(args.base)
    policy, rms = common.build_models(args, p, tok, accelerator)
    rewards = GroupRewards(rms, tok)
    trainer = NashMD(policy, tok, cfg, accelerator=accelerator)

    prompts = common.load_prompts(args, p, tok)
    g = torch.Generator().manual_seed(p["seed"] * 1000 + rank)
    draw = lambda n: [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]  # noqa: E731
    out = Path(args.out)
    run = common.RunState(g, rewards)
    resume = common.checkpointing(accelerator, trainer, run, out / "checkpoint")

    def gathered(x: torch.Tensor) -> torch.Tensor:
        """(K, B) on this process → (K, B·world), process-major."""
        return accelerator.gather(x.T.contiguous().to(device)).T.cpu()

    def respond(batch):
        roll = trainer.rollout(*lm.encode_prompts(tok, batch))
        texts = [t.strip() for t in trainer.decode(roll.response_ids, roll.response_mask)]
        return roll, texts

    t0 = time.perf_counter()
    if args.resume and (out / "checkpoint").is_dir():
        resume()
    else:  # y at the start is the base policy's sample (LoRA B = 0)
        common.standardise(accelerator, rewards, draw, respond, gathered, p)

    for step in range(run.step + 1, p["steps"] + 1):
        batch = draw(p["batch_size"])
        with accelerator.autocast():
            roll, texts = respond(batch)
            opponents = [t.strip() for t in trainer.decode(roll.opponent_ids, roll.opponent_mask)]
            scores, scores_opp = gathered(rewards(batch, texts)), gathered(rewards(batch, opponents))
            pref, group = bt_preference(scores, scores_opp, p["rule"])
            stats = trainer.step(roll, pref[rank * len(batch):(rank + 1) * len(batch)])
        row = {"step": step, "group": group, "seconds": time.perf_counter() - t0, "global_preference": float(pref.mean()),
               **{f"reward_{k}": float(s.mean()) for k, s in enumerate(scores)}, **stats}
        run.history.append(row)
        run.step = step
        if accelerator.is_main_process:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            accelerator.save_state(str(out / "checkpoint"))

    common.finish(accelerator, trainer, run, out, {
        "params": p, "nash_md": {"beta": cfg.beta, "tau": cfg.tau, "opponent": cfg.opponent, "ema_decay": cfg.ema_decay},
        "rewards": args.rewards, "base": args.base, "reward_mean": rewards.mean.tolist(),
        "reward_std": rewards.std.tolist(), "reward_backbone_shares_policy_weights": lora.backbone_shared(policy, rms)})


if __name__ == "__main__":
    main()
