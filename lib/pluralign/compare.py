"""Head-to-head evaluation of many policies by several groups: the win-rate matrices of the
NLHF paper's "P(π ≻ π')", estimated on shared prompts, per group and for the pooled population.

A group prefers the response with the higher value of its own trait (the majority: positiveness;
the minority: conciseness).  Policy A beats B on a prompt for group g when t_g(A) > t_g(B); a tie
counts ½, so W[A, B] + W[B, A] = 1 and W[A, A] = ½ — a preference matrix in the paper's sense.
The pooled population's matrix is the share-weighted mixture of the groups' matrices.
"""
from __future__ import annotations

import pandas as pd
import torch

from . import intervals

__all__ = ["win_rate", "win_matrix", "win_matrix_intervals", "pooled_matrix", "favourite"]


def win_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(a ≻ b) over paired samples, ties ½: a, b (N,) trait values on the same prompts."""
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a > b).double().mean() + 0.5 * (a == b).double().mean())


def win_matrix(scores: dict[str, list[torch.Tensor]]) -> pd.DataFrame:
    """W[A, B] = P(A ≻ B) for one group, averaged over seeds.

    scores: policy → list over seeds of (N,) trait values on the shared prompts.  Seed s of A
    meets seed s of B (a policy with fewer seeds, e.g. the base policy, reuses its last one)."""
    names = list(scores)
    W = pd.DataFrame(0.5, index=names, columns=names, dtype=float)
    for a in names:
        for b in names:
            if a == b:
                continue
            n = max(len(scores[a]), len(scores[b]))
            W.loc[a, b] = sum(win_rate(scores[a][min(s, len(scores[a]) - 1)], scores[b][min(s, len(scores[b]) - 1)])
                              for s in range(n)) / n
    return W


def pooled_matrix(matrices: dict[str, pd.DataFrame], shares: dict[str, float]) -> pd.DataFrame:
    """Σ_g η_g W_g: the population's preference between policies (shares must sum to 1)."""
    if set(matrices) != set(shares):
        raise ValueError(f"shares {sorted(shares)} must name the same groups as the matrices {sorted(matrices)}")
    total = sum(shares.values())
    if abs(total - 1) > 1e-9:
        raise ValueError(f"shares must sum to 1, got {total}")
    return sum(shares[g] * W for g, W in matrices.items())


def favourite(W: pd.DataFrame, among: list[str] | None = None) -> tuple[str, pd.Series]:
    """The policy a group would pick: the highest mean win rate against the other candidates.
    Returns (name, mean win rate of every candidate)."""
    among = list(W.index) if among is None else among
    sub = W.loc[among, among]
    mean = (sub.sum(1) - 0.5) / max(len(among) - 1, 1)
    return str(mean.idxmax()), mean


def win_matrix_intervals(scores: dict, n_boot: int, seed: int) -> dict:
    """Intervals for :func:`win_matrix`'s entries: scores policy → list over
    seeds of (N,) trait values.  Seed s of A meets seed s of B; a policy with fewer seeds (the
    base policy) reuses its last.  Returns {"lo": DataFrame, "hi": DataFrame} (diagonal ½)."""
    names = list(scores)
    lo = pd.DataFrame(0.5, index=names, columns=names, dtype=float)
    hi = lo.copy()
    for a in names:
        for b in names:
            if a == b:
                continue
            n = max(len(scores[a]), len(scores[b]))
            y = torch.stack([intervals.outcomes(scores[a][min(s, len(scores[a]) - 1)], scores[b][min(s, len(scores[b]) - 1)])
                             for s in range(n)])
            r = intervals.interval(y, n_boot=n_boot, seed=seed)
            lo.loc[a, b], hi.loc[a, b] = r["lo"], r["hi"]
    return {"lo": lo, "hi": hi}
