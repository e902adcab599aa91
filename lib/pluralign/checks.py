"""Validation of each stage's params.yaml section: one clear line naming the key and value.

lib never reads params.yaml itself; the stage runner passes the section here as a dict.
"""
from __future__ import annotations

import math
from typing import Any, Callable

__all__ = ["ParamError", "validate", "SCHEMAS"]


class ParamError(ValueError):
    """A bad parameter value; ``str(err)`` is the one line to show the user."""


Rule = Callable[[Any], str | None]
SOUPS_DIMENSIONS = ("P1A", "P1B", "P2A", "P2B", "P3A", "P3B", "P3C", "P3D")  # the RLPHF files (soups.DIMENSIONS)
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


share = number(0.0, 0.5, lo_open=True)  # a minority's share: in (0, 0.5]

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
        "max_new_tokens": integer(1, 512),
        "temperature": positive,
    },
    "corpus": {
        "seed": integer(0),
        "n_reviews": integer(10),
        "n_val_reviews": integer(1),
        "n_prompts_train": integer(1),
        "n_prompts_test": integer(1),
    },
    "pretrain": {
        "seed": integer(0),
        "n_layer": integer(1),
        "n_embd": integer(8),
        "n_head": integer(1),
        "block_size": integer(8),
        "batch_size": integer(1),
        "steps": integer(1),
        "lr": positive,
        "n_samples": integer(1),
    },
    "label": {
        "seed": integer(0),
        "ratios": list_of(number(0.0, lo_open=True)),
        "n_train_users": integer(2),
        "n_test_users": integer(2),
        "test_fraction": number(0.0, 1.0, lo_open=True),
        "bt_temperature": positive,
    },
    "reward": {
        "seed": integer(0),
        "ratios": list_of(number(0.0, lo_open=True)),
        "K": integer(1),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1),
        "em_iterations": integer(1),
        "em_restarts": integer(1),
        "oracle_ratios": list_of(number(0.0, lo_open=True), min_len=0),
    },
    "align": {
        "ratios": list_of(number(0.0, lo_open=True)),
        "seeds": list_of(integer(0)),
        "sweep_seeds": list_of(integer(0)),
        "methods": list_of(one_of(*ALIGN_METHODS)),
        "headline_ratio": number(0.0, lo_open=True),
        "headline_methods": list_of(one_of(*ALIGN_METHODS), min_len=0),
        "steps": integer(1),
        "batch_size": integer(1),
        "mini_batch_size": integer(1),
        "ppo_epochs": integer(1),
        "lr": positive,
        "kl_coef": number(0.0),
        "n_standardise": integer(2),
    },
    "evaluate": {
        "n_prompts": integer(1),
        "seed": integer(0),
    },
    "preference": {
        "seed": integer(0),
        "ratio": number(0.0, lo_open=True),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1),
    },
    "impossibility": {
        "seed": integer(0),
        "n_items": integer(3),
        "beta": positive,
        "reward_scale": positive,
        "minority_shares": list_of(share),
        "angles_deg": list_of(number(0.0, 180.0)),
        "headline_share": share,
        "headline_angle_deg": number(0.0, 180.0),
        "three_group_shares": shares,
        "maxmin_steps": integer(1),
    },
    "em_clusters": {
        "seed": integer(0),
        "n_items": integer(2),
        "d": integer(1),
        "K": integer(1),
        "shares": shares,
        "n_users": integer(2),
        "per_user": integer(1),
        "separation": number(0.0, 1.0),
        "reward_scale": positive,
        "l2": number(0.0),
        "n_init": integer(1),
        "init": one_of("mixed", "round_robin", "random"),
        "max_iter": integer(1),
        "soft": boolean,
        "sweep_per_user": list_of(integer(1)),
        "sweep_separation": list_of(number(0.0, 1.0)),
        "sweep_K": list_of(integer(1)),
        "n_reps": integer(1),
    },
    "nash_md": {
        "seed": integer(0),
        "n_actions": integer(2),
        "tau": positive,
        "T": integer(1),
        "constant_eta": positive,
        "n_random": integer(1),
        "eps_grid": list_of(number(-2 / 3, 2 / 3)),
    },
    "compare": {
        "betas": list_of(number(0.0, 1.0)),
        "bt_betas": list_of(number(0.0, 1.0), min_len=0),
        "tau": positive,
        "nash_lr": positive,
        "nash_seeds": list_of(integer(0)),
        "n_prompts": integer(1),
        "eval_seed": integer(0),
    },
    "tulu2": {
        "profile": one_of("cpu", "paper"),
        "base_model": text,
        "soups_path": optional_text,
        "soups_pattern": text,
        "ppo_prompts": optional_text,
        "eval_prompts": optional_text,
        "majority": one_of(*SOUPS_DIMENSIONS),
        "minority": one_of(*SOUPS_DIMENSIONS),
        "max_new_tokens": integer(1),
        "temperature": positive,
        "dtype": one_of("float32", "bfloat16"),
        "load_in_bits": one_of(None, 4, 8),
        "accelerate_config": text,
        "judge": one_of("rule", "transformers", "openai"),
        "judge_model": optional_text,
    },
    "tulu_reward": {
        "seed": integer(0),
        "ratio": number(0.0, lo_open=True),
        "n_users": integer(2),
        "test_fraction": number(0.0, 1.0, lo_open=True),
        "K": integer(1),
        "lora_r": integer(1),
        "lora_alpha": positive,
        "lora_dropout": number(0.0, 1.0),
        "epochs": positive,
        "lr": positive,
        "batch_size": integer(1),
        "max_length": integer(8),
        "em_iterations": integer(1),
        "standin_per_dim": integer(2),
        "standin_prompts": integer(1),
        "base_hidden": integer(8),
        "base_layers": integer(1),
        "pretrain_steps": integer(1),
        "min_steps": integer(0),
    },
    "tulu_align": {
        "seed": integer(0),
        "methods": list_of(one_of("single", "maxmin", "maxmin_oracle")),
        "steps": integer(1),
        "batch_size": integer(1),           # per process
        "mini_batch_size": integer(1),
        "ppo_epochs": integer(1),
        "lr": positive,
        "kl_coef": number(0.0),
        "n_standardise": integer(2),        # base-policy samples per process for the reward z-scores
        "n_prompts": integer(0),            # 0 = every prompt in the file
        "lora_r": integer(1),
        "lora_alpha": positive,
        "lora_dropout": number(0.0, 1.0),
        "gradient_checkpointing": boolean,
        "n_boot": integer(100),
    },
    "condorcet": {
        "seed": integer(0),
        "scale": positive,
        "beta": positive,
        "first_shares": list_of(number(0.0, 1.0, lo_open=True)),
        "T": integer(1),
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
    if stage == "align" and p["headline_ratio"] not in p["ratios"]:
        return "headline_ratio", p["headline_ratio"], f"must be one of ratios={p['ratios']}"
    if stage == "reward":
        for r in p["oracle_ratios"]:
            if r not in p["ratios"]:
                return "oracle_ratios", p["oracle_ratios"], f"has {r}, which is not one of ratios={p['ratios']}"
    if stage == "tulu2" and p["majority"] == p["minority"]:
        return "minority", p["minority"], "must differ from majority (two groups with one preference are one group)"
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
    return params
