"""Validation of each stage's params.yaml section: one clear line naming the key and value.

lib never reads params.yaml itself; the stage runner passes the section here as a dict.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

__all__ = ["ParamError", "validate", "SCHEMAS"]


class ParamError(ValueError):
    """A bad parameter value; ``str(err)`` is the one line to show the user."""


Rule = Callable[[Any], str | None]
SOUPS_DIMENSIONS = ("P1A", "P1B", "P2A", "P2B", "P3A", "P3B", "P3C", "P3D")  # the RLPHF files (soups.DIMENSIONS)
TEXT_DIMENSIONS = ("P1A", "P1B", "P2A", "P2B")  # those with a text rule (tulu_data.trait): readability, length
ALIGN_METHODS = ("single", "maxmin", "sample_min", "mean", "maxmin_oracle")  # returns the complaint, or None when the value is fine


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    def rule(x):
        if not isinstance(x, int) or isinstance(x, bool):
            return "must be an integer"
        if lo is not None and x < lo:
            return f"must be >= {lo}"
        if hi is not None and x > hi:
            return f"must be <= {hi}"
    return rule


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Rule:
    def rule(x):
        if not _num(x):
            return "must be a finite number"
        if lo is not None and (x <= lo if lo_open else x < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and x > hi:
            return f"must be <= {hi}"
    return rule


positive = number(0, lo_open=True)


def boolean(x):
    return None if isinstance(x, bool) else "must be true or false"


def one_of(*choices) -> Rule:
    return lambda x: None if x in choices else f"must be one of {list(choices)}"


def list_of(item: Rule, min_len: int = 1) -> Rule:
    def rule(x):
        if not isinstance(x, list) or len(x) < min_len:
            return f"must be a list of at least {min_len} value(s)"
        for v in x:
            bad = item(v)
            if bad:
                return f"has entry {v!r} that {bad}"
    return rule


def shares(x):
    """Group shares: a list of positive numbers summing to 1."""
    if not isinstance(x, list) or not x or not all(_num(v) for v in x):
        return "must be a list of numbers"
    if any(v <= 0 for v in x):
        return "must all be > 0"
    if abs(sum(x) - 1.0) > 1e-6:
        return f"must sum to 1 (sums to {sum(x):.6g})"


SEED_MAX = 2**32 - 1  # numpy's seeds stop here; torch's go further
share = number(0.0, 0.5, lo_open=True)  # a minority's share: in (0, 0.5]

def seeds_for_intervals(x):
    """Training seeds of one method: at least 2 distinct ones (every win rate carries an interval
    over seeds; one run says nothing about the next)."""
    bad = list_of(integer(0, SEED_MAX))(x)
    if bad:
        return bad
    if len(set(x)) < 2:
        return "must list at least 2 distinct seeds (each win rate gets a 95% interval over seeds and prompts)"


def lr_grid(x):
    bad = list_of(positive)(x)
    if bad:
        return "must be a non-empty list of learning rates > 0" if not isinstance(x, list) or not x else bad
    if len(set(x)) != len(x):
        return "must not repeat a value"


def eval_steps(x):
    """Checkpoint iterations: a non-empty, strictly increasing list of integers >= 1 (each at most
    ``steps``: a cross check)."""
    bad = list_of(integer(1, 10**9))(x)
    if bad:
        return bad
    if any(b <= a for a, b in zip(x, x[1:])):
        return "must be strictly increasing"


def optional(rule: Rule, what: str) -> Rule:
    return lambda x: None if x is None or rule(x) is None else f"must be {what}"


def optional_text(x):
    return None if isinstance(x, str) else "must be a string (empty for none)"


def text(x):
    return None if isinstance(x, str) and x.strip() else "must be a non-empty string"


SCHEMAS: dict[str, dict[str, Rule]] = {
    # shared by every GPT-2 stage (passed with --also gpt2)
    "gpt2": {
        "profile": one_of("cpu", "paper"),
        "base_model": text,
        "imdb": text,
        "sentiment_model": text,
        "raw_dir": text,
        "max_new_tokens": integer(1, 512),
        "temperature": positive,
    },
    "corpus": {
        "seed": integer(0, SEED_MAX),
        "n_reviews": integer(10, 1_000_000),
        "n_val_reviews": integer(1, 100_000),
        "n_prompts_train": integer(1, 1_000_000),
        "n_prompts_test": integer(1, 100_000),
        "classifier_reviews": integer(100, 1_000_000),
        "n_test_reviews": integer(10, 1_000_000),
    },
    "pretrain": {
        "seed": integer(0, SEED_MAX),
        "vocab_size": integer(260, 1_000_000),    # 4 special tokens + 256 bytes at least
        "passage_sentences": integer(0, 10_000),  # 0 = whole reviews
        "n_layer": integer(1, 96),
        "n_embd": integer(8, 16_384),
        "n_head": integer(1, 256),
        "block_size": integer(8, 32_768),
        "batch_size": integer(1, 4096),
        "steps": integer(1, 10_000_000),
        "lr": positive,
        "dropout": number(0.0, 1.0),
        "bf16": boolean,
        "n_samples": integer(1, 1_000_000),
    },
    "label": {
        "seed": integer(0, SEED_MAX),
        "ratios": list_of(number(0.0, lo_open=True)),
        "n_train_users": integer(2, 100_000),
        "n_test_users": integer(2, 100_000),
        "test_fraction": number(0.0, 1.0, lo_open=True),
        "bt_temperature": positive,
    },
    "reward": {
        "seed": integer(0, SEED_MAX),
        "ratios": list_of(number(0.0, lo_open=True)),
        "K": integer(1, 64),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1, 4096),
        "em_iterations": integer(1, 1000),
        "em_init": one_of("split+round_robin", "split", "round_robin", "mixed"),
        "em_restarts": integer(1, 100),
        "oracle_ratios": list_of(number(0.0, lo_open=True), min_len=0),
        "workers": integer(1, 256),
        "threads": integer(1, 256),
    },
    "align": {
        "ratios": list_of(number(0.0, lo_open=True)),
        "seeds": seeds_for_intervals,
        "variant_seeds": seeds_for_intervals,
        "sweep_seeds": seeds_for_intervals,
        "methods": list_of(one_of(*ALIGN_METHODS)),
        "headline_ratio": number(0.0, lo_open=True),
        "headline_methods": list_of(one_of(*ALIGN_METHODS), min_len=0),
        "steps": integer(1, 1_000_000),
        "batch_size": integer(1, 4096),
        "mini_batch_size": integer(1, 4096),
        "ppo_epochs": integer(1, 100),
        "lr_grid": lr_grid,
        "tune_seed": integer(0, SEED_MAX),
        "n_val_prompts": integer(1, 1_000_000),
        "kl_coef": number(0.0),
        "kl_target": optional(positive, "null (fixed beta) or a number > 0"),
        "kl_horizon": integer(1, 10**12),
        "top_p": number(0.0, 1.0, lo_open=True),
        "lr_schedule": one_of("constant", "cosine", "linear"),
        "whiten_rewards": boolean,
        "vf_coef": number(0.0),
        "cliprange": positive,
        "gamma": number(0.0, 1.0),
        "lam": number(0.0, 1.0),
        "n_standardise": integer(2, 1_000_000),
        "eval_steps": eval_steps,
        "n_eval_prompts": integer(2, 1_000_000),
        "eval_seed": integer(0, SEED_MAX),
        "workers": integer(1, 256),
        "optim": one_of("adamw_torch", "adamw_torch_fused"),
    },
    "evaluate": {
        "n_boot": integer(100, 1_000_000),
        "seed": integer(0, SEED_MAX),
    },
    "preference": {
        "seed": integer(0, SEED_MAX),
        "ratio": number(0.0, lo_open=True),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1, 4096),
    },
    "impossibility": {
        "seed": integer(0, SEED_MAX),
        "n_items": integer(3, 100_000),
        "beta": positive,
        "reward_scale": positive,
        "minority_shares": list_of(share),
        "angles_deg": list_of(number(0.0, 180.0)),
        "headline_share": share,
        "headline_angle_deg": number(0.0, 180.0),
        "three_group_shares": shares,
        "maxmin_steps": integer(1, 10_000_000),
    },
    "em_clusters": {
        "seed": integer(0, SEED_MAX),
        "n_items": integer(2, 1_000_000),
        "d": integer(1, 10_000),
        "K": integer(1, 64),
        "shares": shares,
        "n_users": integer(2, 1_000_000),
        "per_user": integer(1, 1_000_000),
        "separation": number(0.0, 1.0),
        "reward_scale": positive,
        "l2": number(0.0),
        "n_init": integer(1, 1000),
        "init": one_of("mixed", "round_robin", "random"),
        "max_iter": integer(1, 100_000),
        "soft": boolean,
        "sweep_per_user": list_of(integer(1, 1_000_000)),
        "sweep_separation": list_of(number(0.0, 1.0)),
        "sweep_K": list_of(integer(1, 64)),
        "n_reps": integer(1, 1000),
    },
    "nash_md": {
        "seed": integer(0, SEED_MAX),
        "n_actions": integer(2, 100_000),
        "tau": positive,
        "T": integer(1, 10_000_000),
        "constant_eta": positive,
        "n_random": integer(1, 1000),
        "eps_grid": list_of(number(-2 / 3, 1 / 3)),  # games.three_annotators: every share >= 0
    },
    "compare": {
        "betas": list_of(number(0.0, 1.0)),
        "bt_betas": list_of(number(0.0, 1.0), min_len=0),
        "tau": positive,
        "tune_beta": number(0.0, 1.0),
        "nash_seeds": seeds_for_intervals,
        "n_boot": integer(100, 1_000_000),
        "seed": integer(0, SEED_MAX),
    },
    "tulu2": {
        "profile": one_of("cpu", "small", "paper"),
        "base_model": text,
        "raw_data": text,
        "pairs": one_of("alpaca_eval", "soups"),
        "soups_path": optional_text,
        "soups_pattern": text,
        "ppo_prompts": optional_text,
        "eval_prompts": optional_text,
        "majority": one_of(*SOUPS_DIMENSIONS),
        "minority": one_of(*SOUPS_DIMENSIONS),
        "max_new_tokens": integer(1, 8192),
        "temperature": positive,
        "dtype": one_of("float32", "bfloat16"),
        "load_in_bits": one_of(None, 4, 8),
        "accelerate_config": text,
        "judge": one_of("rule", "transformers", "openai"),
        "judge_model": optional_text,
    },
    "tulu_reward": {
        "seed": integer(0, SEED_MAX),
        "ratio": number(0.0, lo_open=True),
        "n_users": integer(2, 100_000),
        "test_fraction": number(0.0, 1.0, lo_open=True),
        "n_pairs": integer(0, 10_000_000),          # 0 = every pair
        "bt_temperature": positive,
        "n_ppo_prompts": integer(0, 10_000_000),    # 0 = every Alpaca instruction
        "ppo_prompt_max_chars": integer(0, 1_000_000),  # 0 = any length
        "K": integer(1, 64),
        "reward_training": one_of("lora", "head"),
        "head_l2": number(0.0),
        "lora_r": integer(1, 1024),
        "lora_alpha": positive,
        "lora_dropout": number(0.0, 1.0),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1, 4096),
        "max_length": integer(8, 131_072),
        "em_iterations": integer(1, 1000),
        "vocab_size": integer(264, 1_000_000),      # 4 special tokens + 256 bytes + merges
        "base_hidden": integer(8, 16_384),
        "base_layers": integer(1, 256),
        "pretrain_steps": integer(1, 10_000_000),
        "min_steps": integer(0, 10_000_000),
    },
    "tulu_align": {
        "seeds": seeds_for_intervals,                   # one policy per method and seed (scripts/tulu2_ppo.py --seed)
        "methods": list_of(one_of("single", "maxmin", "maxmin_oracle")),
        "steps": integer(1, 1_000_000),
        "batch_size": integer(1, 4096),           # per process
        "mini_batch_size": integer(1, 4096),
        "ppo_epochs": integer(1, 100),
        "lr": positive,
        "kl_coef": number(0.0),
        "kl_target": optional(positive, "null (fixed beta) or a number > 0"),
        "kl_horizon": integer(1, 10**12),
        "lr_schedule": one_of("constant", "cosine", "linear"),
        "top_p": number(0.0, 1.0, lo_open=True),
        "n_standardise": integer(2, 1_000_000),        # base-policy samples per process for the reward z-scores
        "n_prompts": integer(0, 10_000_000),            # 0 = every prompt in the file
        "lora_r": integer(1, 1024),
        "lora_alpha": positive,
        "gradient_checkpointing": boolean,
        "n_boot": integer(100, 1_000_000),
        "optim": one_of("adamw_torch", "adamw_torch_fused"),
    },
    "condorcet": {
        "seed": integer(0, SEED_MAX),
        "scale": positive,
        "beta": positive,
        "first_shares": list_of(number(0.0, 1.0, lo_open=True)),
        "T": integer(1, 10_000_000),
        "dynamics_tau": positive,
        "dynamics_eta": positive,
    },
}


def _cross_checks(stage: str, p: dict) -> tuple[str, Any, str] | None:
    if stage == "em_clusters":
        if len(p["shares"]) != p["K"]:
            return "shares", p["shares"], f"must have K={p['K']} entries"
        if p["K"] > p["n_users"]:
            return "K", p["K"], f"must not exceed n_users={p['n_users']}"
        for k in p["sweep_K"]:
            if k > p["n_users"]:
                return "sweep_K", p["sweep_K"], f"has K={k} > n_users={p['n_users']}"
    if stage in ("align", "tulu_align") and p["batch_size"] % p["mini_batch_size"]:
        return "mini_batch_size", p["mini_batch_size"], f"must divide batch_size={p['batch_size']}"
    if stage == "align" and p["eval_steps"][-1] > p["steps"]:
        return "eval_steps", p["eval_steps"], f"has {p['eval_steps'][-1]}, past the last iteration steps={p['steps']}"
    if stage == "align" and p["headline_ratio"] not in p["ratios"]:
        return "headline_ratio", p["headline_ratio"], f"must be one of ratios={p['ratios']}"
    if stage == "compare" and p["tune_beta"] not in p["betas"]:
        return "tune_beta", p["tune_beta"], f"must be one of betas={p['betas']}"
    if stage == "reward":
        for r in p["oracle_ratios"]:
            if r not in p["ratios"]:
                return "oracle_ratios", p["oracle_ratios"], f"has {r}, which is not one of ratios={p['ratios']}"
    if stage == "tulu2" and p["majority"] == p["minority"]:
        return "minority", p["minority"], "must differ from majority (two groups with one preference are one group)"
    if stage == "tulu2" and p["pairs"] == "alpaca_eval":
        for key in ("majority", "minority"):
            if p[key] not in TEXT_DIMENSIONS:
                return key, p[key], (f"must be one of {list(TEXT_DIMENSIONS)} with pairs: alpaca_eval (the P3 tone "
                                     "dimensions have no text rule; use pairs: soups)")
    if stage == "tulu2" and p["pairs"] == "soups" and not p["soups_path"].strip():
        return "soups_path", p["soups_path"], "must name the RLPHF files' folder or URL when pairs: soups"
    if stage == "tulu2" and p["profile"] == "cpu" and p["pairs"] == "soups":
        return "pairs", p["pairs"], "must be alpaca_eval in the cpu profile (its tiny base is trained on those texts)"
    if stage == "pretrain" and p["n_embd"] % p["n_head"]:
        return "n_head", p["n_head"], f"must divide n_embd={p['n_embd']}"
    if stage == "condorcet" and p["dynamics_eta"] * p["dynamics_tau"] > 1:
        return "dynamics_eta", p["dynamics_eta"], f"times dynamics_tau={p['dynamics_tau']} must be <= 1"
    if stage == "condorcet":
        for s in p["first_shares"]:
            if s >= 1:
                return "first_shares", p["first_shares"], f"has {s}; each share must be < 1"
    if stage == "nash_md" and p["constant_eta"] * p["tau"] > 1:
        return "constant_eta", p["constant_eta"], f"times tau={p['tau']} must be <= 1"
    return None


def memory_limit_bytes() -> int:
    """What one stage may plan to hold in memory: 3/4 of this machine's RAM (16 GiB where unknown)."""
    try:
        return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def estimated_bytes(stage: str, p: dict) -> tuple[str, float] | None:
    """(the key that drives it, bytes) for the stage's largest in-memory structure, where a size
    param can make it grow without bound; None for stages with no such structure.  The estimates
    are lower bounds (the tensors the kernels must hold), so a rejection is never a false alarm."""
    if stage == "em_clusters":
        # train + held-out users, each with per_user comparisons: 3 int64 ids, the float64 pair
        # features, and K log-likelihoods / weights per pair in EM's E- and M-steps
        per_user = max([p["per_user"], *p["sweep_per_user"]])
        K = max([p["K"], *p["sweep_K"]])
        pairs = 2 * p["n_users"] * per_user
        return "n_users", pairs * (24 + 8 * p["d"] + 16 * K)
    if stage == "nash_md":
        # every dynamic keeps its trajectory and average iterate: (T + 1, n_actions) float64 each,
        # for 4 methods x 2 step schedules
        return "T", 8 * 2 * 4 * 2 * (p["T"] + 1) * p["n_actions"]
    if stage == "condorcet":
        return "T", 8 * 2 * 2 * (p["T"] + 1) * 3 * len(p["first_shares"])
    if stage == "impossibility":
        return "n_items", 8 * 3 * p["n_items"] ** 2  # the (n_items, n_items) preference matrices
    return None


def validate(stage: str, params: dict) -> dict:
    """Check ``params`` (the stage's section) against its schema; raise ParamError on the first
    problem, naming ``stage.key`` and the value.  Returns the section unchanged."""
    if stage not in SCHEMAS:
        raise ParamError(f"unknown stage {stage!r} (known: {', '.join(sorted(SCHEMAS))})")
    if not isinstance(params, dict):
        raise ParamError(f"{stage} must be a mapping of parameters, got {params!r}")
    schema = SCHEMAS[stage]
    for key in params:
        if key not in schema:
            raise ParamError(f"{stage}.{key} is not a parameter of this stage (known: {', '.join(schema)})")
    for key, rule in schema.items():
        if key not in params:
            raise ParamError(f"{stage}.{key} is missing")
        bad = rule(params[key])
        if bad:
            raise ParamError(f"{stage}.{key} = {params[key]!r}: {bad}")
    cross = _cross_checks(stage, params)
    if cross:
        key, value, why = cross
        raise ParamError(f"{stage}.{key} = {value!r}: {why}")
    need = estimated_bytes(stage, params)
    if need and need[1] > memory_limit_bytes():
        key, bytes_ = need
        raise ParamError(f"{stage}.{key} = {params[key]!r}: the stage would need at least {bytes_ / 2**30:.1f} GiB "
                         f"of memory (this machine allows {memory_limit_bytes() / 2**30:.1f} GiB)")
    return params
