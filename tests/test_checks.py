import copy

import pytest
from dvc.utils.serialize import parse_yaml

from pluralign.checks import SCHEMAS, ParamError, validate
from tiny import TINY

BAD = [
    ("impossibility", "beta", -1.0, "impossibility.beta = -1.0: must be > 0"),
    ("impossibility", "minority_shares", [0.1, 0.7], "impossibility.minority_shares = [0.1, 0.7]: has entry 0.7"),
    ("impossibility", "three_group_shares", [0.5, 0.3, 0.1], "must sum to 1"),
    ("em_clusters", "K", 0, "em_clusters.K = 0: must be >= 1"),
    ("em_clusters", "shares", [0.6, 0.6], "em_clusters.shares = [0.6, 0.6]: must sum to 1"),
    ("em_clusters", "per_user", 0, "em_clusters.per_user = 0: must be >= 1"),
    ("em_clusters", "init", "kmeans", "em_clusters.init = 'kmeans'"),
    ("em_clusters", "soft", "yes", "em_clusters.soft = 'yes': must be true or false"),
    ("nash_md", "tau", 0, "nash_md.tau = 0: must be > 0"),
    ("nash_md", "T", 2.5, "nash_md.T = 2.5: must be an integer"),
    ("nash_md", "constant_eta", 20.0, "nash_md.constant_eta = 20.0: times tau=0.2 must be <= 1"),
    ("compare", "betas", [0.0, 1.5], "compare.betas = [0.0, 1.5]: has entry 1.5 that must be <= 1.0"),
    ("compare", "tau", 0.0, "compare.tau = 0.0: must be > 0"),
    ("reward", "ratios", [1, 0], "reward.ratios = [1, 0]: has entry 0 that must be > 0.0"),
    ("reward", "oracle_ratios", [7], "reward.oracle_ratios = [7]: has 7, which is not one of ratios=[1, 3]"),
    ("align", "headline_ratio", 7, "align.headline_ratio = 7: must be one of ratios=[1, 3]"),
    ("align", "eval_steps", [2, 1], "align.eval_steps = [2, 1]: must be strictly increasing"),
    ("align", "eval_steps", [1, 3], "align.eval_steps = [1, 3]: has 3, past the last iteration steps=2"),
    ("align", "eval_steps", [], "align.eval_steps = []: must be a list of at least 1 value(s)"),
    ("reward", "threads", 0, "reward.threads = 0: must be >= 1"),
    ("condorcet", "first_shares", [0.5, 1.0], "condorcet.first_shares = [0.5, 1.0]: has 1.0; each share must be < 1"),
    ("tulu2", "minority", "P1A", "tulu2.minority = 'P1A': must differ from majority"),
    ("tulu2", "majority", "P9Z", "tulu2.majority = 'P9Z': must be one of"),
    ("tulu_reward", "ratio", -10, "tulu_reward.ratio = -10: must be > 0.0"),
    ("tulu_align", "methods", ["ppo"], "tulu_align.methods = ['ppo']: has entry 'ppo' that must be one of"),
    ("tulu_align", "optim", "adamw", "tulu_align.optim = 'adamw': must be one of"),
    ("align", "optim", "sgd", "align.optim = 'sgd': must be one of"),
]


def test_defaults_in_params_yaml_are_valid(root):
    params = parse_yaml((root / "params.yaml").read_text(), "params.yaml")  # as DVC and the runner read it
    for stage in SCHEMAS:
        validate(stage, params[stage])
        validate(stage, TINY[stage])


@pytest.mark.parametrize("stage,key,value,message", BAD)
def test_bad_values_give_one_line_naming_key_and_value(stage, key, value, message):
    p = copy.deepcopy(TINY[stage])
    p[key] = value
    with pytest.raises(ParamError) as err:
        validate(stage, p)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shares_must_match_K_and_unknown_or_missing_keys_are_named():
    p = dict(TINY["em_clusters"], shares=[0.5, 0.3, 0.2])
    with pytest.raises(ParamError, match="must have K=2 entries"):
        validate("em_clusters", p)
    with pytest.raises(ParamError, match="nash_md.temperature is not a parameter"):
        validate("nash_md", dict(TINY["nash_md"], temperature=1.0))
    q = dict(TINY["nash_md"])
    del q["tau"]
    with pytest.raises(ParamError, match="nash_md.tau is missing"):
        validate("nash_md", q)
