"""Synthetic users: K groups, each with its own linear Bradley–Terry reward over a finite item set."""
from __future__ import annotations

import math

import torch

from .bradley_terry import Comparisons

__all__ = ["check_shares", "group_sizes", "group_rewards", "random_features", "simulate_comparisons"]


def check_shares(shares, name: str = "shares") -> torch.Tensor:
    """Validate a vector of group shares: positive and summing to 1 (to 1e-6)."""
    s = torch.as_tensor(shares, dtype=torch.float64).flatten()
    if s.numel() < 1:
        raise ValueError(f"{name} is empty")
    if bool((s <= 0).any()):
        raise ValueError(f"{name} must all be > 0, got {s.tolist()}")
    if abs(float(s.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got {s.tolist()} (sum {float(s.sum()):.6g})")
    return s


def group_sizes(n_users: int, shares) -> torch.Tensor:
    """(G,) users per group: largest-remainder rounding of shares·n_users, every group ≥ 1."""
    s = check_shares(shares)
    if n_users < s.numel():
        raise ValueError(f"n_users={n_users} is fewer than the {s.numel()} groups")
    raw = s * n_users
    sizes = raw.floor().long().clamp_min(1)
    while int(sizes.sum()) < n_users:
        sizes[int((raw - sizes).argmax())] += 1
    while int(sizes.sum()) > n_users:
        sizes[int(torch.where(sizes > 1, sizes - raw, torch.full_like(raw, -math.inf)).argmax())] -= 1
    return sizes


def random_features(n_items: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(n_items, d) item features ψ ~ N(0, I)."""
    return torch.randn(n_items, d, generator=generator, dtype=torch.float64)


def group_rewards(K: int, d: int, separation: float, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(K, d) reward parameters θ_k = scale · unit((1 − s)·c + s·v_k).

    c is a direction shared by all groups, v_k a direction of group k's own; s = ``separation``
    ∈ [0, 1]: 0 makes every group identical (nothing to recover), 1 makes them independent.
    """
    if not 0.0 <= separation <= 1.0:
        raise ValueError(f"separation must lie in [0, 1], got {separation}")
    c = torch.randn(d, generator=generator, dtype=torch.float64)
    v = torch.randn(K, d, generator=generator, dtype=torch.float64)
    c, v = c / c.norm(), v / v.norm(dim=1, keepdim=True)
    theta = (1 - separation) * c + separation * v
    return scale * theta / theta.norm(dim=1, keepdim=True)


def simulate_comparisons(
    features: torch.Tensor,
    theta: torch.Tensor,
    shares,
    n_users: int,
    per_user: int,
    generator: torch.Generator,
) -> Comparisons:
    """Users split across groups by ``shares``; each compares ``per_user`` random distinct item
    pairs and labels each by its group's BT probability σ(r(a) − r(b)) (a Bernoulli draw).

    features: (n_items, d); theta: (G, d). Returns :class:`Comparisons` with the true ``group``.
    """
    if per_user < 1:
        raise ValueError(f"per_user (comparisons per user) must be >= 1, got {per_user}")
    n_items = features.shape[0]
    if n_items < 2:
        raise ValueError(f"need at least 2 items to compare, got {n_items}")
    sizes = group_sizes(n_users, shares)
    if sizes.numel() != theta.shape[0]:
        raise ValueError(f"{sizes.numel()} shares for {theta.shape[0]} groups")
    group = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    group = group[torch.randperm(n_users, generator=generator)]
    user = torch.arange(n_users).repeat_interleave(per_user)
    a = torch.randint(n_items, (user.numel(),), generator=generator)
    b = (a + torch.randint(1, n_items, (user.numel(),), generator=generator)) % n_items  # b ≠ a
    r = theta @ features.T  # (G, n_items)
    g = group[user]
    p_a = torch.sigmoid(r[g, a] - r[g, b])
    a_wins = torch.rand(user.numel(), generator=generator, dtype=torch.float64) < p_a
    chosen, rejected = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    return Comparisons(chosen, rejected, user, features, n_users, group)
