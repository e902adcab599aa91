"""Tabular Nash learning from human feedback (Munos et al., 2024).

A preference model P (n, n), P[i, j] = P(y_i ≻ y_j), with P + Pᵀ = 1.  For policies π, π':
P(π ≻ π') = πᵀ P π'.  The regularised game

    P_τ(π ≻ π') = P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ)

is symmetric and has a unique Nash equilibrium π*_τ.  Nash-MD (the paper's update):

    mixture   π_t^μ(y) ∝ π_t(y)^{1−η_t τ} μ(y)^{η_t τ}
    update    π_{t+1}(y) ∝ π_t^μ(y) · exp(η_t · P(y ≻ π_t^μ))

With η_t = 2/(τ(t+2)) the last iterate satisfies KL(π*_τ‖π_T) ≤ 8/(τ²(T+1)).
Contrast dynamics share the form π_{t+1} ∝ π_t^{1−ητ} μ^{ητ} exp(η P(y ≻ opponent_t)):
online mirror descent (opponent π_t), best response (opponent μ); and unregularised self-play
(multiplicative weights against itself, no pull to μ).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linprog, minimize, root

from .tabular import kl

__all__ = [
    "check_tau",
    "check_preference",
    "geometric_mixture",
    "nash_md_step",
    "omd_step",
    "best_response_step",
    "self_play_step",
    "step_size",
    "run_dynamics",
    "exploitability",
    "regularised_nash",
    "nash_equilibrium",
    "kl_bound",
]


def check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_preference(P: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """P must be square, in [0, 1], with P + Pᵀ = 1 (so P_ii = ½)."""
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"preference matrix must be square (n, n), got shape {tuple(P.shape)}")
    if bool((P < -atol).any() | (P > 1 + atol).any()):
        raise ValueError("preference matrix entries must lie in [0, 1]")
    err = float((P + P.T - 1).abs().max())
    if err > atol:
        raise ValueError(f"preference matrix must satisfy P + Pᵀ = 1, off by {err:.3g}")
    return P


def geometric_mixture(pi: torch.Tensor, mu: torch.Tensor, weight: float) -> torch.Tensor:
    """π^μ ∝ π^{1−weight} μ^{weight}: (n,)."""
    return torch.softmax((1 - weight) * torch.log(pi) + weight * torch.log(mu), dim=-1)


def _regularised_step(pi, mu, P, opponent, eta, tau):
    a = eta * tau
    if not 0 <= a <= 1:
        raise ValueError(f"eta*tau must lie in [0, 1], got {a}")
    return torch.softmax((1 - a) * torch.log(pi) + a * torch.log(mu) + eta * (P @ opponent), dim=-1)


def nash_md_step(pi, mu, P, eta, tau) -> torch.Tensor:
    """One Nash-MD step: mixture π^μ with weight ητ, then π' ∝ π^μ · exp(η P(y ≻ π^μ))."""
    mix = geometric_mixture(pi, mu, eta * tau)
    return torch.softmax(torch.log(mix) + eta * (P @ mix), dim=-1)


def omd_step(pi, mu, P, eta, tau) -> torch.Tensor:
    """Online mirror descent on the regularised game against the current policy π_t."""
    return _regularised_step(pi, mu, P, pi, eta, tau)


def best_response_step(pi, mu, P, eta, tau) -> torch.Tensor:
    """Mirror descent against the fixed reference μ: converges to the regularised best
    response to μ, π ∝ μ·exp(P(y ≻ μ)/τ) — what RLHF-style optimisation of P(· ≻ μ) finds."""
    return _regularised_step(pi, mu, P, mu, eta, tau)


def self_play_step(pi, mu, P, eta, tau) -> torch.Tensor:
    """Unregularised self-play: multiplicative weights π' ∝ π·exp(η P(y ≻ π)) (ignores μ, τ)."""
    return torch.softmax(torch.log(pi) + eta * (P @ pi), dim=-1)


STEPS = {"nash_md": nash_md_step, "omd": omd_step, "best_response": best_response_step, "self_play": self_play_step}


def step_size(t: int, tau: float, schedule: str | float = "paper") -> float:
    """η_t: 'paper' → 2/(τ(t+2)) (the theorem's schedule, η_0 τ = 1); a number → constant."""
    if schedule == "paper":
        return 2.0 / (tau * (t + 2))
    eta = float(schedule)
    if not eta > 0:
        raise ValueError(f"step size must be > 0, got {schedule!r}")
    return eta


def run_dynamics(method: str, P, mu, tau: float, T: int, schedule="paper", pi0=None):
    """Run one of ``nash_md | omd | best_response | self_play`` for T steps from π_0 (μ by default).

    Returns (iterates (T+1, n) with π_0 first, running average iterate (T+1, n))."""
    if method not in STEPS:
        raise ValueError(f"method must be one of {sorted(STEPS)}, got {method!r}")
    check_tau(tau)
    check_preference(P)
    step = STEPS[method]
    pi = mu.clone() if pi0 is None else pi0.clone()
    traj = [pi]
    for t in range(T):
        pi = step(pi, mu, P, step_size(t, tau, schedule), tau)
        traj.append(pi)
    traj = torch.stack(traj)
    avg = torch.cumsum(traj, 0) / torch.arange(1, T + 2, dtype=traj.dtype).unsqueeze(1)
    return traj, avg


def exploitability(pi: torch.Tensor, P: torch.Tensor, mu: torch.Tensor, tau: float) -> torch.Tensor:
    """How much a best responder gains in the regularised game: max_π' P_τ(π' ≻ π) − ½ ≥ 0,
    zero exactly at π*_τ.  Closed form: τ log Σ_y μ(y) exp(P(y ≻ π)/τ) + τ KL(π‖μ) − ½.
    π may be batched (..., n)."""
    Ppi = pi @ P.T  # (..., n): P(y ≻ π)
    return tau * torch.logsumexp(torch.log(mu) + Ppi / tau, dim=-1) + tau * kl(pi, mu) - 0.5


def regularised_nash(P: torch.Tensor, mu: torch.Tensor, tau: float) -> torch.Tensor:
    """π*_τ computed independently of the dynamics, to check them against.

    First minimise the (convex) exploitability with SciPy L-BFGS over logits; then solve the
    equilibrium condition log π = log μ + P π / τ − log Z exactly with SciPy's root finder
    (logits with the last one pinned to 0).  Keeps whichever point is less exploitable. (n,)."""
    check_tau(tau)
    check_preference(P)
    Pd, mud = P.double(), mu.double()
    logmu = torch.log(mud)

    def f(z):
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        e = exploitability(torch.softmax(zt, 0), Pd, mud, tau)
        e.backward()
        return float(e.detach()), zt.grad.numpy()

    res = minimize(f, logmu.numpy(), jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
    z0 = torch.tensor(res.x) - float(res.x[-1])

    def condition(z_free):
        z = torch.cat([torch.tensor(z_free), torch.zeros(1, dtype=torch.float64)])
        G = z - logmu - Pd @ torch.softmax(z, 0) / tau
        return (G - G[-1])[:-1].numpy()

    sol = root(condition, z0[:-1].numpy(), method="hybr", options={"xtol": 1e-14})
    candidates = [torch.softmax(z0, 0)]
    if sol.success:
        candidates.append(torch.softmax(torch.cat([torch.tensor(sol.x), torch.zeros(1, dtype=torch.float64)]), 0))
    best = min(candidates, key=lambda p: float(exploitability(p, Pd, mud, tau)))
    return best.to(P.dtype)


def nash_equilibrium(P: torch.Tensor, vertices: torch.Tensor | None = None) -> torch.Tensor:
    """A (maximin) Nash equilibrium of the unregularised symmetric game, by linear programming:
    maximise v s.t. P(π ≻ π') ≥ v for every π' in the policy set, π in the set (v* = ½).

    The set is the simplex, or the convex hull of ``vertices`` (m, n) when given (a restricted
    policy class, as in the paper's constrained example).  Returns π (n,)."""
    check_preference(P)
    V = torch.eye(P.shape[0], dtype=torch.float64) if vertices is None else vertices.double()
    A = (V @ P.double() @ V.T).numpy()  # payoff between vertices
    n = A.shape[0]
    # variables (π_1..π_n, v): maximise v  ⇔  minimise −v;  v − Σ_i π_i A[i, y] ≤ 0 ∀y
    c = np.r_[np.zeros(n), -1.0]
    A_ub = np.c_[-A.T, np.ones(n)]
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0],
                  bounds=[(0, None)] * n + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"linear program failed: {res.message}")
    return (torch.tensor(res.x[:n], dtype=torch.float64) @ V).to(P.dtype)


def kl_bound(tau: float, T) -> torch.Tensor:
    """The paper's last-iterate bound KL(π*_τ‖π_T) ≤ 8/(τ²(T+1)) for η_t = 2/(τ(t+2))."""
    return 8.0 / (tau**2 * (torch.as_tensor(T, dtype=torch.float64) + 1))
