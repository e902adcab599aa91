#!/usr/bin/env python
"""Reference benchmark: seconds per PPO step with TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` on CPU.

Everything is built locally (no model hub): a word-level tokenizer made with ``tokenizers``, a tiny
GPT-2 policy (+ a copy as the reference policy) and a GPT-2 sequence classifier of the same size used
as both reward model and value model (two separate instances). One "step" is one TRL PPO update: a
rollout of ``--batch-size`` queries (generation + ref/value/reward forwards) followed by
``num_ppo_epochs x num_mini_batches`` optimisation steps.

Run it with the dedicated venv (see ``setup_trl112.sh``)::

    benchmarks/.venv-trl112/bin/python benchmarks/trl112_ppo_step.py --warmup 2 --steps 8

A single JSON object is printed on stdout at the end; TRL/transformers logs go to stderr.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

# ~250 simple words; if --vocab-size asks for more, synthetic words "w<N>" are appended.
BASE_WORDS = """
the a an and or but if then so because of to in on at by for with from up down out over under
again once here there when where why how all any both each few more most other some such no not
only own same than too very can will just now i you he she it we they me him her us them my your
his its our their this that these those is are was were be been being have has had do does did
go goes went make made take took see saw come came know knew get got give gave find found think
thought tell told ask asked work worked seem feel felt try left call good new first last long great
little old big high small large next early young important few public bad able red blue green black
white day time year way thing man woman child world life hand part eye place week case point number
group problem fact cat dog bird fish tree house car road city river sun moon star sky water fire
earth wind rain snow book door window table chair bed cup food bread milk apple game ball song music
word name friend family mother father school room home night morning money story idea love happy sad
fast slow hot cold warm soft hard light dark open close run walk jump read write play sing eat drink
sleep help start stop turn move live bring hold stand sit talk look watch hear keep let begin show
""".split()


def build_words(n_words: int) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    for w in BASE_WORDS:
        if w not in seen:
            seen.add(w)
            words.append(w)
    words = words[:n_words]
    i = 0
    while len(words) < n_words:
        words.append(f"w{i}")
        i += 1
    return words


def build_tokenizer(n_words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + build_words(n_words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
    )
    return tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="measured PPO steps")
    p.add_argument("--warmup", type=int, default=2, help="warm-up PPO steps (not measured)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=250, help="number of words (4 special tokens are added)")
    p.add_argument("--num-mini-batches", type=int, default=4)
    p.add_argument("--num-ppo-epochs", type=int, default=4)
    p.add_argument("--num-prompts", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    torch.manual_seed(a.seed)

    import datasets
    import transformers
    import trl
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    import trl.experimental.ppo.ppo_trainer as ppo_mod

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    tok = build_tokenizer(a.vocab_size)
    assert tok.pad_token_id != tok.eos_token_id, "TRL PPO masks on pad: pad must differ from eos"
    words = build_words(a.vocab_size)

    # prompts: 2..8 random words, tokenized (no special tokens), column `input_ids`
    prompts = [" ".join(random.choice(words) for _ in range(random.randint(2, 8))) for _ in range(a.num_prompts)]
    ds = datasets.Dataset.from_dict({"prompt": prompts})
    ds = ds.map(lambda b: {"input_ids": tok(b["prompt"], add_special_tokens=False)["input_ids"]},
                batched=True, remove_columns=["prompt"])

    n_positions = max(128, 8 + a.response_length + 8)
    cfg = GPT2Config(
        n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, n_positions=n_positions,
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    policy = GPT2LMHeadModel(cfg)
    ref_policy = GPT2LMHeadModel(cfg)
    ref_policy.load_state_dict(policy.state_dict())
    policy.generation_config.pad_token_id = tok.pad_token_id
    policy.generation_config.eos_token_id = tok.eos_token_id
    policy.generation_config.bos_token_id = tok.bos_token_id
    rm_cfg = GPT2Config(**{**cfg.to_dict(), "num_labels": 1})
    rm_cfg.num_labels = 1
    reward_model = GPT2ForSequenceClassification(rm_cfg)
    value_model = GPT2ForSequenceClassification(rm_cfg)
    # TRL's get_reward()/PolicyAndValueWrapper use getattr(model, model.base_model_prefix) and model.score
    for m in (reward_model, value_model):
        assert hasattr(m, m.base_model_prefix) and hasattr(m, "score")
    n_params = sum(t.numel() for t in policy.parameters())

    total_steps = a.warmup + a.steps
    tmp = tempfile.TemporaryDirectory(prefix="trl112_ppo_")
    args = PPOConfig(
        output_dir=tmp.name,
        per_device_train_batch_size=a.batch_size,
        local_rollout_forward_batch_size=a.batch_size,
        num_mini_batches=a.num_mini_batches,
        num_ppo_epochs=a.num_ppo_epochs,
        response_length=a.response_length,
        temperature=1.0,
        kl_coef=0.05,
        cliprange=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        learning_rate=1e-3,
        stop_token="eos",
        missing_eos_penalty=None,
        total_episodes=a.batch_size * total_steps,
        report_to="none",
        num_sample_generations=0,
        save_strategy="no",
        use_cpu=True,
        seed=a.seed,
        bf16=False,
        fp16=False,
        logging_steps=1,
        disable_tqdm=True,
    )

    # --- instrumentation -------------------------------------------------------------------------
    step_ends: list[float] = []
    gen_times: list[float] = []
    gen_tokens: list[int] = []  # tokens up to and including the first eos, per rollout
    gen_positions: list[int] = []  # batch x generated length (what the decoder actually computed)
    orig_batch_generation = ppo_mod.batch_generation

    def timed_batch_generation(model, queries, local_bs, pad_token_id, generation_config):
        t = time.perf_counter()
        qr, logits = orig_batch_generation(model, queries, local_bs, pad_token_id, generation_config)
        gen_times.append(time.perf_counter() - t)
        resp = qr[:, queries.shape[1]:]
        gen_positions.append(int(resp.numel()))
        is_eos = resp == tok.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(is_eos[:, 0], resp.shape[1], dtype=torch.long))
        gen_tokens.append(int(first.sum()))
        return qr, logits

    ppo_mod.batch_generation = timed_batch_generation

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

    with contextlib.redirect_stdout(sys.stderr):
        trainer = PPOTrainer(
            args=args,
            processing_class=tok,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            train_dataset=ds,
            value_model=value_model,
            callbacks=[StepTimer()],
        )
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        trainer.train()
        train_total = time.perf_counter() - t0

    durs = [b - a_ for a_, b in zip(step_ends, step_ends[1:])]
    meas = durs[a.warmup:]
    mg = gen_times[a.warmup:]
    result = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": statistics.median(meas) if meas else None,
        "seconds_per_step_mean": statistics.mean(meas) if meas else None,
        "seconds_per_step_min": min(meas) if meas else None,
        "seconds_per_step_all": [round(d, 4) for d in durs],
        "generation_seconds_per_step": statistics.median(mg) if mg else None,
        "generation_tokens_per_second": (sum(gen_positions[a.warmup:]) / sum(mg)) if mg else None,
        "generation_tokens_per_second_until_eos": (sum(gen_tokens[a.warmup:]) / sum(mg)) if mg else None,
        "mean_generated_length": (statistics.mean(g / a.batch_size for g in gen_positions[a.warmup:])) if mg else None,
        "train_total_seconds": train_total,
        # TrainingArguments.optim: "adamw_torch_fused" by default since torch 2.8 (what our --optim matches)
        "optimizer": {"optim": str(args.optim), "class": type(trainer.optimizer).__name__,
                      "fused": bool(trainer.optimizer.defaults.get("fused"))},
        # 1-min load average before/after train(): > --threads means other processes competed for the CPUs
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "steps_measured": len(meas),
        "warmup_steps": a.warmup,
        "batch_size": a.batch_size,
        "response_length": a.response_length,
        "num_mini_batches": a.num_mini_batches,
        "num_ppo_epochs": a.num_ppo_epochs,
        "model": {
            "n_layer": a.n_layer,
            "n_embd": a.n_embd,
            "n_head": a.n_head,
            "vocab_size": len(tok),
            "n_params": n_params,
        },
    }
    tmp.cleanup()
    if max(result["loadavg_1min_before_after"]) > a.threads + 0.5:
        print(f"WARNING: load average {result['loadavg_1min_before_after']} > {a.threads} threads: other processes "
              "competed for the CPUs; step times are inflated (compare seconds_per_step_min).", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
