"""The GPT-2 reward stage's work for one majority:minority ratio, as one job: a pooled reward
model, EM-clustered reward models and (where asked) oracle per-group models, all with TRL's
``RewardTrainer`` on the ratio's training users, saved with ``save_pretrained`` and scored on
the held-out users.  Ratios are independent, so the stage runs them on a process pool
(:func:`pluralign.parallel.map_processes`)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import em, lm
from . import reward_models as rm
from .preferences import PreferencePairs

__all__ = ["fit_ratio"]


def fit_ratio(ctx: dict, ratio) -> dict:
    """Fit and save every reward model of one ratio.  ctx: base (policy folder), preferences (the
    label stage's folder), out (where ``ratio_<r>/<model>`` go), seed, K, epochs, lr, batch_size,
    em_iterations, em_init, em_restarts, oracle_ratios (the ratios that also get oracle models).  Returns
    {"accuracy": rows (ratio, model, majority, minority), "em": one row of EM numbers,
    "trace": EM's per-iteration log-likelihood and users moved}."""
    from datasets import load_from_disk

    torch.manual_seed(ctx["seed"])  # the same numbers whichever worker runs this ratio, in whatever order
    base, seed, K = ctx["base"], ctx["seed"], ctx["K"]
    tokenizer = lm.load_tokenizer(base)
    path = Path(ctx["preferences"]) / f"ratio_{ratio}"
    if not path.exists():
        raise FileNotFoundError(f"no preference data for ratio {ratio}:1 at {path} (is it in label.ratios?)")
    ds = load_from_disk(str(path))
    train, test = PreferencePairs.from_dataset(ds["train"], "train split"), PreferencePairs.from_dataset(ds["test"], "test split")
    fit_kw = dict(epochs=ctx["epochs"], lr=ctx["lr"], batch_size=ctx["batch_size"], seed=seed)
    models = {"pooled": rm.load_reward_model(base, tokenizer, seed=seed)}
    rm.train_reward_model(models["pooled"], tokenizer, train, **fit_kw)
    # EM over users with neural M-steps (epochs per M-step spread over the iterations)
    fit = em.mixture_em(lambda: rm.NeuralRewardMixture(base, tokenizer, K, epochs=ctx["epochs"] / 2, lr=ctx["lr"],
                                                       batch_size=ctx["batch_size"], seed=seed),
                        train, n_init=ctx["em_restarts"], init=ctx["em_init"], max_iter=ctx["em_iterations"], seed=seed,
                        progress=False)
    test_assign = em.assign_users(fit.model, test)
    # name each cluster by the true group most of its training users belong to (for plots only)
    for k, m in enumerate(fit.model.models):
        members = train.group[fit.assignment == k]
        tag = "majority-like" if members.numel() == 0 or float(members.float().mean()) < 0.5 else "minority-like"
        models[f"em_{k} ({tag})"] = m
    em_row = {"ratio": ratio, "purity": em.purity(fit.assignment, train.group), "ari": em.adjusted_rand(fit.assignment, train.group),
              "heldout_purity": em.purity(test_assign, test.group), "iterations": fit.n_iter, "converged": fit.converged,
              "start": fit.restart_inits[fit.best_restart],  # the kept start and every start's final objective
              "start_log_likelihoods": dict(zip(fit.restart_inits, fit.restart_log_likelihoods))}
    trace = [{"ratio": f"{ratio}:1", "iteration": i + 1, "log_likelihood": ll, "users_moved": c}
             for i, (ll, c) in enumerate(zip(fit.log_likelihood, fit.n_changed))]
    # oracle, per true group (a reference; only at the ratios whose policies use it)
    for k in range(K if ratio in ctx["oracle_ratios"] else 0):
        models[f"oracle_{k}"] = rm.load_reward_model(base, tokenizer, seed=seed + 1 + k)
        rows_k = (train.group[train.user] == k).nonzero().flatten()
        rm.train_reward_model(models[f"oracle_{k}"], tokenizer, train.subset(rows_k), **fit_kw)
    rows = []
    for name, m in models.items():
        acc = rm.accuracy_by_group(m, tokenizer, test)
        rows.append({"ratio": f"{ratio}:1", "model": name, "majority": acc[0], "minority": acc[1]})
        m.save_pretrained(Path(ctx["out"]) / f"ratio_{ratio}" / name.split(" ")[0])
    return {"accuracy": rows, "em": em_row, "trace": trace}
