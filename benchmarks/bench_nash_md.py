#!/usr/bin/env python
"""Our Nash-MD-PG step against TRL 1.13's ``trl.experimental.nash_md.NashMDTrainer``, same tiny model,
batch, mixture coefficient and lengths (64 and 128 new tokens), measured in one run; plus the
mixture opponent's generation speed with and without a KV cache.

One step = y ~ π_θ (``generate``), y' ~ geometric mixture of π_θ and μ, P(y ≻ y') = σ(r(y) − r(y'))
from a tiny GPT-2 reward model (the only preference TRL 1.13's Nash-MD takes), log μ(y), and one
AdamW update.  TRL runs in its own venv (``benchmarks/setup_trl113.sh``); this script runs with the
project's venv and calls it.

    python benchmarks/bench_nash_md.py [--steps 6] [--warmup 2]    # writes results/benchmarks/nash_md.json
    python benchmarks/bench_nash_md.py --size gpt2                 # GPT-2-small shape → nash_md_gpt2.json

``--size gpt2``: the GPT-2-small architecture (as in bench_ppo.py), batch 8, 32 new tokens, 2 threads
per side.  Also reported: the update's achieved FLOP/s (bench_ppo.update_flops, one pass) against a
dense fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import copy
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
from pluralign.nash_md_lm import (NashMD, NashMDConfig, mixture_sample, mixture_sample_nocache,  # noqa: E402
                                  preference_from_reward)
from pluralign.ppo import OPTIMIZERS  # noqa: E402
from pluralign.reward_models import score  # noqa: E402
from bench_ppo import matmul_rate, update_flops  # noqa: E402

SIZES = {"tiny": dict(n_embd=128, n_layer=2, n_head=4, vocab_size=250, batch_size=32, response_lengths=[64, 128],
                 optim="adamw_torch"),
         "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50253, batch_size=8, response_lengths=[32],
                      steps=3, warmup=1, trl_steps=2, trl_warmup=1, threads=2,
                      optim="adamw_torch_fused")}


def setup(args, T: int):
    """Tokenizer, policy, reward model and prompts, built as TRL's side builds them."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    tok = build_tokenizer(args.vocab_size)
    cfg = dict(vocab_size=len(tok), n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
               n_positions=max(128, 16 + T), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    policy = GPT2LMHeadModel(GPT2Config(**cfg)).float()
    rm = GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=1)).float().eval()
    words = build_words(args.vocab_size)
    rng = random.Random(args.seed)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(1024)]
    return tok, policy, rm, prompts


def ours(args, T: int) -> dict:
    tok, policy, rm, prompts = setup(args, T)
    preference = preference_from_reward(lambda p, r: score(rm, tok, p, r))
    nash = NashMD(policy, tok, NashMDConfig(beta=args.mixture_coef, tau=args.tau, learning_rate=1e-3,
                                            batch_size=args.batch_size, max_new_tokens=T, seed=args.seed,
                                            optim=args.optim))
    times, roll_t, pref_t, upd_t, lengths, flops = [], [], [], [], [], []
    for i in range(args.warmup + args.steps):
        batch = prompts[(i * args.batch_size) % 1024:][: args.batch_size]
        ids, mask = lm.encode_prompts(tok, batch)
        t0 = time.perf_counter()
        roll = nash.rollout(ids, mask)
        t1 = time.perf_counter()
        y = [" " + t.strip() for t in nash.decode(roll.response_ids, roll.response_mask)]
        y_prime = [" " + t.strip() for t in nash.decode(roll.opponent_ids, roll.opponent_mask)]
        p = preference(batch, y, y_prime)
        t2 = time.perf_counter()
        nash.step(roll, p)
        t3 = time.perf_counter()
        if i >= args.warmup:
            times.append(t3 - t0)
            roll_t.append(t1 - t0)
            pref_t.append(t2 - t1)
            upd_t.append(t3 - t2)
            lengths.append(roll.opponent_ids.shape[1])
            flops.append(update_flops(policy, args.batch_size, roll.query_ids.shape[1], roll.response_ids.shape[1], 1))
    return {"seconds_per_step": statistics.median(times), "seconds_per_step_min": min(times),
            "seconds_per_step_all": [round(t, 4) for t in times],
            "rollout_seconds": statistics.median(roll_t),  # generate y + mixture y' + log μ(y)
            "preference_seconds": statistics.median(pref_t), "update_seconds": statistics.median(upd_t),
            "mean_mixture_generated_length": statistics.mean(lengths),
            "policy_parameters": sum(p.numel() for p in policy.parameters()),
            "update_flops_per_second": statistics.median(f / t for f, t in zip(flops, upd_t))}


def mixture_speed(args, T: int) -> dict:
    """Tokens/s of y' ~ π' (β = mixture_coef) with one KV cache per model and with full recomputation
    (TRL 1.13's way), same prompts and random numbers; both at the start of training (μ = π_θ)."""
    tok, policy, _, prompts = setup(args, T)
    policy.eval()  # dropout off, as in NashMD (and TRL's disable_dropout)
    ref = copy.deepcopy(policy)
    ids, mask = lm.encode_prompts(tok, prompts[: args.batch_size])
    out = {}
    for name, fn in (("cached", mixture_sample), ("nocache", mixture_sample_nocache)):
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        y, m = fn(policy, ref, ids, mask, args.mixture_coef, T, tok.eos_token_id, tok.pad_token_id, generator=g)
        secs = time.perf_counter() - t0
        out[name] = {"seconds": secs, "tokens_per_second": y.numel() / secs, "generated_length": y.shape[1]}
        out[f"_{name}_ids"] = y
    out["identical_samples"] = bool(torch.equal(out.pop("_cached_ids"), out.pop("_nocache_ids")))
    out["speedup"] = out["cached"]["tokens_per_second"] / out["nocache"]["tokens_per_second"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny", help="model shape, batch, lengths (see SIZES)")
    ap.add_argument("--steps", type=int, default=None, help="default 6 (gpt2: 3)")
    ap.add_argument("--warmup", type=int, default=None, help="default 2 (gpt2: 1)")
    ap.add_argument("--trl-steps", type=int, default=None, help="TRL's steps take ~10-100 s each; default 2")
    ap.add_argument("--trl-warmup", type=int, default=None, help="default 1")
    ap.add_argument("--response-lengths", type=int, nargs="+", default=None, help="default 64 128 (gpt2: 32)")
    ap.add_argument("--mixture-coef", type=float, default=0.5, help="β (TRL's default mixture_coef)")
    ap.add_argument("--tau", type=float, default=0.1, help="τ (TRL's default beta)")
    ap.add_argument("--threads", type=int, default=None,
                    help="per side; default 1 (steady on a shared 2-core box, where 2 OpenMP threads spin-wait "
                         "badly; gpt2: 2)")
    ap.add_argument("--optim", choices=OPTIMIZERS, default=None,
                    help="our AdamW kernel (PPOConfig.optim); default: the cpu profile's adamw_torch at the tiny size, "
                         "at gpt2 size adamw_torch_fused, TrainingArguments' default, which TRL's side runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true", help="only our side (no TRL 1.13 venv needed)")
    ap.add_argument("--out", default=None, help="default results/benchmarks/nash_md.json (gpt2: nash_md_gpt2.json)")
    args = ap.parse_args()
    for key, value in {"steps": 6, "warmup": 2, "trl_steps": 2, "trl_warmup": 1, "threads": 1, **SIZES[args.size]}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.out = args.out or str(ROOT / "results" / "benchmarks" / f"nash_md{'' if args.size == 'tiny' else '_' + args.size}.json")
    torch.set_num_threads(args.threads)
    lengths = [str(T) for T in args.response_lengths]
    report = {"config": vars(args) | {"out": None}, "loadavg_before": os.getloadavg()[0],
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} "
                        f"thread(s) per side, torch {torch.__version__}; a shared 2-core machine"}
    report["matmul_flops_per_second"] = matmul_rate()
    report["ours"] = {str(T): ours(args, T) for T in args.response_lengths}
    if args.size == "tiny":  # the cached / cache-less mixture sampler race: tiny size only (O(T²) at 124M)
        report["mixture_generation"] = {str(T): mixture_speed(args, T) for T in args.response_lengths}
    report["update_flops_over_matmul"] = {T: report["ours"][T]["update_flops_per_second"]
                                          / report["matmul_flops_per_second"] for T in lengths}
    for T in lengths:
        print(f"ours, {T} tokens: {report['ours'][T]['seconds_per_step']:.3f} s/step; update "
              f"{report['update_flops_over_matmul'][T]:.0%} of the matmul rate")
        if "mixture_generation" in report:
            mix = report["mixture_generation"][T]
            print(f"  mixture {mix['cached']['tokens_per_second']:.0f} tok/s cached vs "
                  f"{mix['nocache']['tokens_per_second']:.0f} recomputed ({mix['speedup']:.1f}x)")
    if not args.skip_trl:
        venv = ROOT / "benchmarks" / ".venv-trl113" / "bin" / "python"
        if not venv.exists():
            subprocess.run(["bash", str(ROOT / "benchmarks" / "setup_trl113.sh")], check=True)
        cmd = [str(venv), str(ROOT / "benchmarks" / "trl113_nash_md_step.py"), "--steps", str(args.trl_steps),
               "--warmup", str(args.trl_warmup), "--batch-size", str(args.batch_size), "--response-lengths", *lengths,
               "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer), "--n-head", str(args.n_head),
               "--vocab-size", str(args.vocab_size), "--mixture-coef", str(args.mixture_coef), "--tau", str(args.tau),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        report["trl_1_13"] = json.loads(out.stdout.strip().splitlines()[-1])
        report["ours_over_trl"] = {T: report["ours"][T]["seconds_per_step"]
                                   / report["trl_1_13"]["by_length"][T]["seconds_per_step"] for T in lengths}
        for T in lengths:
            print(f"TRL 1.13, {T} tokens: {report['trl_1_13']['by_length'][T]['seconds_per_step']:.2f} s/step "
                  f"→ ours/TRL = {report['ours_over_trl'][T]:.3f} (target ≤ {0.2 if args.size == 'gpt2' else 0.3})")
    report["loadavg_after"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
