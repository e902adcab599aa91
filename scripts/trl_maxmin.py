#!/usr/bin/env python
"""MaxMin-RLHF through TRL's maintained online trainers: ``GRPOTrainer`` or ``RLOOTrainer`` with
:class:`pluralign.trl_rewards.MaxMinReward` as the one reward function.

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml scripts/trl_maxmin.py \\
        --trainer grpo --base allenai/tulu-2-7b --rewards RM0 RM1 --prompts alpaca.json --out DIR \\
        --bf16 --lora-r 16 --use-vllm            # the README's 7B recipe
    python scripts/trl_maxmin.py --trainer grpo --base TINY --rewards RM0 RM1 --prompts P --out DIR --cpu

Everything distributed is TRL's and accelerate's (the launch config picks one process, DDP, FSDP2 or
DeepSpeed ZeRO); this script only builds the reward and the dataset.  The reward: K LoRA reward
adapters (one per group, as the Tulu2 stages train them) on their base, each process holding a
frozen copy on its device; standardised on the first generation batch (the initial policy's
completions, all processes' together) and combined by ``--rule`` over the global batch (argmin:
the worst-off group drives every completion of the batch; the group picked is logged as
``maxmin_<rule>/picked_group``).  The policy: ``--base`` loaded by TRL (``model_init_kwargs``), a
LoRA adapter with ``--lora-r`` (0: full fine-tuning); TRL's reference is the adapter-disabled base
(LoRA) or its own frozen copy.  Generation: ``generate`` by default, vLLM with ``--use-vllm``
(``--vllm-mode colocate``: inside each training process; ``server``: a ``trl vllm-serve`` process
on other GPUs).

Prompts: the questions of ``--prompts`` (alpaca-style JSON, as scripts/tulu2_ppo.py reads them) in
the Tulu template (``--prompt-style tulu``), the base's chat template (``chat``) or as they are.
Writes the policy (``trainer.save_model``: the adapter, or the full model; gathered from the
shards under FSDP) and ``DIR/maxmin.json`` (the groups picked, the per-group means, the
standardisation and TRL's log history).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from pluralign import lm, lora, soups, tulu_data  # noqa: E402
from pluralign.maxmin_ppo import RULES  # noqa: E402
from pluralign.trl_rewards import MaxMinReward  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STYLES = ("tulu", "chat", "plain")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainer", choices=("grpo", "rloo"), default="grpo")
    ap.add_argument("--base", required=True, help="policy base: local path or hub id")
    ap.add_argument("--reward-base", default=None, help="base of the reward adapters if not --base")
    ap.add_argument("--rewards", nargs="+", required=True, help="reward adapter folders, one per group")
    ap.add_argument("--rule", choices=RULES, default="argmin")
    ap.add_argument("--prompts", required=True, help="alpaca-style prompts: path or http(s) URL")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--prompt-style", choices=STYLES, default="tulu")
    ap.add_argument("--n-prompts", type=int, default=0, help="the first N questions; 0: all")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lora-r", type=int, default=16, help="policy LoRA rank; 0: full fine-tuning")
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps (TRL's max_steps)")
    ap.add_argument("--per-device-batch", type=int, default=8, help="completions per process per step")
    ap.add_argument("--num-generations", type=int, default=8, help="completions per prompt (the group size)")
    ap.add_argument("--max-completion-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.05, help="KL coefficient to the reference")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--bf16", action="store_true", help="bf16 weights and mixed precision (GPU)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--use-vllm", action="store_true", help="generate with vLLM (pip install vllm; GPU)")
    ap.add_argument("--vllm-mode", choices=("colocate", "server"), default="colocate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)
    for name in ("steps", "per_device_batch", "num_generations", "max_completion_length"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lora_r < 0:
        ap.error(f"--lora-r must be >= 0, got {args.lora_r}")
    if args.rule == "single" and len(args.rewards) != 1:
        ap.error(f"rule 'single' takes one reward model, got {len(args.rewards)}")
    if args.bf16:
        args.dtype = "bfloat16"
    return args


def main(argv=None):
    args = parse(argv)
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    device = PartialState(cpu=args.cpu).device
    dtype = DTYPES[args.dtype]
    policy_tok = AutoTokenizer.from_pretrained(args.base)  # TRL pads with eos where it has no pad token
    questions = soups.load_questions(args.prompts, args.cache_dir, limit=args.n_prompts or None)
    prompts = (questions if args.prompt_style == "plain"
               else tulu_data.format_prompts(questions, args.prompt_style, policy_tok))
    # the reward models read prompt + completion with their own tokenizer (a pad token distinct from eos)
    reward_base = args.reward_base or args.base
    reward_tok = lm.load_tokenizer(reward_base)
    views = lora.load_reward_adapters(reward_base, reward_tok, args.rewards, dtype=dtype)
    views[0].model.to(device)  # the K adapters share one frozen base
    reward = MaxMinReward(views, reward_tok, rule=args.rule, standardise="first_batch")

    Config, Trainer = (GRPOConfig, GRPOTrainer) if args.trainer == "grpo" else (RLOOConfig, RLOOTrainer)
    config = Config(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.per_device_batch,
                    num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                    learning_rate=args.lr, beta=args.beta, temperature=args.temperature, bf16=args.bf16,
                    gradient_checkpointing=args.gradient_checkpointing, use_vllm=args.use_vllm,
                    vllm_mode=args.vllm_mode, model_init_kwargs={"dtype": dtype}, logging_steps=1,
                    report_to="none", save_strategy="no", seed=args.seed, use_cpu=args.cpu, disable_tqdm=True)
    peft_config = lora.policy_lora_config(args.lora_r, args.lora_alpha) if args.lora_r else None
    trainer = Trainer(model=args.base, reward_funcs=[reward], args=config, processing_class=policy_tok,
                      train_dataset=Dataset.from_dict({"prompt": prompts}), peft_config=peft_config)
    trainer.train()
    if trainer.is_fsdp_enabled:  # one whole checkpoint rather than one shard per process
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(Path(args.out) / "policy"))
    if trainer.accelerator.is_main_process:
        record = {"trainer": args.trainer, "rule": args.rule, "rewards": args.rewards, "picked": reward.picked,
                  "group_means": reward.group_means, "reward_mean": reward.rewards.mean.tolist(),
                  "reward_std": reward.rewards.std.tolist(), "processes": trainer.accelerator.num_processes,
                  "distributed_type": str(trainer.accelerator.distributed_type),
                  "log_history": trainer.state.log_history}
        (Path(args.out) / "maxmin.json").write_text(json.dumps(record, indent=1) + "\n")
    return trainer, reward


if __name__ == "__main__":
    main()
