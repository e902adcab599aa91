"""Experiment drivers shared by the notebooks and the tests: each builds a small world from a
seed, runs the kernels and returns a tidy table (pandas DataFrame) or a dict of numbers.
Notebooks only call these and draw; tests assert the papers' claims on the same numbers."""
from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm import tqdm

from . import em, games, nash, simulate, tabular
from .bradley_terry import Comparisons, LinearRewardMixture

__all__ = [
    "linear_world",
    "two_group_rewards",
    "compare_policies",
    "impossibility_sweep",
    "em_world",
    "em_recovery",
    "em_sweep",
    "nash_convergence",
    "condorcet_policies",
    "condorcet_sweep",
]


# ---------------------------------------------------------------------------- impossibility
def linear_world(n_items: int, seed: int, d: int = 2):
    """Items with features ψ ~ N(0, I_d) (n, d) and a uniform reference policy μ (n,)."""
    g = torch.Generator().manual_seed(seed)
    return simulate.random_features(n_items, d, g), torch.full((n_items,), 1.0 / n_items, dtype=torch.float64)


def two_group_rewards(features, mu, angle_deg: float, scale: float, n_groups: int = 2) -> torch.Tensor:
    """(G, n) linear rewards whose directions are spread by ``angle_deg`` (group u at u·angle),
    each z-scored under μ and multiplied by ``scale`` (how decisive the group's annotators are).
    Angle 0: one shared reward (ε = 0); 180: opposite tastes (largest ε)."""
    a = torch.tensor([math.radians(angle_deg) * u for u in range(n_groups)], dtype=torch.float64)
    theta = torch.stack([torch.cos(a), torch.sin(a)], 1)  # (G, 2)
    return scale * tabular.standardise(theta @ features[:, :2].T, mu)


def compare_policies(r, shares, mu, beta, features=None) -> dict:
    """Single-reward RLHF (BT fitted on pooled preferences, then π ∝ μ e^{r̂/β}) against MaxMin
    (exact) on the true group rewards r (G, n).  Returns the policies and per-group numbers."""
    r_hat = tabular.pooled_bt_reward(r, shares, features)
    out = {"reward_pooled": r_hat}
    for name, pi in (("rlhf", tabular.rlhf_policy(r_hat, mu, beta)), ("maxmin", tabular.maxmin_exact(r, mu, beta)[0])):
        out[name] = {
            "policy": pi,
            "utility": tabular.group_utilities(pi, r),
            "objective": tabular.group_objective(pi, r, mu, beta),
            "gap": tabular.alignment_gap(pi, r, mu, beta),
        }
    return out


def impossibility_sweep(features, mu, beta, scale, minority_shares, angles_deg) -> pd.DataFrame:
    """Two groups (majority 0, minority 1) over a grid of minority share η and reward angle.
    One row per (η, angle): ε-diversity, the Theorem-1 bound, and for RLHF and MaxMin each
    group's alignment gap and regularised objective J_u."""
    rows = []
    for eta in minority_shares:
        for ang in angles_deg:
            r = two_group_rewards(features, mu, ang, scale)
            eps, _ = tabular.diversity(r)
            res = compare_policies(r, [1 - eta, eta], mu, beta, features)
            row = {"minority_share": eta, "angle_deg": ang, "epsilon": eps,
                   "bound": tabular.impossibility_bound(features, eps, eta, beta)}
            for m in ("rlhf", "maxmin"):
                for u, who in enumerate(("majority", "minority")):
                    row[f"{m}_gap_{who}"] = float(res[m]["gap"][u])
                    row[f"{m}_objective_{who}"] = float(res[m]["objective"][u])
                row[f"{m}_worst_objective"] = float(res[m]["objective"].min())
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- EM
def em_world(K, shares, n_users, per_user, separation, d, n_items, scale, seed):
    """A train and a held-out population drawn from the same K groups: (train, test, θ (K, d))."""
    g = torch.Generator().manual_seed(seed)
    features = simulate.random_features(n_items, d, g)
    theta = simulate.group_rewards(K, d, separation, scale, g)
    train = simulate.simulate_comparisons(features, theta, shares, n_users, per_user, g)
    test = simulate.simulate_comparisons(features, theta, shares, n_users, per_user, g)
    return train, test, theta


def pairwise_accuracy(model: LinearRewardMixture, data: Comparisons, k_of_user: torch.Tensor) -> torch.Tensor:
    """Per pair, 1.0 if the labelling user's reward model (``k_of_user``) ranks the chosen item
    higher, else 0.0: (N,)."""
    r = model.rewards(data.features)  # (K, n_items)
    k = k_of_user[data.user]
    return (r[k, data.chosen] > r[k, data.rejected]).double()


def em_recovery(K, shares, n_users, per_user, separation, d, n_items, scale, seed,
                n_init=4, init="mixed", max_iter=20, soft=False, l2=1e-2, K_fit=None, keep=False) -> dict:
    """Simulate users, run EM with K_fit (default K) clusters, and score it: train purity and
    adjusted Rand, held-out users assigned by likelihood (purity), held-out pairwise accuracy of
    the EM models, of one pooled reward (K=1) and of oracle per-group rewards, per true group."""
    train, test, theta = em_world(K, shares, n_users, per_user, separation, d, n_items, scale, seed)
    Kf = K if K_fit is None else K_fit
    res = em.mixture_em(lambda: LinearRewardMixture(Kf, d, l2=l2), train, n_init=n_init, init=init,
                        max_iter=max_iter, soft=soft, seed=seed)
    test_assign = em.assign_users(res.model, test)
    pooled = LinearRewardMixture(1, d, l2=l2)
    pooled.fit(train, torch.ones(train.n_users, 1, dtype=torch.float64))
    oracle = LinearRewardMixture(K, d, l2=l2)
    oracle.fit(train, torch.nn.functional.one_hot(train.group, K).double())
    acc = {
        "em": pairwise_accuracy(res.model, test, test_assign),
        "pooled": pairwise_accuracy(pooled, test, torch.zeros(test.n_users, dtype=torch.long)),
        "oracle": pairwise_accuracy(oracle, test, test.group),
    }
    g_pair = test.group[test.user]
    out = {
        "purity": em.purity(res.assignment, train.group),
        "ari": em.adjusted_rand(res.assignment, train.group),
        "heldout_purity": em.purity(test_assign, test.group),
        "n_iter": res.n_iter,
        "converged": res.converged,
        "log_likelihood": res.log_likelihood,
        "n_changed": res.n_changed,
        "restart_log_likelihoods": res.restart_log_likelihoods,
        "accuracy": {m: [float(a[g_pair == k].mean()) for k in range(K)] for m, a in acc.items()},
    }
    if keep:
        out.update(train=train, test=test, theta=theta, result=res, test_assignment=test_assign)
    return out


def em_sweep(base: dict, name: str, values, n_reps: int, progress: bool = True) -> pd.DataFrame:
    """Vary one argument of :func:`em_recovery` over ``values`` (n_reps seeds each): tidy table."""
    rows = []
    for v in tqdm(values, desc=f"sweep {name}", disable=not progress):
        for rep in range(n_reps):
            kw = dict(base, **{name: v})
            if name == "K":
                kw["shares"] = [1.0 / v] * v
            kw["seed"] = base["seed"] * 1000 + rep
            r = em_recovery(**kw)
            rows.append({name: v, "rep": rep, "purity": r["purity"], "ari": r["ari"],
                         "heldout_purity": r["heldout_purity"], "n_iter": r["n_iter"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- Nash-MD
def nash_convergence(P, mu, tau, T, schedule="paper", methods=("nash_md", "omd", "best_response", "self_play")) -> pd.DataFrame:
    """Run each dynamic for T steps; per step: KL(π*_τ‖π_t) of the last and the average iterate,
    the exploitability of the last iterate, and the paper's bound 8/(τ²(t+1))."""
    star = nash.regularised_nash(P, mu, tau)
    frames = []
    t = torch.arange(T + 1)
    for m in methods:
        traj, avg = nash.run_dynamics(m, P, mu, tau, T, schedule)
        frames.append(pd.DataFrame({
            "method": m, "t": t.numpy(),
            "kl_last": tabular.kl(star.expand_as(traj), traj).numpy(),
            "kl_average": tabular.kl(star.expand_as(avg), avg).numpy(),
            "exploitability": nash.exploitability(traj, P, mu, tau).numpy(),
            "bound": nash.kl_bound(tau, t).numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------- Condorcet users
def condorcet_policies(shares, scale: float, beta: float) -> dict:
    """Three groups whose pooled preference is cyclic (:func:`games.condorcet_rewards`), uniform μ,
    and what each method makes of them at regularisation β (τ = β for Nash):

      rlhf    single reward fitted by BT on the pooled preference, then π ∝ μ exp(r/β)
      maxmin  the exact egalitarian policy, max_π min_g E_π r_g − β KL(π‖μ)
      nash    the regularised Nash equilibrium of the pooled preference (Nash-MD's limit)

    Returns {"P": pooled (3, 3), "groups": per-group BT preferences (3, 3, 3), "r": (3, 3),
    "policies": {method: π (3,)}}."""
    r = games.condorcet_rewards(scale)
    mu = torch.full((3,), 1.0 / 3, dtype=torch.float64)
    P = tabular.pooled_preferences(r, shares)
    policies = {
        "rlhf": tabular.rlhf_policy(tabular.pooled_bt_reward(r, shares), mu, beta),
        "maxmin": tabular.maxmin_exact(r, mu, beta)[0],
        "nash": nash.regularised_nash(P, mu, beta),
    }
    return {"P": P, "groups": tabular.preference_matrix(r), "r": r, "mu": mu, "policies": policies}


def condorcet_sweep(first_shares, scale: float, beta: float) -> pd.DataFrame:
    """Vary the first group's share (the other two split the rest equally).  Per method and
    group: the group's win rate against the reference policy, P_g(π ≻ μ) = πᵀ P_g μ, and its mean
    reward; plus the pooled win rate, the exploitability in the pooled game and whether the
    pooled preference has a Condorcet winner (a response beating both others)."""
    rows = []
    for s0 in first_shares:
        shares = [s0, (1 - s0) / 2, (1 - s0) / 2]
        w = condorcet_policies(shares, scale, beta)
        P, Pg, mu = w["P"], w["groups"], w["mu"]
        off = P + torch.eye(3, dtype=P.dtype)  # ignore the diagonal's ½
        winner = bool(((off > 0.5).sum(1) == 3).any())
        for m, pi in w["policies"].items():
            base = {"share_first": s0, "method": m, "condorcet_winner": winner,
                    "pooled_win_vs_mu": float(pi @ P @ mu),
                    "exploitability": float(nash.exploitability(pi, P, mu, beta)),
                    **{f"pi_{y}": float(pi[y]) for y in range(3)}}
            for g in range(3):
                rows.append(dict(base, group=g, win_vs_mu=float(pi @ Pg[g] @ mu), reward=float(w["r"][g] @ pi)))
    return pd.DataFrame(rows)
