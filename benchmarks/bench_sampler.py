"""The shared sampler with finished rows leaving the batch vs the same sampler keeping every row to
the longest one's end (what it did before, and what ``generate`` does), on the GPT-2 stage's base
policy and real IMDb prompts (data/gpt2 after `dvc repro pretrain`), batch 256 as the KL
frontier's checkpoints sample: seconds for each and their ratio, measured in one run, and whether
the two drew the same tokens (one uniform per row and step from the same generator either way; a
smaller batch may round its matmuls differently, which could flip a token only when a uniform
falls within rounding of a CDF boundary).  β = 0 (PPO's rollouts, the checkpoints) and β = 0.125
(Nash-MD's opponent, the base policy mixed with a perturbed copy of itself).  And ``lm.sample`` (the
base policy's answers, the label stage's pairs) on this sampler against ``model.generate``, which it
used before: other draws from the same distribution, so the check there is the answers' mean length
and stop rate, not token equality.

    python benchmarks/bench_sampler.py [--prompts 2000] [--threads 1]   → results/benchmarks/sampler.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from pluralign import lm  # noqa: E402
from pluralign.ppo import fused_gelu  # noqa: E402
from pluralign.sampling import mixture_sample  # noqa: E402


def run(policy, ref, tok, prompts, beta, compact: bool, max_new_tokens: int, temperature: float):
    gen = torch.Generator().manual_seed(0)
    ids_all, drawn_all = [], []
    t = time.perf_counter()
    for i in range(0, len(prompts), 256):
        q, m = lm.encode_prompts(tok, prompts[i:i + 256])
        out = mixture_sample(policy, ref, q, m, beta, max_new_tokens, tok.eos_token_id, tok.pad_token_id, temperature,
                             gen, return_token_logprobs=True, drop_finished=compact)
        ids, mask, drawn = out
        ids_all.append(ids.masked_fill(~mask, -1))
        drawn_all.append(drawn)
    dt = time.perf_counter() - t
    width = max(x.shape[1] for x in ids_all)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, width - x.shape[1]), value=v)  # noqa: E731
    return dt, torch.cat([pad(x, -1) for x in ids_all]), torch.cat([pad(x, 0.0) for x in drawn_all])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "sampler.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = ROOT / "data" / "gpt2" / "base_policy"
    if not base.exists():
        raise SystemExit(f"no base policy at {base}: run `dvc repro pretrain` first")
    import yaml

    g = yaml.safe_load((ROOT / "params.yaml").read_text())["gpt2"]
    tok = lm.load_tokenizer(str(base))
    policy = fused_gelu(lm.load_causal_lm(str(base), tok))
    other = copy.deepcopy(policy)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in other.parameters():
            p.add_(0.05 * p.std() * torch.randn_like(p))
    prompts = (ROOT / "data" / "gpt2" / "corpus" / "prompts_train.txt").read_text().splitlines()[:a.prompts]
    rows = {}
    for beta in (0.0, 0.125):
        ref = other if beta > 0 else policy
        t_full, ids_full, lp_full = run(policy, ref, tok, prompts, beta, False, g["max_new_tokens"], g["temperature"])
        t_comp, ids_comp, lp_comp = run(policy, ref, tok, prompts, beta, True, g["max_new_tokens"], g["temperature"])
        same = (ids_full == ids_comp).all(1)
        rows[f"beta={beta}"] = {"full_batch_s": round(t_full, 3), "finished_rows_leave_s": round(t_comp, 3),
                                "ratio": round(t_comp / t_full, 3), "answers_identical": float(same.float().mean()),
                                "max_abs_logprob_diff": float((lp_full - lp_comp)[same].abs().max()),
                                "mean_answer_tokens": float((ids_comp >= 0).sum(1).float().mean())}
        print(f"β = {beta}: full batch {t_full:.2f} s, finished rows leave {t_comp:.2f} s → {t_comp / t_full:.2f}×; "
              f"identical answers {same.float().mean():.4f}, max |Δ log p| {rows[f'beta={beta}']['max_abs_logprob_diff']:.1e}")
    # lm.sample: the shared sampler (CPU, top-p 1) vs generate's multinomial (its path before; still
    # the path for top-p and on GPUs), batch 256, the label stage's settings
    t = time.perf_counter()
    texts, info = lm.sample(policy, tok, prompts, g["max_new_tokens"], temperature=g["temperature"], seed=0, return_info=True)
    t_own = time.perf_counter() - t
    torch.manual_seed(0)
    t = time.perf_counter()
    lengths, stopped = [], []
    for i in range(0, len(prompts), 256):
        q, m = lm.encode_prompts(tok, prompts[i:i + 256])
        new = policy.generate(input_ids=q, attention_mask=m, do_sample=True, temperature=g["temperature"], top_p=1.0,
                              top_k=0, max_new_tokens=g["max_new_tokens"], pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)[:, q.shape[1]:]
        is_eos = new == tok.eos_token_id
        stopped.append(is_eos.any(1))
        lengths.append(torch.where(stopped[-1], is_eos.int().argmax(1), new.shape[1]))
    t_gen = time.perf_counter() - t
    lengths, stopped = torch.cat(lengths).float(), torch.cat(stopped).float()
    rows["lm.sample"] = {"generate_s": round(t_gen, 3), "shared_sampler_s": round(t_own, 3), "ratio": round(t_own / t_gen, 3),
                         "mean_tokens": {"generate": round(float(lengths.mean()), 2),
                                         "shared_sampler": round(float(info["new_tokens"].float().mean()), 2)},
                         "stopped_fraction": {"generate": round(float(stopped.mean()), 4),
                                              "shared_sampler": round(float(info["stopped"].float().mean()), 4)}}
    print(f"lm.sample: generate {t_gen:.2f} s, shared sampler {t_own:.2f} s → {t_own / t_gen:.2f}×; mean tokens "
          f"{lengths.mean():.2f} vs {info['new_tokens'].float().mean():.2f}, stopped {stopped.mean():.3f} vs "
          f"{info['stopped'].float().mean():.3f}")
    result = {"benchmark": "sampler", "prompts": len(prompts), "batch_size": 256, "threads": a.threads,
              "max_new_tokens": g["max_new_tokens"], "temperature": g["temperature"],
              "cpu": platform.processor() or platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "note": "base policy of this checkout's pretrain stage; β=0.125 mixes it with a perturbed copy; lm.sample: other draws from one distribution, compared by length and stop rate",
              "results": rows}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
