#!/usr/bin/env python
"""Data parallelism on CPU: a PPO step of 2 DDP processes (accelerate, gloo) against one process, on
the same global batch, measured in one run; and the share of the 2-process step spent communicating.

One step = rollout of the global batch's prompts (each process its half), reward scoring, and the
update (4 epochs × 4 minibatches: per process B/8 sequences each, one global minibatch B/4).  The
single process runs with 2 threads, each DDP process with 1 (the same 2 cores).  Communication:
the same 2-process step once more with DDP's gradient all-reduce switched off (``no_sync``; the
other collectives — the global batch's whitening and KL sums — stay): 1 − t(no_sync) / t(sync) is
the gradient all-reduce's share of the update.  Both DDP runs use ``pluralign.ppo.make_accelerator``
(find_unused_parameters on, as the scripts run).

The processes are started with ``torch.multiprocessing`` and joined by a gloo process group that
accelerate then finds, as under ``accelerate launch`` (benchmark scaffolding, not a launcher for runs).

    python benchmarks/bench_ddp.py [--size tiny|gpt2]     # writes results/benchmarks/ddp.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {"tiny": dict(n_embd=128, n_layer=2, n_head=4, vocab_size=250, batch_size=64, response_length=32),
         "gpt2": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50253, batch_size=8, response_length=32)}


def setup(args):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from pluralign.maxmin_ppo import GroupRewards
    from trl112_ppo_step import build_tokenizer, build_words

    torch.manual_seed(args.seed)
    tok = build_tokenizer(args.vocab_size)
    cfg = dict(vocab_size=len(tok), n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=128,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    policy = GPT2LMHeadModel(GPT2Config(**cfg)).float()
    rm = GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=1)).float().eval()
    rewards = GroupRewards([rm], tok)
    words = build_words(args.vocab_size)
    rng = random.Random(args.seed)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(1024)]
    rewards.fit_standardisation(prompts[:16], [" " + p for p in prompts[16:32]])
    return tok, policy, rewards, prompts


def steps(args, rank: int, world: int, accelerator=None, sync: bool = True) -> tuple[list[dict], str]:
    """Timed PPO iterations of this process's share of the global batch, and the policy's wrapper."""
    from pluralign import lm
    from pluralign.ppo import PPO, PPOConfig

    tok, policy, rewards, prompts = setup(args)
    n = args.batch_size // world
    ppo = PPO(policy, tok, PPOConfig(batch_size=n, mini_batch_size=n // 4, ppo_epochs=4,
                                     max_new_tokens=args.response_length, learning_rate=1e-3, seed=args.seed + rank),
              accelerator=accelerator)
    barrier = accelerator.wait_for_everyone if accelerator is not None else (lambda: None)
    rows = []
    for i in range(args.warmup + args.steps):
        start = (i * args.batch_size) % 1024 + rank * n
        batch = prompts[start:start + n]
        ids, mask = lm.encode_prompts(tok, batch)
        barrier()
        t0 = time.perf_counter()
        roll = ppo.rollout(ids, mask)
        reward = rewards(batch, [" " + t for t in ppo.decode(roll)])[0]
        t1 = time.perf_counter()
        with contextlib.nullcontext() if sync else ppo.policy.no_sync():
            ppo.step(roll, reward)
        barrier()
        t2 = time.perf_counter()
        if i >= args.warmup:
            rows.append({"step": t2 - t0, "rollout": t1 - t0, "update": t2 - t1})
    return rows, type(ppo.policy).__name__


def _worker(rank, world, init, args, out):
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        from pluralign.ppo import make_accelerator

        acc = make_accelerator(cpu=True)
        (synced, wrapper), (unsynced, _) = steps(args, rank, world, acc), steps(args, rank, world, acc, sync=False)
        result = {"sync": synced, "no_sync": unsynced, "wrapper": wrapper}
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default results/benchmarks/ddp[_gpt2].json")
    args = ap.parse_args(argv)
    for k, v in SIZES[args.size].items():
        setattr(args, k, v)
    out = Path(args.out or ROOT / "results" / "benchmarks" / f"ddp{'' if args.size == 'tiny' else '_' + args.size}.json")
    report = {"config": vars(args) | {"out": None}, "loadavg_before": os.getloadavg()[0],
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                        f"{torch.__version__}, shared 2-core machine (other work may run beside it)"}

    torch.set_num_threads(2)
    single, _ = steps(args, 0, 1)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, f"{tmp}/rendezvous", args, tmp), nprocs=2, join=True)
        ranks = [torch.load(f"{tmp}/rank{r}.pt") for r in range(2)]
    two = {mode: [{k: max(r[mode][i][k] for r in ranks) for k in ranks[0][mode][i]} for i in range(args.steps)]
           for mode in ("sync", "no_sync")}
    report["one_process_2_threads"] = {k: median(single, k) for k in ("step", "rollout", "update")}
    report["two_processes_ddp"] = {k: median(two["sync"], k) for k in ("step", "rollout", "update")}
    report["two_processes_no_gradient_sync"] = {k: median(two["no_sync"], k) for k in ("step", "rollout", "update")}
    report["ddp_wrapper"] = ranks[0]["wrapper"]
    report["ddp_over_one_process"] = report["two_processes_ddp"]["step"] / report["one_process_2_threads"]["step"]
    sync_u, nosync_u = report["two_processes_ddp"]["update"], report["two_processes_no_gradient_sync"]["update"]
    report["gradient_allreduce_share_of_update"] = 1 - nosync_u / sync_u
    report["gradient_allreduce_share_of_step"] = (sync_u - nosync_u) / report["two_processes_ddp"]["step"]
    report["loadavg_after"] = os.getloadavg()[0]
    print(f"{args.size}: 1 process {report['one_process_2_threads']['step']:.3f} s/step, 2 DDP processes "
          f"{report['two_processes_ddp']['step']:.3f} s/step ({report['ddp_over_one_process']:.2f}x); gradient "
          f"all-reduce {report['gradient_allreduce_share_of_update']:.0%} of the update, "
          f"{report['gradient_allreduce_share_of_step']:.0%} of the step")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
