#!/usr/bin/env python
"""Our PPO step against TRL 1.12's ``trl.experimental.ppo.PPOTrainer``, same tiny model, batch
and lengths, measured in one run; plus MaxMin-PPO's overhead over single-reward PPO.

One step = rollout of B prompts (generation, reference and value forwards), reward-model
scoring, and the update (ppo_epochs × B/mini_batch optimiser steps).  TRL runs in its own venv
(``benchmarks/setup_trl112.sh``); this script runs with the project's venv and calls it.

    python benchmarks/bench_ppo.py [--steps 8] [--warmup 2]    # writes results/benchmarks/ppo.json
    python benchmarks/bench_ppo.py --size gpt2                 # GPT-2-small shape → ppo_gpt2.json

``--size gpt2``: the GPT-2-small architecture (12 layers, 768 wide, 12 heads, vocabulary 50,257;
random weights; position table 128), batch 8, 32 new tokens.  Also reported: the update phase's
achieved FLOP/s (:func:`update_flops`, counted at the rollout's padded length) against a dense fp32
matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from trl112_ppo_step import build_tokenizer, build_words  # noqa: E402  (the same tokenizer TRL's side uses)

from pluralign import lm  # noqa: E402
from pluralign.maxmin_ppo import GroupRewards, combine  # noqa: E402
from pluralign.ppo import OPTIMIZERS, PPO, PPOConfig  # noqa: E402


SIZES = {"tiny": dict(n_embd=128, n_layer=2, n_head=4, vocab_size=250, batch_size=64, response_length=32,
                 optim="adamw_torch"),
         "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50253, batch_size=8, response_length=32,
                      steps=3, warmup=1, optim="adamw_torch_fused")}


def matmul_rate(n: int = 1024, reps: int = 10) -> float:
    """Measured dense fp32 matmul FLOP/s on this process's threads: (n×n)·(n×n), best of ``reps``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def update_flops(model, sequences: int, query_len: int, response_len: int, passes: int) -> float:
    """Model FLOPs of ``passes`` forward + backward passes (backward = 2 × forward: full fine-tuning)
    over ``sequences`` sequences of query_len + response_len tokens, as our update runs them: every
    position through the blocks (2·N_blocks per token, attention 4·L·d·S² per sequence), the LM
    head on the response_len + 1 positions that predict response tokens (2·V·d each)."""
    cfg = model.config
    n_blocks = sum(p.numel() for p in model.transformer.h.parameters())
    S = query_len + response_len
    forward = sequences * (2 * n_blocks * S + 4 * cfg.n_layer * cfg.n_embd * S * S
                           + 2 * cfg.vocab_size * cfg.n_embd * (response_len + 1))
    return 3 * forward * passes


def ours(args, K: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    tok = build_tokenizer(args.vocab_size)
    cfg = dict(vocab_size=len(tok), n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=128,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    policy = GPT2LMHeadModel(GPT2Config(**cfg)).float()
    rms = [GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=1)).float().eval() for _ in range(K)]
    rewards = GroupRewards(rms, tok)
    words = build_words(args.vocab_size)
    rng = random.Random(args.seed)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(1024)]
    rewards.fit_standardisation(prompts[:64], [" " + p for p in prompts[64:128]])
    ppo = PPO(policy, tok, PPOConfig(batch_size=args.batch_size, mini_batch_size=args.batch_size // 4, ppo_epochs=4,
                                     max_new_tokens=args.response_length, learning_rate=1e-3, seed=args.seed,
                                     optim=args.optim))
    times, gen_times, upd_times, tokens, flops = [], [], [], [], []
    for i in range(args.warmup + args.steps):
        batch = prompts[(i * args.batch_size) % 1024:][: args.batch_size]
        ids, mask = lm.encode_prompts(tok, batch)
        t0 = time.perf_counter()
        roll = ppo.rollout(ids, mask)
        t1 = time.perf_counter()
        scores = rewards(batch, [" " + t for t in ppo.decode(roll)])
        reward, _ = combine(scores, "argmin" if K > 1 else "single")
        t2 = time.perf_counter()
        ppo.step(roll, reward)
        t3 = time.perf_counter()
        if i >= args.warmup:
            times.append(t3 - t0)
            gen_times.append(t1 - t0)
            upd_times.append(t3 - t2)
            tokens.append(int(roll.response_mask.sum()))
            flops.append(update_flops(policy, args.batch_size, roll.query_ids.shape[1], roll.response_ids.shape[1], 4))
    n_tok = args.batch_size * args.response_length
    n_params = sum(p.numel() for p in policy.parameters())
    return {"seconds_per_step": statistics.median(times), "seconds_per_step_min": min(times),
            "rollout_seconds": statistics.median(gen_times), "update_seconds": statistics.median(upd_times),
            "rollout_tokens_per_second": n_tok / statistics.median(gen_times),  # generation + no-grad forwards
            "update_tokens_per_second": n_tok * 4 / statistics.median(upd_times),
            "mean_response_tokens": statistics.mean(tokens) / args.batch_size, "policy_parameters": n_params,
            "update_flops_per_second": statistics.median(f / t for f, t in zip(flops, upd_times))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny", help="model shape and batch (see SIZES)")
    ap.add_argument("--steps", type=int, default=None, help="default 8 (gpt2: 3)")
    ap.add_argument("--warmup", type=int, default=None, help="default 2 (gpt2: 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--optim", choices=OPTIMIZERS, default=None,
                    help="our AdamW kernel (PPOConfig.optim); default: the cpu profile's adamw_torch at the tiny size, "
                         "at gpt2 size adamw_torch_fused, TrainingArguments' default, which TRL's side runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true", help="only our side (no TRL 1.12 venv needed)")
    ap.add_argument("--out", default=None, help="default results/benchmarks/ppo.json (gpt2: ppo_gpt2.json)")
    args = ap.parse_args()
    for key, value in {"steps": 8, "warmup": 2, **SIZES[args.size]}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.out = args.out or str(ROOT / "results" / "benchmarks" / f"ppo{'' if args.size == 'tiny' else '_' + args.size}.json")
    torch.set_num_threads(args.threads)
    report = {"config": vars(args) | {"out": None}, "loadavg_before": os.getloadavg()[0],
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads "
                        f"per side, torch {torch.__version__}; a shared 2-core machine"}
    report["matmul_flops_per_second"] = matmul_rate()
    report["ours_single"] = ours(args, K=1)
    if args.size == "tiny":  # MaxMin's overhead: measured at the tiny size only
        report["ours_maxmin_K2"] = ours(args, K=2)
        report["maxmin_overhead"] = report["ours_maxmin_K2"]["seconds_per_step"] / report["ours_single"]["seconds_per_step"]
    report["update_flops_over_matmul"] = report["ours_single"]["update_flops_per_second"] / report["matmul_flops_per_second"]
    print(f"update {report['ours_single']['update_flops_per_second'] / 1e9:.1f} GFLOP/s = "
          f"{report['update_flops_over_matmul']:.0%} of the {report['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s matmul rate")
    print(f"ours: {report['ours_single']['seconds_per_step']:.3f} s/step; MaxMin (K=2) / single = "
          f"{report.get('maxmin_overhead', float('nan')):.2f}x")
    if not args.skip_trl:
        venv = ROOT / "benchmarks" / ".venv-trl112" / "bin" / "python"
        if not venv.exists():
            subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_trl112.sh")], check=True)
        cmd = [str(venv), str(ROOT / "benchmarks" / "trl112_ppo_step.py"), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), "--response-length", str(args.response_length), "--n-embd", str(args.n_embd),
               "--n-layer", str(args.n_layer), "--n-head", str(args.n_head), "--vocab-size", str(args.vocab_size),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        report["trl_1_12"] = json.loads(out.stdout.strip().splitlines()[-1])
        report["ours_over_trl"] = report["ours_single"]["seconds_per_step"] / report["trl_1_12"]["seconds_per_step"]
        target = 0.5 if args.size == "gpt2" else 0.7
        print(f"TRL 1.12: {report['trl_1_12']['seconds_per_step']:.3f} s/step → ours/TRL = {report['ours_over_trl']:.2f}x "
              f"(target ≤ {target})")
    report["loadavg_after"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
