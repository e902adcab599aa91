"""Simulated users who label pairs of responses, and the preference data format.

Each user belongs to one group; a group judges a pair by its own trait score s_g (majority:
positiveness, minority: conciseness) through a Bradley–Terry choice
P(a ≻ b) = σ((s_g(a) − s_g(b)) / temperature).  Data follow TRL's standard preference format —
columns ``prompt``, ``chosen``, ``rejected`` — plus ``user_id`` and ``group``; responses start
with a space so that ``prompt + chosen`` is the full text (how TRL's RewardTrainer joins them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .simulate import group_sizes

__all__ = ["REQUIRED_COLUMNS", "PreferencePairs", "check_columns", "label_pairs", "ratio_shares"]

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected", "user_id", "group")


def ratio_shares(ratio: float) -> list[float]:
    """majority:minority = ratio:1 → shares [ratio/(ratio+1), 1/(ratio+1)]."""
    if not (isinstance(ratio, (int, float)) and ratio > 0):
        raise ValueError(f"majority:minority ratio must be > 0, got {ratio!r}")
    return [ratio / (ratio + 1), 1 / (ratio + 1)]


def check_columns(dataset, required=REQUIRED_COLUMNS, name: str = "dataset") -> None:
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing} (has {dataset.column_names})")


@dataclass
class PreferencePairs:
    """Preference pairs in memory, with the ``user``/``n_users`` fields EM needs.

    prompt, chosen, rejected: lists of N strings; user: (N,) long in [0, n_users);
    group: (n_users,) true group of each user (evaluation only)."""

    prompt: list[str]
    chosen: list[str]
    rejected: list[str]
    user: torch.Tensor
    n_users: int
    group: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return len(self.prompt)

    def subset(self, rows) -> "PreferencePairs":
        rows = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in rows.tolist()]  # noqa: E731
        return PreferencePairs(pick(self.prompt), pick(self.chosen), pick(self.rejected), self.user[rows],
                               self.n_users, self.group)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                                  "user_id": self.user.tolist(), "group": self.group[self.user].tolist()})

    @classmethod
    def from_dataset(cls, ds, name: str = "dataset") -> "PreferencePairs":
        check_columns(ds, name=name)
        users = torch.tensor(ds["user_id"], dtype=torch.long)
        raw_groups = torch.tensor(ds["group"], dtype=torch.long)
        ids, user = torch.unique(users, return_inverse=True)  # dense user ids 0..U-1
        group = torch.zeros(len(ids), dtype=torch.long)
        group[user] = raw_groups
        for col in ("prompt", "chosen", "rejected"):
            bad = next((i for i, t in enumerate(ds[col]) if not isinstance(t, str)), None)
            if bad is not None:
                raise ValueError(f"{name} row {bad}: column {col!r} is not text ({ds[col][bad]!r})")
        return cls(list(ds["prompt"]), list(ds["chosen"]), list(ds["rejected"]), user, len(ids), group)


def label_pairs(prompts, responses_a, responses_b, scores_a: torch.Tensor, scores_b: torch.Tensor,
                shares, n_users: int, temperature: float, seed: int) -> PreferencePairs:
    """Assign the pairs round-robin to users (shuffled), users to groups by ``shares``, and draw
    each label from its user's group: scores_a/b are (G, N) trait scores of the two responses
    (row g = what group g cares about).  Pairs whose two responses are identical are dropped."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    G, N = scores_a.shape
    if not (len(prompts) == len(responses_a) == len(responses_b) == N):
        raise ValueError(f"{len(prompts)} prompts, {len(responses_a)}/{len(responses_b)} responses and {N} scores differ")
    keep = torch.tensor([a != b for a, b in zip(responses_a, responses_b)], dtype=torch.bool)
    rows = keep.nonzero().flatten()
    if rows.numel() < n_users:  # checked before anything of size n_users is allocated
        raise ValueError(f"only {rows.numel()} distinct pairs for n_users={n_users}: every user needs a comparison")
    g = torch.Generator().manual_seed(seed)
    sizes = group_sizes(n_users, shares)
    if sizes.numel() != G:
        raise ValueError(f"{sizes.numel()} group shares for {G} groups of scores")
    group = torch.repeat_interleave(torch.arange(G), sizes)[torch.randperm(n_users, generator=g)]
    rows = rows[torch.randperm(rows.numel(), generator=g)]
    user = torch.arange(rows.numel()) % n_users
    gu = group[user]
    p_a = torch.sigmoid((scores_a[gu, rows] - scores_b[gu, rows]) / temperature)
    a_wins = torch.rand(rows.numel(), generator=g) < p_a
    ch = [responses_a[i] if w else responses_b[i] for i, w in zip(rows.tolist(), a_wins.tolist())]
    rj = [responses_b[i] if w else responses_a[i] for i, w in zip(rows.tolist(), a_wins.tolist())]
    pr = [prompts[i] for i in rows.tolist()]
    space = lambda t: " " + t.strip()  # noqa: E731
    return PreferencePairs(pr, [space(t) for t in ch], [space(t) for t in rj], user, n_users, group)
