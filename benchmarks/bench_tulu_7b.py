#!/usr/bin/env python
"""MaxMin-PPO steps of the Tulu2-7B stage at full size on one GPU, with random weights: does it
fit, and how fast is it?

Model: a Llama-architecture causal LM of Tulu2-7B's shape (hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32000), bf16, built directly on the GPU (``torch.device`` context:
the weights are never materialised in CPU RAM).  The models on it are built by
:func:`pluralign.lora.ppo_models`, the builder scripts/tulu2_ppo.py uses, so this measures the
setup the script runs: policy LoRA r=16 (q_proj, v_proj; no dropout) with our PPO's value head,
reference = adapters disabled; K=2 reward LoRA r=8 adapters on ONE sequence-classification model
whose backbone shares the policy base's weight tensors (:func:`pluralign.lora.share_backbone`),
each adapter with its own score head — one copy of the 7B weights serves the policy, the
reference and both reward models.  (The script's adapters are loaded from disk, these are fresh
with random heads; the module structure is the same.)

One step = rollout (generation of ``--new-tokens`` tokens for ``--batch-size`` prompts, then the
policy/value and reference forwards), scoring by the K reward adapters and the argmin rule, and
the PPO update (``--ppo-epochs`` × batch/mini-batch optimiser steps, activation checkpointing).

Reported: step time, generated tokens/s, peak GPU memory, and the update's model FLOP
utilisation against a measured bf16 matmul rate (a large ``torch.matmul`` timed first).  Update
model FLOPs per token: 2·(2N + 4·L·d·S) — forward, plus a backward that computes input gradients
only (the base is frozen; LoRA weight gradients are negligible); N = parameters without the input
embedding, S = sequence length; the checkpointing recompute is not counted (MFU convention).

    python benchmarks/bench_tulu_7b.py                 # GPU, 7B → results/benchmarks/tulu_7b_<gpu>.json
    python benchmarks/bench_tulu_7b.py --size tiny     # CPU smoke run of the same code
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pluralign import lm, lora  # noqa: E402
from pluralign.maxmin_ppo import GroupRewards, combine  # noqa: E402
from pluralign.ppo import PPO, PPOConfig  # noqa: E402

SIZES = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=512),
}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device, dtype, n: int, reps: int) -> float:
    """Measured dense matmul FLOP/s: (n×n)·(n×n) in ``dtype``, best of ``reps`` after a warm-up."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def build(args, device, dtype):
    """(tokenizer, LoRA policy, [AdapterView] reward models, config, shared backbone?): a random
    base of the chosen shape, then :func:`pluralign.lora.ppo_models` as in scripts/tulu2_ppo.py
    (activation checkpointing on, as the paper profile runs it)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = SIZES[args.size]
    tok = lm.build_word_tokenizer([f"t{i}" for i in range(shape["vocab_size"] - 4)])  # 4 special tokens
    config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    policy, reward_models = lora.ppo_models(base, tok, args.K, r=16, alpha=32, gradient_checkpointing=True,
                                            dtype=dtype, seed=args.seed, device=device,
                                            reward_r=8, reward_alpha=32, reward_dropout=0.1)
    return tok, policy, reward_models, config, lora.backbone_shared(policy, reward_models)


def update_flops(config, n_params: int, tokens: int, seq: int) -> float:
    """Model FLOPs of a LoRA update over ``tokens`` tokens of sequences of length ``seq``."""
    fwd = 2 * n_params + 4 * config.num_hidden_layers * config.hidden_size * seq
    return 2 * fwd * tokens


def device_name(device) -> str:
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    return "cpu"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="7b")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mini-batch-size", type=int, default=None, help="default: the batch size")
    ap.add_argument("--ppo-epochs", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=None, help="tokens per prompt (default 128; tiny 8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 256; tiny 8)")
    ap.add_argument("--K", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--matmul-n", type=int, default=None, help="matmul size for the peak rate (8192; tiny 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is visible")
    ap.add_argument("--out", default=None, help="default results/benchmarks/tulu_7b_<device>[_tiny].json")
    args = ap.parse_args(argv)
    tiny = args.size == "tiny"
    args.prompt_len = args.prompt_len or (8 if tiny else 128)
    args.new_tokens = args.new_tokens or (8 if tiny else 256)
    args.matmul_n = args.matmul_n or (256 if tiny else 8192)
    args.mini_batch_size = args.mini_batch_size or args.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if not tiny and device.type != "cuda":
        raise SystemExit("error: the 7b size needs a CUDA GPU; use --size tiny on CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    peak_rate = matmul_rate(device, dtype, args.matmul_n, reps=10)
    t = time.perf_counter()
    tok, policy, reward_models, config, shared = build(args, device, dtype)
    build_seconds = time.perf_counter() - t
    n_params = sum(p.numel() for n, p in policy.get_base_model().named_parameters()
                   if "lora_" not in n and "embed_tokens" not in n)
    rewards = GroupRewards(reward_models, tok)
    ppo = PPO(policy, tok, PPOConfig(batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                                     ppo_epochs=args.ppo_epochs, max_new_tokens=args.new_tokens,
                                     learning_rate=1.4e-5, kl_coef=0.05, seed=args.seed))
    g = torch.Generator().manual_seed(args.seed)
    vocab = [f"t{i}" for i in range(config.vocab_size - 4)]

    def prompts():
        return [" ".join(vocab[i] for i in torch.randint(len(vocab), (args.prompt_len - 1,), generator=g).tolist())
                for _ in range(args.batch_size)]  # + <bos> = prompt_len tokens

    rows = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        batch = prompts()
        ids, mask = lm.encode_prompts(tok, batch)
        sync(device)
        t0 = time.perf_counter()
        roll = ppo.rollout(ids, mask)
        sync(device)
        t1 = time.perf_counter()
        texts = ppo.decode(roll)
        if rewards.mean is None:
            rewards.fit_standardisation(batch, texts)
        reward, group = combine(rewards(batch, texts), "argmin")
        sync(device)
        t2 = time.perf_counter()
        ppo.step(roll, reward)
        sync(device)
        t3 = time.perf_counter()
        if step >= args.warmup:
            n_new = int(roll.response_mask.sum())
            seq = ids.shape[1] + roll.response_ids.shape[1]
            flops = update_flops(config, n_params, args.ppo_epochs * args.batch_size * seq, seq)
            rows.append({"step_seconds": t3 - t0, "rollout_seconds": t1 - t0, "score_seconds": t2 - t1,
                         "update_seconds": t3 - t2, "generated_tokens": n_new, "sequence_length": seq,
                         "update_flops": flops})
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    report = {
        "config": vars(args) | {"out": None}, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__, "n_params_non_embedding": n_params,
        "lora_trainable_params": sum(p.numel() for p in ppo.params),
        "reward_backbone_shares_policy_weights": bool(shared), "build_seconds": build_seconds,
        "matmul_flops_per_second": peak_rate,
        "step_seconds": med("step_seconds"), "rollout_seconds": med("rollout_seconds"),
        "score_seconds": med("score_seconds"), "update_seconds": med("update_seconds"),
        "generated_tokens_per_second": statistics.median(r["generated_tokens"] / r["rollout_seconds"] for r in rows),
        "step_tokens_per_second": statistics.median(r["generated_tokens"] / r["step_seconds"] for r in rows),
        "update_mfu": statistics.median(r["update_flops"] / r["update_seconds"] / peak_rate for r in rows),
        "mean_response_tokens": statistics.mean(r["generated_tokens"] for r in rows) / args.batch_size,
        "steps": rows,
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    report["peak_cpu_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    mem = f"{report['peak_gpu_memory_gb']:.1f} GB GPU" if "peak_gpu_memory_gb" in report else \
        f"{report['peak_cpu_rss_gb']:.2f} GB RSS"
    print(f"{args.size} on {report['device']}: {report['step_seconds']:.2f} s/step (rollout {report['rollout_seconds']:.2f}, "
          f"score {report['score_seconds']:.2f}, update {report['update_seconds']:.2f}); "
          f"{report['generated_tokens_per_second']:.0f} generated tok/s; peak {mem}; "
          f"update MFU {report['update_mfu']:.1%} of {peak_rate / 1e9:,.0f} GFLOP/s measured")
    out = Path(args.out) if args.out else \
        ROOT / "results" / "benchmarks" / f"tulu_7b_{report['device']}{'_tiny' if tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
