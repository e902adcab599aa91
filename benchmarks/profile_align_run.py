"""Where one align-stage run spends its time, on the recorded inputs (data/gpt2 after `dvc repro
reward`): one checkpoint evaluation (the base policy answering the 500 test prompts, with its
KL), then one final PPO run (method and ratio as given) under cProfile on one thread, as
lmruns.run_all's workers run it.  Prints seconds per phase; no targets (a profiling aid).

    python benchmarks/profile_align_run.py [--method maxmin] [--ratio 10] [--steps 40] [--keep-finished]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from pluralign import frontier, lm, lmruns  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="maxmin")
    ap.add_argument("--ratio", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep-finished", action="store_true",
                    help="the sampler keeps finished rows in the batch (its behaviour before drop_finished)")
    a = ap.parse_args()
    if a.keep_finished:
        import functools

        from pluralign import nash_md_lm, ppo, sampling

        keep = functools.partial(sampling.mixture_sample, drop_finished=False)
        ppo.mixture_sample = nash_md_lm.mixture_sample = keep
    torch.set_num_threads(1)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    g, al = params["gpt2"], params["align"]
    inputs = ROOT / "data" / "gpt2"
    base = str(inputs / "base_policy")
    tok = lm.load_tokenizer(base)
    all_prompts = (inputs / "corpus" / "prompts_train.txt").read_text().splitlines()
    prompts, val = all_prompts[:-al["n_val_prompts"]], all_prompts[-al["n_val_prompts"]:]
    eval_prompts = (inputs / "corpus" / "prompts_test.txt").read_text().splitlines()[:al["n_eval_prompts"]]
    policy = lm.load_causal_lm(base, tok)
    T = g["max_new_tokens"]
    t = time.perf_counter()
    texts, kl = frontier.sample_with_kl(policy, policy, tok, eval_prompts, T, g["temperature"], al["top_p"],
                                        seed=al["eval_seed"])
    lengths = [len(tok(x)["input_ids"]) for x in texts]
    print(f"checkpoint evaluation (base policy, {len(texts)} prompts): {time.perf_counter() - t:.2f} s; "
          f"mean answer {sum(lengths) / len(lengths):.1f} tokens, max {max(lengths)}")
    calib_prompts = prompts[:al["n_standardise"]]
    calib = [" " + x for x in lm.sample(policy, tok, calib_prompts, T, temperature=g["temperature"], seed=12345)]
    ppo = {k: al[k] for k in ("batch_size", "mini_batch_size", "ppo_epochs", "kl_coef", "kl_target", "kl_horizon", "top_p",
                              "lr_schedule", "whiten_rewards", "vf_coef", "cliprange", "gamma", "lam", "optim")}
    ppo.update(max_new_tokens=T, temperature=g["temperature"])
    steps = a.steps or al["steps"]
    ctx = dict(base=base, profile=g["profile"], classifier=str(inputs / "sentiment_classifier"),
               sentiment_model=g["sentiment_model"], max_new_tokens=T, temperature=g["temperature"], prompts=prompts,
               val_prompts=val, eval_prompts=eval_prompts, eval_steps=[s for s in al["eval_steps"] if s <= steps],
               eval_seed=al["eval_seed"], steps=steps, ppo=ppo, rewards_dir=str(inputs / "reward_models"),
               calibration=(calib_prompts, calib))
    spec = {"kind": "ppo", "method": a.method, "ratio": a.ratio, "seed": 0, "lr": 1e-3, "role": "final", "out": None}
    lmruns.judges(ctx["profile"], base, T, ctx["classifier"], ctx["sentiment_model"])  # loaded outside the profile
    lmruns._group_rewards(ctx, a.ratio, lmruns.PPO_SOURCES[a.method][0])
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    res = lmruns.run(ctx, spec)
    prof.disable()
    print(f"one {a.method} run at {a.ratio}:1, {steps} iterations: {time.perf_counter() - t:.1f} s; "
          f"final KL {res['history'][-1]['kl']:.2f}, answer length {res['history'][-1]['response_length']:.1f}")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()
