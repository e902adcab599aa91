"""The GPT-2 experiment's training runs: one run as a function of its spec, a process pool that
runs several at once, the learning-rate trials, and the frontier tables the notebooks draw.

A run is a dict ``spec`` — kind ("ppo" | "nash"), method, ratio, seed, lr, role ("final" |
"trial"), out (where to save the policy, or None) and, for Nash-MD, beta and preference ("pairwise"
| "bt") — plus a shared ``ctx`` of paths and hyper-parameters built from params.yaml by the
notebook.  :func:`run` trains from the base policy and evaluates along the way
(:class:`pluralign.frontier.Checkpoints`): final runs on the test prompts at the ``eval_steps``
iterations, trials on the validation prompts at their last iteration only.

Runs go on a process pool (:func:`run_all`, :mod:`pluralign.parallel`): a tiny policy's run gains
little from a second thread, while two single-threaded processes each run one at full speed.  Every
run has one thread and its own seeds, so its numbers do not depend on the worker or on ``workers``.

Equal budgets: every run, PPO or Nash-MD-PG, takes ``steps`` iterations of ``batch_size``
rollouts and ``ppo_epochs × batch_size / mini_batch_size`` gradient updates per iteration;
:func:`run` returns the count each trainer took (``n_updates``) so the notebooks can show it.
"""
from __future__ import annotations

import functools

import pandas as pd
import torch

from . import frontier, intervals, lm, scorers

__all__ = ["GOALS", "goal_of", "judges", "preference_model", "run", "run_all", "score_checkpoints", "goal_score",
           "pick_learning_rates", "learning_rates", "plan_align", "with_base", "base_rows", "frontier_points", "add_pooled",
           "add_preference", "outcome_table", "final_table", "differences", "head_to_head", "preference_head_to_head",
           "matched_kl"]

# each method's learning rate is picked for what the method claims to optimise, judged by the
# groups' true traits on validation prompts: the pooled population's win rate against the base
# policy (share-weighted), or the worst-off group's
GOALS = {"single": "pooled", "mean": "pooled", "maxmin": "worst", "sample_min": "worst", "maxmin_oracle": "worst",
         "nash": "pooled"}
PPO_SOURCES = {"single": ("pooled", "single"), "maxmin": ("em", "argmin"), "sample_min": ("em", "sample_min"),
               "mean": ("em", "mean"), "maxmin_oracle": ("oracle", "argmin")}


def goal_of(method: str) -> str:
    return GOALS["nash" if method.startswith("nash") else method]


# -- one run, in whichever process ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tokenizer(base: str):
    return lm.load_tokenizer(base)


@functools.lru_cache(maxsize=None)
def _base(base: str):
    from .ppo import fused_gelu

    return fused_gelu(lm.load_causal_lm(base, _tokenizer(base)))


@functools.lru_cache(maxsize=None)
def judges(profile: str, base: str, max_new_tokens: int, classifier: str, sentiment_model: str):
    return scorers.trait_scorers(profile, _tokenizer(base), max_new_tokens, classifier, sentiment_model, vader=True)


def _group_rewards(ctx: dict, ratio, kind: str):
    key = (ctx["rewards_dir"], ratio, kind)
    cache = _group_rewards.cache
    if key not in cache:
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification

        from .maxmin_ppo import GroupRewards

        folder = Path(ctx["rewards_dir"]) / f"ratio_{ratio}"
        names = ["pooled"] if kind == "pooled" else sorted(p.name for p in folder.glob(f"{kind}_*"))
        if not names or not all((folder / n).exists() for n in names):
            raise FileNotFoundError(f"no {kind} reward models for ratio {ratio}:1 under {folder} (is it in reward.ratios?)")
        models = [AutoModelForSequenceClassification.from_pretrained(folder / n).eval() for n in names]
        calib_prompts, calib_texts = ctx["calibration"]
        cache[key] = GroupRewards(models, _tokenizer(ctx["base"])).fit_standardisation(calib_prompts, calib_texts)
    return cache[key]


_group_rewards.cache = {}


def preference_model(ctx: dict, kind: str):
    key = (ctx["preference_dir"], kind)
    cache = preference_model.cache
    if key not in cache:
        from transformers import AutoModelForSequenceClassification

        from . import pairwise

        from .ppo import fused_gelu

        tok = _tokenizer(ctx["base"])
        if kind == "pairwise":
            pref = pairwise.PairwisePreferenceModel.from_pretrained(ctx["preference_dir"], tok)
            fused_gelu(pref.model)
        else:
            pref = pairwise.BTPreference(fused_gelu(AutoModelForSequenceClassification.from_pretrained(
                ctx["bt_reward_dir"]).eval()), tok)
        cache[key] = pref
    return cache[key]


preference_model.cache = {}


def run(ctx: dict, spec: dict) -> dict:
    """Train one policy from the base policy as ``spec`` says, evaluating it along the way.

    Returns {"spec", "history" (one dict per iteration), "checkpoints" (DataFrame: step,
    prompt, response, kl), "n_updates"}; saves the policy to spec["out"] when it is set.  Runs on
    the caller's threads (:func:`run_all` gives each run one)."""
    from .maxmin_ppo import train_policy
    from .nash_md_lm import NashMDConfig, train_nash_md
    from .ppo import PPOConfig

    base = ctx["base"]
    tok, ref = _tokenizer(base), _base(base)
    truth = judges(ctx["profile"], base, ctx["max_new_tokens"], ctx["classifier"], ctx["sentiment_model"])
    final = spec["role"] == "final"
    steps = ctx["steps"]
    check = frontier.Checkpoints(ref, tok, ctx["eval_prompts"] if final else ctx["val_prompts"],
                                 at=ctx["eval_steps"] if final else [steps], last=steps,
                                 max_new_tokens=ctx["max_new_tokens"], temperature=ctx["temperature"],
                                 top_p=ctx["ppo"].get("top_p", 1.0), seed=ctx["eval_seed"])

    def monitor(texts):
        return {k: float(f(texts).mean()) for k, f in truth.items()}

    if spec["kind"] == "ppo":
        kind, rule = PPO_SOURCES[spec["method"]]
        config = PPOConfig(**ctx["ppo"], learning_rate=spec["lr"], seed=spec["seed"],
                           total_steps=steps if ctx["ppo"].get("lr_schedule", "constant") != "constant" else None)
        trainer, history = train_policy(base, tok, _group_rewards(ctx, spec["ratio"], kind), ctx["prompts"], rule,
                                        steps, config, progress=False, monitor=monitor, on_step=check)
    elif spec["kind"] == "nash":
        config = NashMDConfig(**ctx["nash"], beta=spec["beta"], learning_rate=spec["lr"], seed=spec["seed"])
        trainer, history = train_nash_md(base, tok, preference_model(ctx, spec["preference"]), ctx["prompts"], steps,
                                         config, progress=False, monitor=monitor, on_step=check)
    else:
        raise ValueError(f"spec kind must be 'ppo' or 'nash', got {spec['kind']!r}")
    if spec.get("out"):
        trainer.save_pretrained(spec["out"])
    tags = {k: spec[k] for k in ("role", "kind", "method", "ratio", "seed", "lr")}
    return {"spec": spec, "history": history, "checkpoints": check.frame(**tags), "n_updates": trainer.n_updates}


def run_all(ctx: dict, specs: list[dict], workers: int, desc: str = "runs") -> list[dict]:
    """:func:`run` for every spec, ``workers`` at a time on single-threaded spawned processes
    (:func:`pluralign.parallel.map_processes`; 1 = in this process), results in the order of ``specs``."""
    from .parallel import map_processes

    return map_processes(run, ctx, specs, workers, desc)


# -- tables ----------------------------------------------------------------------------------------
def score_checkpoints(frame: pd.DataFrame, base: pd.DataFrame, judges: dict, strict: bool = False) -> pd.DataFrame:
    """Add each judge's score of every response and its win against the base policy's response to
    the same prompt (tie ½): columns ``<judge>`` and ``win_<judge>`` (and, with strict=True,
    ``strict_<judge>``: the MaxMin re-implementation's strict ">", a tie lost).  frame: rows of
    :meth:`Checkpoints.frame`; base: the base policy's (prompt, response) rows; judges: name →
    texts → (N,) scores."""
    frame = frame.copy()
    base_scores = {g: f(list(base.response)).numpy() for g, f in judges.items()}
    pos = base.set_index("prompt").index.get_indexer(frame.prompt)
    if (pos < 0).any():
        raise ValueError("a checkpoint answered a prompt the base policy did not")
    for g, f in judges.items():
        s = f(list(frame.response)).numpy()
        frame[g] = s
        frame[f"win_{g}"] = intervals.outcomes(torch.as_tensor(s), torch.as_tensor(base_scores[g][pos])).numpy()
        if strict:
            frame[f"strict_{g}"] = intervals.outcomes(torch.as_tensor(s), torch.as_tensor(base_scores[g][pos]), 0.0).numpy()
    return frame


def goal_score(frame: pd.DataFrame, goal: str, shares: dict) -> float:
    """A run's validation score for its method's goal from its scored rows (one checkpoint):
    "pooled" Σ_g η_g win_g or "worst" min_g win_g, win_g the group's win rate against base."""
    wins = {g: float(frame[f"win_{g}"].mean()) for g in shares}
    if goal == "pooled":
        return sum(shares[g] * w for g, w in wins.items())
    if goal == "worst":
        return min(wins.values())
    raise ValueError(f"goal must be 'pooled' or 'worst', got {goal!r}")


def pick_learning_rates(trials: pd.DataFrame) -> dict:
    """{method: lr with the highest validation score} from rows (method, lr, score); ties go to
    the smaller learning rate."""
    if trials.empty:
        raise ValueError("no learning-rate trials to pick from")
    best = trials.sort_values(["method", "score", "lr"], ascending=[True, False, True]).groupby("method").head(1)
    return {r.method: float(r.lr) for r in best.itertuples()}


def outcome_table(frame: pd.DataFrame, column: str) -> torch.Tensor:
    """(seeds, prompts) table of ``column`` from one method's rows at one checkpoint."""
    t = frame.pivot_table(index="seed", columns="prompt", values=column, aggfunc="first").sort_index()
    if t.isna().any().any():
        raise ValueError(f"seeds answered different prompts ({column})")
    return torch.tensor(t.values, dtype=torch.float64)


def final_table(frame: pd.DataFrame, groups: list[str], n_boot: int, seed: int, last_step: int,
                prefix: str = "win_") -> pd.DataFrame:
    """Win rate against base with its 95% interval (seeds and prompts) per (ratio, method, group)
    at the last step, from scored rows (columns ``prefix + group``: "strict_" for the strict ">");
    raises for a method with fewer than 2 seeds."""
    rows = []
    last = frame[frame.step == last_step]
    for (ratio, method), d in last.groupby(["ratio", "method"], sort=False):
        for g in groups:
            iv = intervals.interval(outcome_table(d, f"{prefix}{g}"), n_boot=n_boot, seed=seed)
            rows.append({"ratio": ratio, "method": method, "group": g, **iv})
    return pd.DataFrame(rows)


# -- the plan ------------------------------------------------------------------------------------
# methods that are not tuned themselves take the learning rate picked for the rule they vary
INHERIT_LR = {"sample_min": "maxmin", "mean": "maxmin", "maxmin_oracle": "maxmin"}


def learning_rates(picks: dict, methods: list[str]) -> dict:
    """{method: lr}: a tuned method's own pick, else the pick of the method it varies
    (:data:`INHERIT_LR`)."""
    out = {}
    for m in methods:
        src = m if m in picks else INHERIT_LR.get(m)
        if src not in picks:
            raise ValueError(f"no learning rate for {m!r}: tune it or {INHERIT_LR.get(m, 'its parent')!r} first")
        out[m] = picks[src]
    return out


def plan_align(ratios, methods, headline_ratio, headline_methods, seeds, variant_seeds, sweep_seeds, lrs: dict,
               out_dir) -> list[dict]:
    """The align stage's final runs: ``methods`` at every ratio (``seeds`` at the headline ratio,
    ``sweep_seeds`` elsewhere) and ``headline_methods`` at the headline ratio (``variant_seeds``)."""
    specs = []
    for ratio in ratios:
        for m in methods + (headline_methods if ratio == headline_ratio else []):
            run_seeds = sweep_seeds if ratio != headline_ratio else seeds if m in methods else variant_seeds
            for s in run_seeds:
                specs.append({"kind": "ppo", "method": m, "ratio": ratio, "seed": s, "lr": lrs[m], "role": "final",
                              "out": f"{out_dir}/ratio_{ratio}/{m}_seed{s}"})
    return specs


def with_base(frame: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Each (ratio, method, seed) run's checkpoints with the base policy prepended as step 0 (KL 0):
    the frontier's common origin."""
    runs = frame[["role", "kind", "method", "ratio", "seed", "lr"]].drop_duplicates()
    zero = [base.assign(step=0, kl=0.0, **r._asdict()).drop(columns="Index") for r in runs.itertuples()]
    return pd.concat(zero + [frame], ignore_index=True)[frame.columns]


def frontier_points(scored: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per (ratio, method, seed, step): mean KL and the mean of each win column (one point of a
    run's frontier)."""
    return scored.groupby(["ratio", "method", "seed", "step"], as_index=False)[["kl", *columns]].mean()


def matched_kl(scored: pd.DataFrame, a: str, b: str, column: str, n_boot: int, seed: int, ratio=None,
               target: float | None = None) -> dict:
    """Method a against method b at matched KL: each run's per-prompt ``column`` (e.g. a group's
    win against base) interpolated at KL = ``target`` (default: the largest KL every run of both
    reaches, so neither is extrapolated), seeds paired by rank (the first min(S_a, S_b) of each),
    prompts paired.  Returns {"kl", "a": interval, "b": interval, "difference": interval of a − b,
    "from_base": {"a": runs, "b": runs}}: how many runs of each method are interpolated between the
    base policy (their first checkpoint, KL 0) and their first trained checkpoint — a method that
    moves fast is compared there with a mixture of the base policy's answers and its own, not with
    a policy it trained, and a reader should be told."""
    d = scored if ratio is None else scored[scored.ratio == ratio]
    tables, reach = {}, []
    for m in (a, b):
        runs = {}
        for s, r in d[d.method == m].groupby("seed"):
            steps = sorted(r.step.unique())
            kls = torch.tensor([r[r.step == t].kl.mean() for t in steps], dtype=torch.float64)
            vals = torch.stack([torch.tensor(r[r.step == t].sort_values("prompt")[column].values, dtype=torch.float64)
                                for t in steps])
            runs[s] = (torch.cummax(kls, 0).values, vals)  # the KL first reached by each checkpoint
            reach.append(float(kls.max()))
        if not runs:
            raise ValueError(f"no runs of {m!r} to compare")
        tables[m] = runs
    k = min(reach) if target is None else target
    n = min(len(tables[a]), len(tables[b]))
    ys = {m: torch.stack([intervals.at_kl(*tables[m][s], k) for s in sorted(tables[m])]) for m in (a, b)}
    from_base = {side: sum(len(kls) > 1 and float(kls[1]) >= k for kls, _ in tables[m].values())
                 for side, m in (("a", a), ("b", b))}
    return {"kl": k, "a": intervals.interval(ys[a], n_boot=n_boot, seed=seed),
            "b": intervals.interval(ys[b], n_boot=n_boot, seed=seed),
            "difference": intervals.difference_interval(ys[a][:n], ys[b][:n], n_boot=n_boot, seed=seed),
            "from_base": from_base}


def add_pooled(scored: pd.DataFrame, groups=("majority", "minority")) -> pd.DataFrame:
    """Column ``win_pooled``: the population's win against base, Σ_g η_g win_g with the shares of
    each row's majority:minority ratio."""
    from .preferences import ratio_shares

    scored = scored.copy()
    eta = scored.ratio.map(lambda r: ratio_shares(float(r)))
    scored["win_pooled"] = sum(eta.str[i] * scored[f"win_{g}"] for i, g in enumerate(groups))
    return scored


def head_to_head(scored: pd.DataFrame, a: str, b: str, judge: str, step: int, n_boot: int, seed: int,
                 ratio=None, ties: float = 0.5) -> dict:
    """P(a ≻ b) for one judge with its interval: seed s of a meets seed s of b (by rank, the first
    min(S_a, S_b) of each) on every prompt at checkpoint ``step``."""
    d = scored[(scored.step == step) & ((scored.ratio == ratio) if ratio is not None else True)]
    ta, tb = outcome_table(d[d.method == a], judge), outcome_table(d[d.method == b], judge)
    n = min(len(ta), len(tb))
    return intervals.interval(intervals.outcomes(ta[:n], tb[:n], ties), n_boot=n_boot, seed=seed)


def differences(scored: pd.DataFrame, a: str, b: str, column: str, step: int, n_boot: int, seed: int, ratio=None) -> dict:
    """mean(column | a) − mean(column | b) at checkpoint ``step`` (e.g. MaxMin's minus single's win
    rate against base, for one group), seeds paired by rank, prompts paired."""
    d = scored[(scored.step == step) & ((scored.ratio == ratio) if ratio is not None else True)]
    ta, tb = outcome_table(d[d.method == a], column), outcome_table(d[d.method == b], column)
    n = min(len(ta), len(tb))
    return intervals.difference_interval(ta[:n], tb[:n], n_boot=n_boot, seed=seed)


def base_rows(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """The base policy's (prompt, response) rows: step 0 of the first run (every run shares them)."""
    first = checkpoints.iloc[0]
    d = checkpoints[(checkpoints.step == 0) & (checkpoints.ratio == first.ratio) & (checkpoints.method == first.method)
                    & (checkpoints.seed == first.seed)]
    return d[["prompt", "response"]].sort_values("prompt").reset_index(drop=True)


def add_preference(scored: pd.DataFrame, preference, prompts: list[str], base: pd.DataFrame, column: str = "pref",
                   batch_size: int = 2048) -> pd.DataFrame:
    """Column ``column``: P(y ≻ y_base | x) under ``preference(prompts, a, b)`` (e.g. the learned
    pairwise model) for every row's response against the base policy's answer to the same prompt."""
    scored = scored.copy()
    base_text = base.set_index("prompt").response
    xs = [prompts[i] for i in scored.prompt]
    ys = [" " + str(t).strip() for t in scored.response]
    bs = [" " + str(base_text[i]).strip() for i in scored.prompt]
    out = [preference(xs[i:i + batch_size], ys[i:i + batch_size], bs[i:i + batch_size]).double()
           for i in range(0, len(xs), batch_size)]
    scored[column] = torch.cat(out).numpy() if out else []
    return scored


def preference_head_to_head(scored: pd.DataFrame, preference, prompts: list[str], a: str, b: str, step: int,
                            n_boot: int, seed: int) -> dict:
    """P(a ≻ b) under ``preference`` with its interval: seed s of a against seed s of b (by rank)
    on every prompt at checkpoint ``step``."""
    d = scored[scored.step == step]
    ra, rb = d[d.method == a], d[d.method == b]
    sa, sb = sorted(ra.seed.unique()), sorted(rb.seed.unique())
    rows = []
    for s_a, s_b in zip(sa, sb):
        x = ra[ra.seed == s_a].sort_values("prompt")
        y = rb[rb.seed == s_b].sort_values("prompt")
        if list(x.prompt) != list(y.prompt):
            raise ValueError(f"{a} seed {s_a} and {b} seed {s_b} answered different prompts")
        rows.append(preference([prompts[i] for i in x.prompt], [" " + str(t).strip() for t in x.response],
                               [" " + str(t).strip() for t in y.response]).double())
    return intervals.interval(torch.stack(rows), n_boot=n_boot, seed=seed)

