"""Tabular RLHF, the impossibility quantities and MaxMin (egalitarian) alignment.

Setting: a finite response set of n items, a reference policy μ (n,), G groups with rewards
r (G, n) and population shares η (G,).  All policies are probability vectors over the n items.

  RLHF optimum       π_r = argmax_π E_π r − β KL(π‖μ)  =  μ·exp(r/β) / Z
  group objective    J_u(π) = E_π r_u − β KL(π‖μ);   optimum J_u* = β log E_μ exp(r_u/β)
  alignment gap      Align-Gap_u(π) = J_u* − J_u(π)  ≥ 0
  MaxMin             π_MM = argmax_π min_u E_π r_u − β KL(π‖μ)
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize

from .bradley_terry import fit_bt_linear
from .simulate import check_shares

__all__ = [
    "check_beta",
    "kl",
    "rlhf_policy",
    "group_utilities",
    "group_objective",
    "optimal_objective",
    "alignment_gap",
    "preference_matrix",
    "pooled_preferences",
    "fit_bt_from_preferences",
    "pooled_bt_reward",
    "diversity",
    "standardise",
    "maxmin_group",
    "maxmin_step",
    "maxmin_iterative",
    "maxmin_exact",
    "impossibility_bound",
]


def check_beta(beta: float, name: str = "beta") -> float:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {beta!r}")
    return float(beta)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) over the last axis (0·log 0 = 0)."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300))), 0.0).sum(-1)


def rlhf_policy(r: torch.Tensor, mu: torch.Tensor, beta: float) -> torch.Tensor:
    """KL-regularised optimum π ∝ μ·exp(r/β); r (..., n), μ (n,) → (..., n)."""
    check_beta(beta)
    return torch.softmax(torch.log(mu) + r / beta, dim=-1)


def group_utilities(pi: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """E_π r_u for every group: r (G, n), π (n,) → (G,)."""
    return r @ pi


def group_objective(pi, r, mu, beta) -> torch.Tensor:
    """J_u(π) = E_π r_u − β KL(π‖μ): (G,)."""
    return group_utilities(pi, r) - beta * kl(pi, mu)


def optimal_objective(r, mu, beta) -> torch.Tensor:
    """J_u* = max_π J_u(π) = β log Σ_y μ(y) exp(r_u(y)/β): (G,)."""
    return beta * torch.logsumexp(torch.log(mu) + r / beta, dim=-1)


def alignment_gap(pi, r, mu, beta) -> torch.Tensor:
    """Align-Gap_u(π) = J_u* − J_u(π) ≥ 0 for every group: (G,)."""
    return optimal_objective(r, mu, beta) - group_objective(pi, r, mu, beta)


def preference_matrix(r: torch.Tensor) -> torch.Tensor:
    """BT preference P[..., i, j] = σ(r_i − r_j): r (..., n) → (..., n, n)."""
    return torch.sigmoid(r.unsqueeze(-1) - r.unsqueeze(-2))


def pooled_preferences(r: torch.Tensor, shares) -> torch.Tensor:
    """Population preference Σ_u η_u σ(r_u,i − r_u,j): what pooled annotators report, (n, n)."""
    eta = check_shares(shares).to(r.dtype)
    return torch.einsum("g,gij->ij", eta, preference_matrix(r))


def _pair_weights(n: int, pair_weights, dtype) -> torch.Tensor:
    if pair_weights is None:
        w = torch.ones(n, n, dtype=dtype)
    else:
        w = torch.as_tensor(pair_weights, dtype=dtype)
    return w * (1 - torch.eye(n, dtype=dtype))


def fit_bt_from_preferences(P: torch.Tensor, features: torch.Tensor | None = None, pair_weights=None,
                            l2: float = 1e-8) -> torch.Tensor:
    """Population BT maximum likelihood: the reward a BT model learns from infinitely many
    comparisons of pairs (i, j) drawn with weight ρ_ij and labelled with probability P_ij.

    P: (n, n); features: (n, d) for a linear reward (None → tabular, one-hot features);
    pair_weights ρ: (n, n), uniform over ordered pairs when None — the fit depends on it
    (the NLHF paper's point).  Returns rewards (n,) (centred when tabular).
    """
    n = P.shape[0]
    psi = torch.eye(n, dtype=torch.float64) if features is None else features.to(torch.float64)
    i, j = torch.triu_indices(n, n, offset=1)
    rho = _pair_weights(n, pair_weights, torch.float64)
    w = (rho[i, j] + rho[j, i]).unsqueeze(0)  # (1, M): both orders of the pair, same features
    # label of the unordered pair {i, j}: the ρ-weighted chance that i wins
    p = (rho[i, j] * P[i, j] + rho[j, i] * (1 - P[j, i])) / (rho[i, j] + rho[j, i]).clamp_min(1e-300)
    keep = w[0] > 0
    X = psi[i[keep]] - psi[j[keep]]
    theta = fit_bt_linear(X, w[:, keep], l2=l2, soft_labels=p[keep].to(torch.float64), max_iter=100)[0]
    r = psi @ theta
    return r - r.mean() if features is None else r


def pooled_bt_reward(r: torch.Tensor, shares, features=None, pair_weights=None) -> torch.Tensor:
    """The single reward that RLHF fits on pooled preferences of all groups: (n,)."""
    return fit_bt_from_preferences(pooled_preferences(r, shares), features, pair_weights)


def diversity(r: torch.Tensor, pair_weights=None) -> tuple[float, torch.Tensor]:
    """ε-diversity: min over group pairs (u, v) of the total-variation distance between their
    preference distributions over (pair, outcome) with pairs drawn from ρ:
    TV_uv = E_{(i,j)∼ρ} |σ(r_u,i − r_u,j) − σ(r_v,i − r_v,j)|.  Returns (ε, TV (G, G))."""
    n = r.shape[-1]
    rho = _pair_weights(n, pair_weights, r.dtype)
    rho = rho / rho.sum()
    P = preference_matrix(r)  # (G, n, n)
    tv = torch.einsum("ij,uvij->uv", rho, (P.unsqueeze(1) - P.unsqueeze(0)).abs())
    G = r.shape[0]
    off = tv + torch.diag(torch.full((G,), float("inf"), dtype=r.dtype))
    return (float(off.min()) if G > 1 else 0.0), tv


def standardise(r: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Put every group's reward on one scale: (r_u − E_μ r_u) / sd_μ(r_u), moments under the
    reference policy (the tabular analogue of z-scoring each reward model on base samples).
    MaxMin compares utilities across groups, so its answer depends on this choice."""
    m = r @ mu
    sd = torch.sqrt(((r - m.unsqueeze(-1)) ** 2) @ mu).clamp_min(1e-12)
    return (r - m.unsqueeze(-1)) / sd.unsqueeze(-1)


def maxmin_group(pi: torch.Tensor, r: torch.Tensor) -> int:
    """The worst-off group under π: argmin_u E_π r_u (MaxMin-RLHF Algorithm 2's choice)."""
    return int(group_utilities(pi, r).argmin())


def maxmin_step(pi, r_u, mu, beta, lr) -> torch.Tensor:
    """One KL-regularised mirror-ascent step on group u's objective J_u:
    π' ∝ π^{1−lr·β} μ^{lr·β} exp(lr·r_u)  (the tabular analogue of a policy-gradient step)."""
    a = lr * beta
    if not 0 < a <= 1:
        raise ValueError(f"lr*beta must lie in (0, 1], got {a}")
    return torch.softmax((1 - a) * torch.log(pi) + a * torch.log(mu) + lr * r_u, dim=-1)


def maxmin_iterative(r, mu, beta, n_steps: int = 500, lr: float | None = None):
    """MaxMin-RLHF Algorithm 2 in the tabular case: each step picks the worst-off group
    ``maxmin_group`` and takes a policy step on its reward.  Step size lr_t = lr₀/√(t+1)
    (lr₀ = 0.1/β by default, so the first step moves a tenth of the way).  Returns (last iterate (n,), average iterate (n,), groups (T,),
    min-utility objective of the last and of the average iterate per step (T,), (T,))."""
    check_beta(beta)
    lr0 = 0.1 / beta if lr is None else lr
    pi = mu.clone()
    avg = torch.zeros_like(mu)
    groups, obj_last, obj_avg = [], [], []
    for t in range(n_steps):
        u = maxmin_group(pi, r)
        groups.append(u)
        pi = maxmin_step(pi, r[u], mu, beta, lr0 / math.sqrt(t + 1))
        avg = avg + (pi - avg) / (t + 1)
        obj_last.append(float(group_utilities(pi, r).min() - beta * kl(pi, mu)))
        obj_avg.append(float(group_utilities(avg, r).min() - beta * kl(avg, mu)))
    return pi, avg, torch.tensor(groups), torch.tensor(obj_last), torch.tensor(obj_avg)


def maxmin_exact(r: torch.Tensor, mu: torch.Tensor, beta: float):
    """Exact MaxMin policy through its convex dual.

    max_π min_u E_π r_u − β KL(π‖μ) = min_{w ∈ Δ_G} β log Σ_y μ(y) exp(Σ_u w_u r_u(y)/β),
    and π_MM = π_{wᵀr}.  The dual is smooth and convex (gradient: E_{π_w} r); solved with
    SciPy's SLSQP on the simplex.  Returns (π (n,), w (G,), duality gap ≥ 0, ≈ 0 at optimum).
    """
    check_beta(beta)
    R = r.detach().cpu().double().numpy()
    logmu = torch.log(mu).detach().cpu().double().numpy()
    G = R.shape[0]

    def dual(w):
        z = logmu + (w @ R) / beta
        m = z.max()
        e = np.exp(z - m)
        val = beta * (m + np.log(e.sum()))
        return val, R @ (e / e.sum())

    res = minimize(dual, np.full(G, 1.0 / G), jac=True, method="SLSQP", bounds=[(0, 1)] * G,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-15, "maxiter": 500})
    w = torch.tensor(np.clip(res.x, 0, None) / np.clip(res.x, 0, None).sum(), dtype=r.dtype)
    pi = rlhf_policy(w @ r, mu, beta)
    primal = float(group_utilities(pi, r).min() - beta * kl(pi, mu))
    return pi, w, float(res.fun) - primal


def impossibility_bound(features: torch.Tensor, eps: float, minority_share: float, beta: float,
                        pair_weights=None) -> float:
    """Theorem-1 lower bound on the minority's alignment gap for linear rewards, in the shape
    stated in the paper, λ_ψ · ε · (1 − η(u)) / (64 β² L_π D²), with its constants computed here:
    λ_ψ = smallest eigenvalue of the pair-feature Gram E_ρ[(ψ_i − ψ_j)(ψ_i − ψ_j)ᵀ];
    D = max_y ‖ψ(y)‖; L_π = 2D/β, the Lipschitz constant of θ ↦ log π_θ(y) for π_θ ∝ μ e^{⟨θ,ψ⟩/β}
    (‖∇_θ log π_θ(y)‖ = ‖ψ(y) − E_π ψ‖/β ≤ 2D/β).  The statement is taken from a secondary
    summary of the paper; the constants are our reading of it, so use the curve for its shape
    (linear in ε and in 1 − η(u)) and as a floor the measured gap must clear.
    """
    check_beta(beta)
    n = features.shape[0]
    rho = _pair_weights(n, pair_weights, features.dtype)
    rho = rho / rho.sum()
    diff = features.unsqueeze(1) - features.unsqueeze(0)  # (n, n, d)
    gram = torch.einsum("ij,ijd,ije->de", rho, diff, diff)
    lam = float(torch.linalg.eigvalsh(gram)[0])
    D = float(features.norm(dim=1).max())
    L_pi = 2 * D / beta
    return lam * eps * (1 - minority_share) / (64 * beta**2 * L_pi * D**2)
