"""The NLHF paper's worked examples (Munos et al., 2024, §3 and appendices) as preference matrices."""
from __future__ import annotations

import itertools
import math

import torch

__all__ = ["dice", "dice_preference", "three_annotators", "three_annotators_nash", "constrained_example",
           "random_preference", "cyclic_preference", "condorcet_preference", "condorcet_rewards"]

dice = ((2, 4, 9), (1, 6, 8), (3, 5, 7))


def dice_preference(faces=dice) -> torch.Tensor:
    """P[i, j] = P(die i rolls higher than die j) (+½ for ties), fair dice: (n, n).
    The default dice are non-transitive: each beats the next with probability 5/9."""
    n = len(faces)
    P = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        wins = sum((a > b) + 0.5 * (a == b) for a in faces[i] for b in faces[j])
        P[i, j] = wins / (len(faces[i]) * len(faces[j]))
    return P


def three_annotators(eps: float) -> torch.Tensor:
    """Three annotator types (shares 1/3 − ε, 1/3 + ε/2, 1/3 + ε/2) who are sure of one pair each
    (y2 ≻ y1, y1 ≻ y3, y3 ≻ y2) and indifferent about the others.  Pooled:
    P(y2 ≻ y1) = 2/3 − ε/2, P(y1 ≻ y3) = P(y3 ≻ y2) = 2/3 + ε/4.  Valid for ε ∈ [−2/3, 1/3]:
    share 1 needs ε ≤ 1/3, shares 2 and 3 need ε ≥ −2/3."""
    if not -2 / 3 <= eps <= 1 / 3:
        raise ValueError(f"eps must lie in [-2/3, 1/3] so that every share 1/3 - eps, 1/3 + eps/2 is >= 0, got {eps}")
    s1, s2, s3 = 1 / 3 - eps, 1 / 3 + eps / 2, 1 / 3 + eps / 2
    # each type: P = ½ off its sure pair; on it, 1 for the preferred response
    P = torch.full((3, 3), 0.5, dtype=torch.float64)
    P[1, 0] = s1 + (1 - s1) * 0.5
    P[0, 2] = s2 + (1 - s2) * 0.5
    P[2, 1] = s3 + (1 - s3) * 0.5
    P[0, 1], P[2, 0], P[1, 2] = 1 - P[1, 0], 1 - P[0, 2], 1 - P[2, 1]
    return P


def three_annotators_nash(eps: float) -> torch.Tensor:
    """The paper's closed form for the example's Nash equilibrium: (1/3+ε/2, 1/3+ε/2, 1/3−ε)."""
    return torch.tensor([1 / 3 + eps / 2, 1 / 3 + eps / 2, 1 / 3 - eps], dtype=torch.float64)


def constrained_example():
    """A transitive BT world where restricting the policy class separates the two optima
    (NLHF appendix): Elo scores R = (0, log 9, log 2); policies restricted to π(y1) = 2π(y2),
    i.e. the segment between the vertices (2/3, 1/3, 0) and (0, 0, 1).

    Returns (P (3, 3), R (3,), vertices (2, 3)).  The reward-optimal policy in the set is
    (2/3, 1/3, 0); the preference-optimal (Nash) one is (0, 0, 1), and it wins 50/99 of the time.
    """
    R = torch.tensor([0.0, math.log(9.0), math.log(2.0)], dtype=torch.float64)
    P = torch.sigmoid(R.unsqueeze(1) - R.unsqueeze(0))
    V = torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return P, R, V


def random_preference(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random (generally non-transitive) preference: P = ½(A + 1 − Aᵀ), A uniform."""
    A = torch.rand(n, n, generator=generator, dtype=torch.float64)
    return 0.5 * (A + 1 - A.T)


def cyclic_preference(n: int, strength: float = 0.4) -> torch.Tensor:
    """Rock–paper–scissors on a ring of n (odd) actions: each beats the next (n−1)/2 with
    probability ½ + strength and loses to the previous ones — a purely cyclic game."""
    if n % 2 == 0:
        raise ValueError(f"cyclic_preference needs an odd number of actions, got {n}")
    P = torch.full((n, n), 0.5, dtype=torch.float64)
    for i in range(n):
        for k in range(1, (n - 1) // 2 + 1):
            j = (i + k) % n
            P[i, j], P[j, i] = 0.5 + strength, 0.5 - strength
    return P


def condorcet_preference(shares=(1 / 3, 1 / 3, 1 / 3)) -> torch.Tensor:
    """Three groups with transitive rankings y1>y2>y3, y2>y3>y1, y3>y1>y2; pooled they are
    cyclic (each link won 2/3 of the time with equal shares)."""
    rankings = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    P = torch.zeros(3, 3, dtype=torch.float64)
    for s, order in zip(shares, rankings):
        pos = {y: k for k, y in enumerate(order)}
        for i, j in itertools.product(range(3), range(3)):
            P[i, j] += s * (0.5 if i == j else float(pos[i] < pos[j]))
    return P


def condorcet_rewards(scale: float = 4.0) -> torch.Tensor:
    """Per-group rewards of the Condorcet users (G=3, n=3): each group's ranking as in
    :func:`condorcet_preference` with utilities (1, ½, 0) × ``scale`` for top, middle, bottom.
    Each group is Bradley–Terry in its own reward; pooled they are cyclic for shares near equal."""
    rankings = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    r = torch.zeros(3, 3, dtype=torch.float64)
    for g, order in enumerate(rankings):
        for pos, y in enumerate(order):
            r[g, y] = scale * (1.0 - pos / 2)
    return r
