#!/usr/bin/env python
"""Several PPO runs at the cpu profile's size: one after another in one process (torch's default
threads) against ``pluralign.lmruns``' way, two spawned single-threaded processes at a time.

The cpu profile's policy is a 0.95M-parameter GPT-2 (2 layers, width 128, vocabulary 4,096) and
its reward models are the same shape: one PPO run spends most of its time in per-operation
overhead, which a second thread hardly shortens.  Random weights (so every response runs to the
48-token cap, longer than the trained policies' answers), real shapes (batch 64, 2 epochs x 2
minibatches, K = 2 reward models), measured in one run; prints runs per minute each way
and the ratio.

    python benchmarks/bench_parallel_runs.py [--runs 4] [--steps 6]   # writes results/benchmarks/parallel_runs.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(folder: Path, vocab: int = 4096) -> None:
    """A random cpu-profile-shaped policy and reward model, saved like the pipeline's."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from pluralign import lm

    words = [f"w{i}" for i in range(vocab - 4)]
    tok = lm.build_word_tokenizer(words)
    cfg = dict(vocab_size=len(tok), n_layer=2, n_embd=128, n_head=2, n_positions=128, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(**cfg))
    policy.save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=1)).save_pretrained(folder / "reward")


def one_run(folder: str, seed: int, steps: int) -> float:
    """One PPO run (``steps`` iterations) from the saved policy; returns its seconds."""
    from transformers import AutoModelForSequenceClassification

    from pluralign import lm
    from pluralign.maxmin_ppo import GroupRewards, train_policy
    from pluralign.ppo import PPOConfig

    t0 = time.perf_counter()
    tok = lm.load_tokenizer(f"{folder}/policy")
    g = torch.Generator().manual_seed(seed)
    prompts = [" ".join(f"w{int(i)}" for i in torch.randint(4000, (5,), generator=g)) for _ in range(256)]
    rm = AutoModelForSequenceClassification.from_pretrained(f"{folder}/reward").eval()
    rewards = GroupRewards([rm, rm], tok).fit_standardisation(prompts[:64], [" w1 w2 w3"] * 64)
    cfg = PPOConfig(batch_size=64, mini_batch_size=32, ppo_epochs=2, max_new_tokens=48, temperature=0.7, seed=seed)
    train_policy(f"{folder}/policy", tok, rewards, prompts, "argmin", steps, cfg, progress=False)
    return time.perf_counter() - t0


def _worker(folder, seed, steps):
    torch.set_num_threads(1)
    return one_run(folder, seed, steps)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "parallel_runs.json"))
    args = ap.parse_args(argv)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        for s in range(args.runs):
            one_run(tmp, s, args.steps)
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_worker, [tmp] * args.runs, range(args.runs), [args.steps] * args.runs))
        pooled = time.perf_counter() - t0
    report = {"runs": args.runs, "steps_per_run": args.steps, "sequential_threads": threads,
              "workers": args.workers, "sequential_seconds": sequential, "pool_seconds": pooled,
              "speedup": sequential / pooled, "cpu_count": os.cpu_count()}
    print(f"{args.runs} runs x {args.steps} PPO iterations: one process ({threads} threads) {sequential:.1f} s, "
          f"{args.workers} single-threaded processes {pooled:.1f} s (spawn included): {sequential / pooled:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
