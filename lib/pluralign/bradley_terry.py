"""Bradley–Terry preference likelihood and linear/tabular reward fitting.

A comparison says "``chosen`` was preferred to ``rejected``".  Under a Bradley–Terry model
with reward r, ``P(chosen ≻ rejected) = σ(r(chosen) − r(rejected))``.  With a linear reward
``r(y) = ⟨θ, ψ(y)⟩`` the BT log-likelihood is logistic regression on the feature difference
``x = ψ(chosen) − ψ(rejected)``; a tabular reward is the special case ψ = one-hot.

Everything here is batched over K reward models at once (the K clusters of the EM in
:mod:`pluralign.em`) so that one call fits all of them.  The fit is a damped Newton method:
these problems have at most a few dozen parameters per model, where Newton needs 3–6
iterations and beats any first-order optimiser in ``torch.optim``; scikit-learn's
``LogisticRegression`` would need a Python loop over the K weightings and cannot warm-start
a batch of them, which is why this small solver is written out here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Comparisons",
    "bt_log_likelihood",
    "bt_probability",
    "fit_bt_linear",
    "LinearRewardMixture",
]


def bt_probability(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """P(a ≻ b) = σ(r_a − r_b), elementwise (any broadcastable shapes)."""
    return torch.sigmoid(r_a - r_b)


def bt_log_likelihood(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair log-likelihood log σ(r_chosen − r_rejected), elementwise, numerically stable."""
    return F.logsigmoid(r_chosen - r_rejected)


@dataclass
class Comparisons:
    """Pairwise comparisons over a finite item set, each made by one user.

    chosen, rejected: (N,) long item indices; user: (N,) long user ids in [0, n_users);
    features: (n_items, d) item features ψ (identity for a tabular reward);
    group: optional (n_users,) true group of each user (for evaluation only, never for fitting).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    user: torch.Tensor
    features: torch.Tensor
    n_users: int
    group: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.chosen.shape[0]
        if self.rejected.shape[0] != n or self.user.shape[0] != n:
            raise ValueError(
                f"chosen, rejected and user must have the same length, got "
                f"{n}, {self.rejected.shape[0]}, {self.user.shape[0]}"
            )
        if self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if n and (int(self.user.min()) < 0 or int(self.user.max()) >= self.n_users):
            raise ValueError(f"user ids must lie in [0, {self.n_users}), got max {int(self.user.max())}")
        counts = torch.bincount(self.user, minlength=self.n_users)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"user {int(empty[0])} has no comparisons ({empty.numel()} of {self.n_users} users have none)"
            )

    @property
    def n_pairs(self) -> int:
        return int(self.chosen.shape[0])

    def pair_features(self) -> torch.Tensor:
        """(N, d) feature differences ψ(chosen) − ψ(rejected)."""
        return self.features[self.chosen] - self.features[self.rejected]


def fit_bt_linear(
    X: torch.Tensor,
    weights: torch.Tensor,
    theta0: torch.Tensor | None = None,
    l2: float = 1e-2,
    max_iter: int = 50,
    tol: float = 1e-12,
    soft_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit K linear BT rewards by weighted, ridge-regularised maximum likelihood (Newton).

    Minimises, for each k independently,
    ``−Σ_n w_kn [ p_n log σ(θ_k·x_n) + (1 − p_n) log σ(−θ_k·x_n) ] + (l2/2)‖θ_k‖²``
    where p_n = 1 (hard labels, the default) or ``soft_labels`` (population fits).

    Stops when the Newton decrement is below ``tol`` relative to the loss, or after max_iter.
    X: (N, d) feature differences; weights: (K, N) non-negative pair weights;
    theta0: (K, d) warm start (zeros if None). Returns θ: (K, d).
    """
    if X.ndim != 2 or weights.ndim != 2 or weights.shape[1] != X.shape[0]:
        raise ValueError(f"expected X (N, d) and weights (K, N), got {tuple(X.shape)} and {tuple(weights.shape)}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    K, d = weights.shape[0], X.shape[1]
    theta = torch.zeros(K, d, dtype=X.dtype) if theta0 is None else theta0.clone().to(X.dtype)
    w = weights.to(X.dtype)
    p = torch.ones(X.shape[0], dtype=X.dtype) if soft_labels is None else soft_labels.to(X.dtype)
    eye = torch.eye(d, dtype=X.dtype)

    def loss(th):
        logits = th @ X.T
        return -(w * (p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))).sum(-1) + 0.5 * l2 * (th * th).sum(-1)

    f = loss(theta)
    for it in range(max_iter):
        s = torch.sigmoid(theta @ X.T)  # (K, N)
        grad = -((w * (p - s)) @ X) + l2 * theta  # (K, d)
        curv = w * s * (1 - s)  # (K, N)
        H = torch.bmm(X.T.unsqueeze(0) * curv.unsqueeze(1), X.expand(K, -1, -1)) + (l2 + 1e-10) * eye  # (K, d, d)
        step = torch.linalg.solve(H, grad.unsqueeze(-1)).squeeze(-1)  # (K, d)
        # Newton decrement ½ gᵀH⁻¹g estimates f − f*: stop after this step once it is negligible
        done = bool(((grad * step).sum(-1) <= 2 * tol * (1 + f.abs())).all())
        if done and it == 0:  # warm start already optimal (late EM iterations): nothing to do
            break
        # damped Newton: halve each model's step until its loss does not increase
        t = torch.ones(K, 1, dtype=X.dtype)
        for _ in range(30):
            cand = theta - t * step
            f_new = loss(cand)
            bad = f_new > f + 1e-12 * f.abs().clamp_min(1.0)
            if not bool(bad.any()):
                break
            t = torch.where(bad.unsqueeze(-1), t * 0.5, t)
        theta, f = cand, f_new
        if done:
            break
    return theta


class LinearRewardMixture:
    """K linear BT reward models r_k(y) = ⟨θ_k, ψ(y)⟩: the reward-model interface EM drives.

    The interface (also implemented by the neural reward models of the language-model stages):
      ``K``                                   number of reward models
      ``pair_log_likelihood(data) -> (K, N)``  log σ(r_k(chosen) − r_k(rejected))
      ``fit(data, resp (U, K))``               M-step: refit model k on every pair n with weight
                                              resp[user(n), k] (one-hot rows: hard EM), warm-started
      ``state()`` / ``load_state(s)``          snapshot for keeping the best EM restart
    """

    def __init__(self, K: int, d: int, l2: float = 1e-2, max_iter: int = 50):
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        self.K, self.l2, self.max_iter = K, l2, max_iter
        self.theta = torch.zeros(K, d, dtype=torch.float64)
        self._X_cache: tuple[tuple, torch.Tensor] | None = None

    @staticmethod
    def _cache_key(data: Comparisons) -> tuple:
        # The key holds the objects themselves (compared with ``is``), never ``id()``: a freed
        # object's id is reused by CPython, so an id key hands a new dataset the old features.
        # Tensor version counters catch in-place edits of a kept dataset.
        tensors = (data.chosen, data.rejected, data.features)
        return (data, *tensors, tuple(t._version for t in tensors))

    def _X(self, data: Comparisons) -> torch.Tensor:
        """(N, d) float64 pair features of ``data``, computed once per dataset (EM asks each step)."""
        key = self._cache_key(data)
        cached = self._X_cache
        if cached is None or len(cached[0]) != len(key) or not all(
            a is b for a, b in zip(cached[0][:-1], key[:-1])) or cached[0][-1] != key[-1]:
            self._X_cache = (key, data.pair_features().to(torch.float64))
        return self._X_cache[1]

    def rewards(self, features: torch.Tensor) -> torch.Tensor:
        """(K, n_items) rewards of every model on every item."""
        return self.theta @ features.to(torch.float64).T

    def pair_log_likelihood(self, data: Comparisons) -> torch.Tensor:
        return F.logsigmoid(self.theta @ self._X(data).T)

    def fit(self, data: Comparisons, resp: torch.Tensor) -> None:
        X = self._X(data)
        hard = bool(((resp == 0) | (resp == 1)).all()) and bool((resp.sum(1) == 1).all())
        if not hard:
            weights = resp.T.to(X.dtype)[:, data.user]  # (K, N): pair n counts γ[user(n), k]
            self.theta = fit_bt_linear(X, weights, self.theta, l2=self.l2, max_iter=self.max_iter)
            return
        # hard EM: each pair belongs to one cluster, so fit each on its own pairs (K× less work)
        owner = resp.argmax(1)[data.user]  # (N,)
        theta = self.theta.clone()
        for k in range(self.K):
            Xk = X[owner == k]
            theta[k] = fit_bt_linear(Xk, torch.ones(1, Xk.shape[0], dtype=X.dtype), self.theta[k : k + 1],
                                     l2=self.l2, max_iter=self.max_iter)[0]
        self.theta = theta

    def state(self) -> torch.Tensor:
        return self.theta.clone()

    def load_state(self, state: torch.Tensor) -> None:
        self.theta = state.clone()
