#!/usr/bin/env python
"""Where the GPT-2-size PPO update's time goes: one forward + backward of a 2 × 41-token minibatch
(9 query + 32 response tokens, the bench_ppo.py --size gpt2 minibatch) under torch.profiler, with
the tied 50,257 × 768 embedding's gradient dense (what PPO runs) and sparse (not applied: not
bit-identical, repeated tokens are summed in another order); then the optimiser step of the foreach
and the fused AdamW on the same gradients.  Prints milliseconds per minibatch.

    python benchmarks/profile_gpt2_update.py [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from trl112_ppo_step import build_tokenizer  # noqa: E402

from pluralign import ppo as P  # noqa: E402

OPS = ("aten::mm", "aten::addmm", "aten::add", "aten::fill_")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = build_tokenizer(50253)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=12, n_embd=768, n_head=12, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = P.fused_gelu(GPT2LMHeadModel(cfg).float()).eval()
    head = P.ValueHead(768)
    ids = torch.randint(10, 50000, (2, 41))
    mask = torch.ones_like(ids)

    def minibatch():
        model.zero_grad(set_to_none=True)
        lp, v, _ = P.response_logprobs_and_values(model, head, ids, mask, 9, 1.0)
        (lp.sum() + v.sum()).backward()

    for sparse in (False, True):
        model.transformer.wte.sparse = sparse
        minibatch()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.reps):
                minibatch()
        events = {e.key: e.self_cpu_time_total / 1e3 / args.reps for e in prof.key_averages()}
        total = sum(events.values())
        print(f"embedding gradient {'sparse' if sparse else 'dense '}: {total:.0f} ms per minibatch (profiled); "
              + ", ".join(f"{k} {events.get(k, 0.0):.0f} ms" for k in OPS))
    model.transformer.wte.sparse = False
    params = [p for p in model.parameters()] + list(head.parameters())
    for optim in P.OPTIMIZERS:
        opt = P.make_optimizer(params, 1e-3, optim)
        minibatch()
        opt.step()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        print(f"{optim}: {1e3 * min(times):.0f} ms per optimiser step ({sum(p.numel() for p in params) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
