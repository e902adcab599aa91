#!/usr/bin/env python
"""Tabular-layer benchmarks, each against a straightforward implementation in the same run.

1. EM over users: 10^6 comparisons, 10^4 users, K = 4, 20 iterations (target: < 5 s on 2 cores),
   against a per-user-loop EM (E-step: one likelihood evaluation per user; M-step: scikit-learn
   LogisticRegression per cluster).  The baseline runs 2 iterations; the ratio compares time per
   iteration.
2. Nash-MD on 10^4 actions: vectorised step against a per-action loop for P(y ≻ π^μ).

    python benchmarks/bench_tabular.py [--quick]     # writes results/benchmarks/tabular.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
from pluralign import em, games, nash, simulate  # noqa: E402
from pluralign.bradley_terry import LinearRewardMixture  # noqa: E402


def naive_em(data, K, n_iter, seed, l2=1e-2):
    """EM written the obvious way: loop over users in the E-step, sklearn per cluster in the M-step."""
    X = data.pair_features().numpy()
    users = data.user.numpy()
    rows_of = [np.flatnonzero(users == h) for h in range(data.n_users)]
    rng = np.random.default_rng(seed)
    assign = rng.integers(K, size=data.n_users)
    theta = np.zeros((K, X.shape[1]))
    for _ in range(n_iter):
        owner = assign[users]
        for k in range(K):
            Xk = X[owner == k]
            if len(Xk) < 2:  # an emptied cluster keeps its reward
                continue
            # logistic regression needs both classes: present every other pair reversed
            sign = np.where(np.arange(len(Xk)) % 2 == 0, 1.0, -1.0)
            lr = LogisticRegression(C=1.0 / l2, fit_intercept=False, max_iter=200)
            lr.fit(Xk * sign[:, None], (sign > 0).astype(int))
            theta[k] = lr.coef_[0]
        for h in range(data.n_users):
            z = X[rows_of[h]] @ theta.T  # (n_h, K)
            assign[h] = int((-np.logaddexp(0.0, -z)).sum(0).argmax())
    return assign


def naive_nash_md_step(pi, mu, P, eta, tau):
    mix = pi ** (1 - eta * tau) * mu ** (eta * tau)
    mix = mix / mix.sum()
    wins = np.empty_like(pi)
    for y in range(len(pi)):  # P(y ≻ π^μ), one action at a time
        wins[y] = P[y] @ mix
    new = mix * np.exp(eta * wins)
    return new / new.sum()


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10x smaller problems (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "tabular.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    scale = 10 if args.quick else 1
    report = {"machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__, "processor": platform.processor() or platform.machine()}}

    # 1. EM
    n_users, per_user, K, iters = 10_000 // scale, 100, 4, 20
    g = torch.Generator().manual_seed(0)
    feats = simulate.random_features(1000, 8, g)
    theta = simulate.group_rewards(K, 8, 1.0, 3.0, g)
    data = simulate.simulate_comparisons(feats, theta, [1 / K] * K, n_users, per_user, g)
    ours, res = timed(lambda: em.mixture_em(lambda: LinearRewardMixture(K, 8), data, n_init=1, init="random",
                                            max_iter=iters, seed=0), repeat=2)
    base_iters = 2
    base, _ = timed(lambda: naive_em(data, K, base_iters, 0))
    report["em"] = {
        "comparisons": data.n_pairs, "users": n_users, "K": K, "iterations_run": res.n_iter,
        "seconds": ours, "seconds_per_iteration": ours / res.n_iter,
        "baseline_seconds_per_iteration": base / base_iters,
        "speedup_per_iteration": (base / base_iters) / (ours / res.n_iter),
        "target_seconds": 5.0, "meets_target": ours < 5.0 or args.quick,
        "purity": em.purity(res.assignment, data.group),
    }
    print(f"EM: {data.n_pairs:,} comparisons, {n_users:,} users, K={K}, {res.n_iter} iterations: {ours:.2f} s "
          f"({ours / res.n_iter * 1e3:.0f} ms/iter); per-user loop: {base / base_iters * 1e3:.0f} ms/iter "
          f"→ {report['em']['speedup_per_iteration']:.1f}x")

    # 2. Nash-MD
    n, steps = 10_000 // scale, 20
    P = games.random_preference(n, torch.Generator().manual_seed(1)).float()
    mu = torch.full((n,), 1.0 / n)
    tau = 0.1

    def ours_run():
        pi = mu.clone()
        for t in range(steps):
            pi = nash.nash_md_step(pi, mu, P, nash.step_size(t, tau), tau)
        return pi

    t_ours, pi_ours = timed(ours_run, repeat=2)
    Pn, mun = P.numpy(), mu.numpy()

    def naive_run():
        pi = mun.copy()
        for t in range(steps):
            pi = naive_nash_md_step(pi, mun, Pn, nash.step_size(t, tau), tau)
        return pi

    t_base, pi_base = timed(naive_run)
    report["nash_md"] = {"actions": n, "steps": steps, "seconds_per_step": t_ours / steps,
                         "baseline_seconds_per_step": t_base / steps, "speedup": t_base / t_ours,
                         "max_abs_difference": float(np.abs(pi_ours.numpy() - pi_base).max())}
    print(f"Nash-MD: {n:,} actions: {t_ours / steps * 1e3:.1f} ms/step; per-action loop: "
          f"{t_base / steps * 1e3:.1f} ms/step → {report['nash_md']['speedup']:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
