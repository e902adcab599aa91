"""Win rates and their 95% intervals over training seeds and evaluation prompts.

One definition of a win, used by every notebook: policy A's response to a prompt beats B's for a
judge when the judge's score is higher; a tie counts ½ (:func:`outcomes`).  So P(A ≻ B) +
P(B ≻ A) = 1, and a policy against itself scores ½.  (The MaxMin paper's public re-implementation
counts a tie as a loss, strict ">"; :func:`outcomes` with ``ties=0`` reproduces it, labelled so.)

A comparison yields a table y (S, N): S training seeds of a method, each answering the same N
held-out prompts (for two methods, seed s of A meets seed s of B on prompt n; the base policy has
one set of answers, shared by every seed).  What we estimate is the expected win rate over the
distribution of training runs and prompts, m = E y.  In this crossed design (every seed answers
every prompt) the grand mean's variance is

    V = σ_s²/S + σ_p²/N + σ_e²/(SN)        (seed effect, prompt effect, residual)

The bootstrap below resamples seeds and prompts with replacement — the same prompt draw for every
seed, so the pairing between policies that answered the same prompts is kept — and takes the
mean of each draw.  Resampling both ways counts the residual three times (the "pigeonhole"
bootstrap, Owen 2007, is conservative: with pure noise its interval covers ~99.9%), so the draws
are rescaled about the estimate until their variance is the unbiased two-way estimate

    V̂ = Σ_s α̂_s² / ((S−1)S) + Σ_n β̂_n² / ((N−1)N) − σ̂_e²/(SN),
    σ̂_e² = Σ γ̂_sn² / ((S−1)(N−1))

(α̂, β̂, γ̂: row, column and interaction effects of the table), floored at σ̂_e²/(SN), and widened by
t_ν/z with Satterthwaite's ν (:func:`degrees_of_freedom`): with 5 seeds and a real seed effect, V̂
rests on 4 degrees of freedom and a normal-width interval would cover ~90%.  The interval
is the 2.5% and 97.5% percentiles of the rescaled draws, so it keeps the bootstrap's asymmetry
near 0 and 1 and covers at about the nominal rate (``tests/test_intervals.py``: 95% with seed and
prompt effects, 97–98% on pure fair coins, where the t widening is a little generous).  It needs S ≥ 2: one training run says nothing about the next.

Shapes: y (S, N) floats (1 / ½ / 0 outcomes, differences of them, or probabilities).
"""
from __future__ import annotations

import math

import torch

__all__ = ["outcomes", "crossed_variance", "degrees_of_freedom", "interval", "win_interval", "difference_interval", "at_kl",
           "check_seeds"]


def outcomes(a: torch.Tensor, b: torch.Tensor, ties: float = 0.5) -> torch.Tensor:
    """Per prompt, 1 where a > b, ``ties`` (½) where a == b, 0 where a < b: same shape as a, b
    (broadcast).  ties=0 is the strict ">" of the MaxMin paper's re-implementation."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return (a > b).double() + ties * (a == b).double()


def check_seeds(n: int, what: str = "seeds") -> None:
    """Refuse an interval over fewer than 2 training runs (one line naming ``what``)."""
    if n < 2:
        raise ValueError(f"{what}: an interval over training runs needs at least 2 seeds, got {n}")


def _table(y) -> torch.Tensor:
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.dim() == 1:
        y = y[None]  # one training run's answers
    if y.dim() != 2 or y.shape[1] < 2:
        raise ValueError(f"expected a (seeds, prompts) table with >= 2 prompts, got shape {tuple(y.shape)}")
    return y


def _components(y: torch.Tensor):
    """(seed, prompt, residual) terms of V̂ and their degrees of freedom."""
    S, N = y.shape
    m = y.mean()
    row, col = y.mean(1) - m, y.mean(0) - m
    resid = y - m - row[:, None] - col[None, :]
    s2_e = float((resid ** 2).sum()) / ((S - 1) * (N - 1))
    terms = (float((row ** 2).sum()) / ((S - 1) * S), float((col ** 2).sum()) / ((N - 1) * N), s2_e / (S * N))
    return terms, (S - 1, N - 1, (S - 1) * (N - 1))


def crossed_variance(y) -> float:
    """V̂, the unbiased estimate of Var(grand mean) of a crossed (S, N) table (module docstring),
    floored at the residual term σ̂_e²/(SN)."""
    y = _table(y)
    check_seeds(y.shape[0])
    (seeds, prompts, resid), _ = _components(y)
    return max(seeds + prompts - resid, resid)


def degrees_of_freedom(y) -> float:
    """Satterthwaite's degrees of freedom of V̂: few seeds with a large seed effect give few."""
    y = _table(y)
    check_seeds(y.shape[0])
    terms, dfs = _components(y)
    v = crossed_variance(y)
    denom = sum(t * t / d for t, d in zip(terms, dfs))
    return float("inf") if denom == 0 else max(1.0, v * v / denom)


def interval(y, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of the (S, N) table and its ``level`` interval by the variance-corrected crossed
    bootstrap (module docstring).  Returns {"mean", "lo", "hi", "seeds", "prompts"}."""
    y = _table(y)
    S, N = y.shape
    check_seeds(S)
    if not (isinstance(n_boot, int) and n_boot >= 100):
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    g = torch.Generator().manual_seed(seed)
    # resample counts: D (n_boot, S) seeds, C (n_boot, N) prompts (one prompt draw for every seed)
    D = torch.zeros(n_boot, S, dtype=torch.float64).scatter_add_(
        1, torch.randint(S, (n_boot, S), generator=g), torch.ones(n_boot, S, dtype=torch.float64))
    C = torch.zeros(n_boot, N, dtype=torch.float64).scatter_add_(
        1, torch.randint(N, (n_boot, N), generator=g), torch.ones(n_boot, N, dtype=torch.float64))
    draws = torch.einsum("bs,sn,bn->b", D, y, C) / (S * N)
    m = float(y.mean())
    spread = float(draws.var())
    if spread > 0:
        # variance V̂, widened by t_ν / z so that a handful of seeds is not over-trusted
        from scipy.stats import norm, t

        p = (1 + level) / 2
        widen = float(t.ppf(p, degrees_of_freedom(y)) / norm.ppf(p))
        draws = m + (draws - m) * math.sqrt(crossed_variance(y) / spread) * widen
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(draws, q).tolist()
    # a mean of values in [min y, max y] lies there too (a win rate in [0, 1], a difference in [−1, 1]):
    # with few seeds the t widening can reach past it
    lo, hi = max(lo, float(y.min())), min(hi, float(y.max()))
    return {"mean": m, "lo": lo, "hi": hi, "seeds": S, "prompts": N}


def win_interval(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0, ties: float = 0.5) -> dict:
    """P(A ≻ B) with its interval: a (S, N) scores of A's seeds, b (S, N) or (N,) (the base
    policy's one set of answers) on the same prompts."""
    a = torch.as_tensor(a, dtype=torch.float64)
    return interval(outcomes(a, torch.as_tensor(b, dtype=torch.float64).expand_as(a), ties), n_boot, level, seed)


def difference_interval(y1, y2, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """mean(y1) − mean(y2) with its interval, paired: y1, y2 (S, N) on the same prompts, seed s of
    one paired with seed s of the other (e.g. MaxMin's and single-reward PPO's wins against the
    base policy, for one group)."""
    y1, y2 = _table(y1), _table(y2)
    if y1.shape != y2.shape:
        raise ValueError(f"paired tables must have one shape, got {tuple(y1.shape)} and {tuple(y2.shape)}")
    return interval(y1 - y2, n_boot, level, seed)


def at_kl(kls, y, target: float) -> torch.Tensor:
    """One training run's per-prompt values at KL(π ‖ base) = ``target``, interpolated linearly
    between the two checkpoints whose KL brackets it.

    kls (C,): the run's KL at each checkpoint (the base policy, KL 0, first); y (C, N): the
    per-prompt values (wins, preferences) at each checkpoint.  KL need not grow monotonically
    along training: the first checkpoint at which the run reaches ``target`` is used.  Raises if
    the run never reaches it (a matched-KL comparison must stay inside every run's range)."""
    kls, y = torch.as_tensor(kls, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if kls.dim() != 1 or y.shape[0] != kls.shape[0]:
        raise ValueError(f"kls (C,) and y (C, N) must have one checkpoint axis, got {tuple(kls.shape)} and {tuple(y.shape)}")
    if not (math.isfinite(target) and target >= float(kls[0])):
        raise ValueError(f"target KL must be >= the first checkpoint's KL {float(kls[0]):.4g}, got {target!r}")
    for c in range(1, len(kls)):
        if float(kls[c]) >= target:
            lo, hi = float(kls[c - 1]), float(kls[c])
            w = 0.0 if hi == lo else (target - lo) / (hi - lo)
            w = min(max(w, 0.0), 1.0)
            return (1 - w) * y[c - 1] + w * y[c]
    if float(kls[0]) >= target:
        return y[0]
    raise ValueError(f"target KL {target:.4g} is beyond this run's largest KL {float(kls.max()):.4g}")
