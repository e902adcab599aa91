"""Size params have upper bounds, and the stages whose memory grows with a size param are
estimated up front: a value that would fill the machine fails in one line before anything runs."""
import copy

import pytest
import torch
from dvc.utils.serialize import parse_yaml

from pluralign import checks, preferences
from pluralign.checks import ParamError, validate
from tiny import TINY

HUGE = [
    ("em_clusters", "n_users", 1_000_000_000, "em_clusters.n_users = 1000000000: must be <= 1000000"),
    ("nash_md", "T", 1_000_000_000, "nash_md.T = 1000000000: must be <= 10000000"),
    ("label", "n_train_users", 1_000_000_000, "label.n_train_users = 1000000000: must be <= 100000"),
    ("corpus", "n_reviews", 10**12, "corpus.n_reviews = 1000000000000: must be <= 1000000"),
    ("align", "seeds", [2**40], "must be <= 4294967295"),
]


@pytest.mark.parametrize("stage,key,value,message", HUGE)
def test_huge_sizes_are_rejected_in_one_line(stage, key, value, message):
    p = dict(copy.deepcopy(TINY[stage]), **{key: value})
    with pytest.raises(ParamError) as err:
        validate(stage, p)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("stage,changes,key", [
    ("em_clusters", {"n_users": 1_000_000, "per_user": 100_000}, "n_users"),
    ("nash_md", {"T": 10_000_000, "n_actions": 100_000}, "T"),
    ("impossibility", {"n_items": 100_000}, "n_items"),
])
def test_memory_is_estimated_up_front(stage, changes, key, monkeypatch):
    monkeypatch.setattr(checks, "memory_limit_bytes", lambda: 8 * 2**30)
    p = dict(copy.deepcopy(TINY[stage]), **changes)
    with pytest.raises(ParamError) as err:
        validate(stage, p)
    msg = str(err.value)
    assert msg.startswith(f"{stage}.{key} = {p[key]!r}: the stage would need at least") and "GiB" in msg and "\n" not in msg


def test_default_params_fit_in_a_small_machine(root, monkeypatch):
    monkeypatch.setattr(checks, "memory_limit_bytes", lambda: 2 * 2**30)
    params = parse_yaml((root / "params.yaml").read_text(), "params.yaml")  # as DVC and the runner read it
    for stage in checks.SCHEMAS:
        validate(stage, params[stage])


def test_label_pairs_refuses_more_users_than_pairs_before_allocating_per_user(monkeypatch):
    """Regression: n_train_users = 1e9 allocated a permutation of 1e9 users (8 GB) before the
    check that every user gets a pair."""
    def no_allocation(*a, **k):
        raise AssertionError("allocated per-user tensors before checking n_users")
    monkeypatch.setattr(preferences, "group_sizes", no_allocation)
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="only 3 distinct pairs for n_users=1000000000"):
        preferences.label_pairs(["p"] * 3, ["a", "b", "c"], ["x", "y", "z"], s, s, [0.5, 0.5], 10**9, 0.1, 0)
