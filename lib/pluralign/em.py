"""EM for a mixture of Bradley–Terry reward models over *users* (MaxMin-RLHF, Algorithm 1).

Each user h belongs to one of K latent groups; all of h's comparisons follow that group's
BT reward.  One iteration:

  E-step  ``S[h, k] = Σ_{pairs n of h} log σ(r_k(chosen_n) − r_k(rejected_n))``
          hard: h → argmax_k S[h, k];  soft: γ[h, k] ∝ π_k exp(S[h, k])
  M-step  refit every r_k on its users' pairs (weights γ[user(n), k]), warm-started.

Stops when no user changes cluster (hard), when the log-likelihood moves less than ``tol``
(soft), or after ``max_iter`` iterations.  Several initialisations (the authors' round-robin
assignment and random ones) are run and the best final log-likelihood is kept.

The kernel is generic over the reward-model interface documented in
:class:`pluralign.bradley_terry.LinearRewardMixture`: ``K``, ``pair_log_likelihood``,
``fit``, ``state``/``load_state``.  Neural reward models implement the same four members.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import math

import torch
from sklearn.metrics import adjusted_rand_score
from tqdm import tqdm

__all__ = [
    "RewardMixture",
    "EMResult",
    "user_log_likelihood",
    "initial_assignment",
    "e_step",
    "m_step",
    "mixture_em",
    "assign_users",
    "purity",
    "adjusted_rand",
]

INITS = ("round_robin", "random", "mixed", "split", "split+round_robin")


class RewardMixture(Protocol):
    K: int

    def pair_log_likelihood(self, data) -> torch.Tensor: ...  # (K, N)

    def fit(self, data, resp: torch.Tensor) -> None: ...  # resp (U, K): pair n weighs resp[user(n), k]

    def state(self): ...

    def load_state(self, state) -> None: ...


@dataclass
class EMResult:
    """Outcome of the best restart.

    assignment: (U,) hard cluster of each user; responsibilities: (U, K);
    log_likelihood: per-iteration objective (hard: Σ_h max_k S; soft: Σ_h log Σ_k π_k e^S);
    n_changed: users that changed cluster at each iteration; restart_log_likelihoods: final
    objective of every restart, in the order run; best_restart: index into it.
    """

    assignment: torch.Tensor
    responsibilities: torch.Tensor
    model: object
    log_likelihood: list[float]
    n_changed: list[int]
    converged: bool
    n_iter: int
    restart_log_likelihoods: list[float] = field(default_factory=list)
    restart_inits: list[str] = field(default_factory=list)
    best_restart: int = 0


def user_log_likelihood(pair_ll: torch.Tensor, user: torch.Tensor, n_users: int) -> torch.Tensor:
    """Sum per-pair log-likelihoods (K, N) over each user's pairs → (U, K)."""
    K = pair_ll.shape[0]
    S = torch.zeros(n_users, K, dtype=pair_ll.dtype)
    return S.index_add_(0, user, pair_ll.T)


def initial_assignment(n_users: int, K: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """(U,) starting clusters: ``round_robin`` (user h → h mod K, the authors' choice) or ``random``."""
    if init == "round_robin":
        return torch.arange(n_users) % K
    if init == "random":
        return torch.randint(K, (n_users,), generator=generator)
    raise ValueError(f"init must be 'round_robin' or 'random', got {init!r}")


def split_assignment(model: RewardMixture, data) -> torch.Tensor:
    """(U,) starting clusters from one pooled fit (ours, not the paper's; ``init="split"``).

    Everyone starts in cluster 0 and one M-step fits its reward on all pairs (the other models are
    left untouched).  The users that this pooled reward explains *worse than a coin* — mean pair
    log-likelihood below log ½ — are the seed of the other clusters, and at least the worst
    ⌈U / 2K⌉ users (at most U − 1), dealt to clusters 1 … K−1 from the worst up.  The floor keeps the
    seed large enough to train a reward on, also when the pooled reward leans towards the minority
    (then the seed is the majority users it explains worst, which separates the groups as well).  Why: with a small minority, a round-robin or random
    start puts a few minority users in every cluster, each cluster's reward then learns the
    majority's trait, and hard EM stops there (it does on the GPT-2 users at 10:1).  A pooled
    reward is what the minority disagrees with, so its worst-explained users are mostly minority.
    ``model`` is warm-started by this fit (cluster 0 holds the pooled reward)."""
    K, U = model.K, data.n_users
    m_step(model, data, torch.nn.functional.one_hot(torch.zeros(U, dtype=torch.long), K).to(torch.float64))
    S = user_log_likelihood(model.pair_log_likelihood(data).to(torch.float64), data.user, U)[:, 0]
    per_pair = S / torch.bincount(data.user, minlength=U).clamp_min(1).to(S.dtype)
    n_out = min(max(int((per_pair < -math.log(2.0)).sum()), K - 1), U - 1)
    assign = torch.zeros(U, dtype=torch.long)
    worst = per_pair.argsort()[:n_out]
    assign[worst] = 1 + torch.arange(n_out) % (K - 1)
    return assign


def e_step(S: torch.Tensor, soft: bool, log_mix: torch.Tensor) -> torch.Tensor:
    """Responsibilities (U, K) from per-user log-likelihoods S (U, K): one-hot argmax (hard)
    or the posterior softmax(log π + S) (soft)."""
    if soft:
        return torch.softmax(S + log_mix, dim=1)
    return torch.nn.functional.one_hot(S.argmax(1), S.shape[1]).to(S.dtype)


def m_step(model: RewardMixture, data, resp: torch.Tensor) -> None:
    """Refit every reward model on pair weights w[k, n] = γ[user(n), k] (warm start)."""
    model.fit(data, resp)


def _fill_empty_clusters(resp: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Hard EM can empty a cluster; give each empty one the user its current cluster explains
    worst (lowest best log-likelihood), so K stays K.  Only used in the hard variant."""
    assign = resp.argmax(1)
    counts = torch.bincount(assign, minlength=resp.shape[1])
    best = S.max(1).values.clone()
    for k in (counts == 0).nonzero().flatten().tolist():
        donors = counts[assign] > 1  # never empty another cluster
        if not bool(donors.any()):
            break
        h = int(torch.where(donors, best, torch.full_like(best, float("inf"))).argmin())
        counts[assign[h]] -= 1
        assign[h] = k
        counts[k] += 1
        best[h] = float("inf")
    return torch.nn.functional.one_hot(assign, resp.shape[1]).to(resp.dtype)


def _objective(S: torch.Tensor, soft: bool, log_mix: torch.Tensor) -> float:
    if soft:
        return float(torch.logsumexp(S + log_mix, dim=1).sum())
    return float(S.max(1).values.sum())


def _run_once(model: RewardMixture, data, init_assign: torch.Tensor, soft: bool, max_iter: int, tol: float):
    K = model.K
    resp = torch.nn.functional.one_hot(init_assign, K).to(torch.float64)
    log_mix = torch.full((K,), -float(torch.log(torch.tensor(float(K)))), dtype=torch.float64)
    history, changed = [], []
    assign = init_assign.clone()
    converged = False
    for it in range(max_iter):
        m_step(model, data, resp)
        S = user_log_likelihood(model.pair_log_likelihood(data).to(torch.float64), data.user, data.n_users)
        if soft:
            log_mix = torch.log(resp.mean(0).clamp_min(1e-12))
        new_resp = e_step(S, soft, log_mix)
        if not soft:
            new_resp = _fill_empty_clusters(new_resp, S)
        new_assign = new_resp.argmax(1)
        n_changed = int((new_assign != assign).sum())
        history.append(_objective(S, soft, log_mix))
        changed.append(n_changed)
        resp, assign = new_resp, new_assign
        if soft:
            if it > 0 and abs(history[-1] - history[-2]) <= tol * max(1.0, abs(history[-1])):
                converged = True
                break
        elif n_changed == 0:
            converged = True
            break
    return resp, history, changed, converged, it + 1


def mixture_em(
    make_model: Callable[[], RewardMixture],
    data,
    n_init: int = 4,
    init: str = "mixed",
    max_iter: int = 20,
    soft: bool = False,
    tol: float = 1e-6,
    seed: int = 0,
    progress: bool = False,
) -> EMResult:
    """Fit a K-mixture of reward models to users' comparisons (MaxMin-RLHF Algorithm 1).

    make_model: returns a fresh reward mixture (K models) — called once per restart;
    data: comparisons with ``user`` (N,) and ``n_users`` (e.g. :class:`Comparisons`);
    init: 'round_robin' (one deterministic run), 'random' (n_init random starts), 'mixed'
    (round-robin first, then n_init − 1 random starts), 'split' (one deterministic run from a
    pooled fit's worst-explained users, :func:`split_assignment`; ours) or 'split+round_robin'
    (both deterministic runs; n_init is ignored by the deterministic choices).  Returns the best restart by final
    log-likelihood.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    gen = torch.Generator().manual_seed(seed)
    inits = {"round_robin": ["round_robin"], "split": ["split"], "random": ["random"] * n_init,
             "mixed": ["round_robin"] + ["random"] * (n_init - 1), "split+round_robin": ["split", "round_robin"]}[init]
    best = None
    finals, bar = [], tqdm(inits, desc="EM restarts", disable=not progress, leave=False)
    for r, how in enumerate(bar):
        model = make_model()
        if model.K > data.n_users:
            raise ValueError(f"K={model.K} clusters exceeds the {data.n_users} users")
        if how == "split" and model.K == 1:
            how = "round_robin"  # one cluster: nothing to split
        a0 = split_assignment(model, data) if how == "split" else initial_assignment(data.n_users, model.K, how, gen)
        resp, hist, changed, conv, n_it = _run_once(model, data, a0, soft, max_iter, tol)
        finals.append(hist[-1])
        if best is None or hist[-1] > best.log_likelihood[-1]:
            best = EMResult(resp.argmax(1), resp, model, hist, changed, conv, n_it, best_restart=r)
    best.restart_log_likelihoods, best.restart_inits = finals, inits
    return best


def assign_users(model: RewardMixture, data) -> torch.Tensor:
    """(U,) cluster of each (e.g. held-out) user: argmax_k of its summed BT log-likelihood."""
    S = user_log_likelihood(model.pair_log_likelihood(data), data.user, data.n_users)
    return S.argmax(1)


def purity(assignment: torch.Tensor, group: torch.Tensor) -> float:
    """Σ_k max_g |cluster k ∩ group g| / U: 1 when every cluster holds a single true group."""
    a, g = torch.as_tensor(assignment).long(), torch.as_tensor(group).long()
    table = torch.zeros(int(a.max()) + 1, int(g.max()) + 1, dtype=torch.long)
    table.index_put_((a, g), torch.ones_like(a), accumulate=True)
    return float(table.max(1).values.sum()) / a.numel()


def adjusted_rand(assignment: torch.Tensor, group: torch.Tensor) -> float:
    """Adjusted Rand index (scikit-learn): 1 for identical partitions, ≈0 for chance."""
    return float(adjusted_rand_score(torch.as_tensor(group).tolist(), torch.as_tensor(assignment).tolist()))
