#!/usr/bin/env python
"""Reference benchmark: seconds per Nash-MD step with TRL 1.13's ``trl.experimental.nash_md.NashMDTrainer`` on CPU.

Everything is built locally (no model hub): the word-level tokenizer of ``trl112_ppo_step.py``, a tiny
GPT-2 policy (+ a copy as the reference) and a GPT-2 sequence classifier of the same size as the reward
model; TRL 1.13's Nash-MD turns it into P(y ≻ y') = σ(r(y) − r(y')).  One "step" is one
``training_step``: y from the policy (``generate``, KV cache), y' from ``GeometricMixtureWrapper`` (which
turns the cache off and re-runs both models on the whole sequence for every token), two reward forwards,
policy (with grad) and reference forwards, backward and one AdamW step.  Timed at every
``--response-length`` given (default 64 and 128).

Run it with the dedicated venv (see ``setup_trl113.sh``)::

    benchmarks/.venv-trl113/bin/python benchmarks/trl113_nash_md_step.py --warmup 1 --steps 4

One JSON object is printed on stdout at the end; TRL/transformers logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl112_ppo_step import build_tokenizer, build_words  # noqa: E402  (stdlib + torch only at import)


def run(a, response_length: int) -> dict:
    import datasets
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer
    import trl.experimental.nash_md.nash_md_trainer as nash_mod

    random.seed(a.seed)
    torch.manual_seed(a.seed)
    tok = build_tokenizer(a.vocab_size)
    words = build_words(a.vocab_size)
    prompts = [" ".join(random.choice(words) for _ in range(random.randint(2, 8))) for _ in range(a.num_prompts)]
    ds = datasets.Dataset.from_dict({"prompt": prompts})  # NashMD tokenizes "prompt" itself (adds <bos>)

    cfg = GPT2Config(n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, n_positions=max(128, 16 + response_length),
                     vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    policy = GPT2LMHeadModel(cfg)
    ref_policy = GPT2LMHeadModel(cfg)
    ref_policy.load_state_dict(policy.state_dict())
    for m in (policy, ref_policy):
        m.generation_config.pad_token_id = tok.pad_token_id
        m.generation_config.eos_token_id = tok.eos_token_id
        m.generation_config.bos_token_id = tok.bos_token_id
    reward_model = GPT2ForSequenceClassification(GPT2Config(**{**cfg.to_dict(), "num_labels": 1}))
    n_params = sum(t.numel() for t in policy.parameters())

    tmp = tempfile.TemporaryDirectory(prefix="trl113_nash_md_")
    args = NashMDConfig(
        output_dir=tmp.name,
        per_device_train_batch_size=a.batch_size,
        max_new_tokens=response_length,
        max_length=response_length + 64,
        temperature=1.0,
        beta=a.tau,  # TRL's beta is the KL coefficient τ
        mixture_coef=a.mixture_coef,  # the paper's β
        learning_rate=1e-3,
        missing_eos_penalty=None,
        max_steps=a.warmup + a.steps,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=a.seed,
        bf16=False,
        fp16=False,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    # --- instrumentation -------------------------------------------------------------------------
    step_ends: list[float] = []
    mix_times: list[float] = []
    mix_positions: list[int] = []  # batch x generated length (what the mixture actually computed)
    orig_generate = nash_mod.GeometricMixtureWrapper.generate

    def timed_generate(self, *args_, **kw):
        t = time.perf_counter()
        out = orig_generate(self, *args_, **kw)
        mix_times.append(time.perf_counter() - t)
        mix_positions.append(int(out.shape[0] * (out.shape[1] - kw["input_ids"].shape[1])))
        return out

    nash_mod.GeometricMixtureWrapper.generate = timed_generate

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

    with contextlib.redirect_stdout(sys.stderr):
        trainer = NashMDTrainer(model=policy, ref_model=ref_policy, reward_funcs=reward_model, args=args,
                                processing_class=tok, train_dataset=ds, callbacks=[StepTimer()])
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        trainer.train()
        train_total = time.perf_counter() - t0
    nash_mod.GeometricMixtureWrapper.generate = orig_generate
    tmp.cleanup()

    durs = [b - a_ for a_, b in zip(step_ends, step_ends[1:])]
    meas, mix = durs[a.warmup:], mix_times[a.warmup:]
    return {
        "seconds_per_step": statistics.median(meas),
        "seconds_per_step_min": min(meas),
        "seconds_per_step_all": [round(d, 4) for d in durs],
        "mixture_generation_seconds_per_step": statistics.median(mix),
        "mixture_generation_seconds_all": [round(d, 4) for d in mix_times],
        "mixture_tokens_per_second": sum(mix_positions[a.warmup:]) / sum(mix),
        "mean_mixture_generated_length": statistics.mean(p / a.batch_size for p in mix_positions[a.warmup:]),
        "train_total_seconds": train_total,
        # TrainingArguments.optim: "adamw_torch_fused" by default since torch 2.8 (what our --optim matches)
        "optimizer": {"optim": str(args.optim), "class": type(trainer.optimizer).__name__,
                      "fused": bool(trainer.optimizer.defaults.get("fused"))},
        # 1-min load average before/after train(): > --threads means other processes competed for the CPUs
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "steps_measured": len(meas),
        "response_length": response_length,
        "n_params": n_params,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="measured Nash-MD steps")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps (not measured)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--response-lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=250, help="number of words (4 special tokens are added)")
    p.add_argument("--mixture-coef", type=float, default=0.5, help="β, the reference's weight in the opponent")
    p.add_argument("--tau", type=float, default=0.1, help="KL coefficient τ (TRL's beta)")
    p.add_argument("--num-prompts", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    import datasets
    import transformers
    import trl

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    result = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": a.batch_size,
        "mixture_coef": a.mixture_coef,
        "tau": a.tau,
        "warmup_steps": a.warmup,
        "model": {"n_layer": a.n_layer, "n_embd": a.n_embd, "n_head": a.n_head, "vocab_size": a.vocab_size + 4},
        "by_length": {str(T): run(a, T) for T in a.response_lengths},
    }
    loads = [x for r in result["by_length"].values() for x in r["loadavg_1min_before_after"]]
    if max(loads) > a.threads + 0.5:
        print(f"WARNING: load average up to {max(loads)} > {a.threads} threads: other processes competed for the "
              "CPUs; step times are inflated (compare seconds_per_step_min).", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
