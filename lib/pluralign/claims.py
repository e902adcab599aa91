"""The comparisons' headline claims, read back from a run's metrics files, and two runs side by side.

The README's "Across CPUs" table asks of a re-run: does each claim keep its verdict?  A claim is one
interval the notebooks wrote (a paired difference, or a head-to-head win rate) and the value that
means "no difference" (0 for a difference, ½ for P(a ≻ b)); its verdict is ``higher`` / ``lower``
when the 95% interval excludes that value, ``no difference shown`` when it covers it.  Only reads:
the numbers are the notebooks' own (09_evaluate, 12_compare, 14_tulu2_align), keyed as they write
them, with the ratio and the Nash-MD β taken from the files (so a run with other params reads too).

    from pluralign import claims
    claims.compare_claims("results/metrics", "elsewhere/results/metrics")   # or scripts/claims.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

__all__ = ["read_claims", "compare_claims", "verdict", "markdown"]

MISSING = "not in this run"


def verdict(lo: float, hi: float, null: float) -> str:
    """``higher`` if the interval [lo, hi] lies above ``null``, ``lower`` if below, else no difference."""
    if lo > null:
        return "higher"
    if hi < null:
        return "lower"
    return "no difference shown"


def _load(metrics_dir: Path, name: str) -> dict:
    path = metrics_dir / f"{name}.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _ratios(evaluate: dict, compare: dict) -> tuple[str | None, str | None]:
    """(headline, balanced) ratio labels such as "10:1", "1:1": the compare stage's ratio (that of
    the preference model, the headline one) and the smallest ratio the evaluate stage reports."""
    found = sorted({k.split()[0] for k in evaluate.get("final_kl", {})}, key=lambda r: float(r.split(":")[0]))
    headline = f"{compare['ratio']}:1" if "ratio" in compare else (found[-1] if found else None)
    balanced = found[0] if found and found[0] != headline else None
    return headline, balanced


def _specs(metrics_dir: Path) -> list[tuple[str, dict | None, str | None, float]]:
    """(claim, the metrics dict holding it or None, its key, null value) for every headline claim."""
    ev, cmp, tulu = (_load(metrics_dir, n) for n in ("09_evaluate", "12_compare", "14_tulu2_align"))
    head, bal = _ratios(ev, cmp)
    vs, mk, mkl = ev.get("versus_single", {}), cmp.get("matched_kl", {}), ev.get("matched_kl_maxmin_vs_single", {})
    nash = next((k[: -len(" vs single, pref")] for k in mk if k.endswith(" vs single, pref")), None)
    specs = []
    for g in ("majority", "minority"):
        specs.append((f"{head} MaxMin − single, final checkpoints, {g}", vs, f"{head} maxmin {g} difference of win rates vs base", 0.0))
    for g in ("majority", "minority", "pooled"):
        specs.append((f"{head} MaxMin − single at matched KL, {g}", mkl.get(g), "difference", 0.0))
    for g in ("majority", "minority"):
        specs.append((f"{bal} MaxMin − single, final checkpoints, {g}" if bal else f"balanced-ratio MaxMin − single, {g}",
                      vs, f"{bal} maxmin {g} difference of win rates vs base", 0.0))
    for col, what in (("pref", "learned preference"), ("win_minority", "minority"), ("win_majority", "majority")):
        specs.append((f"{nash or 'Nash-MD'} − single at matched KL, {what}", mk.get(f"{nash} vs single, {col}"), "difference", 0.0))
    specs.append((f"P({nash or 'Nash-MD'} ≻ single), final checkpoints, learned preference",
                  cmp.get("preference_head_to_head"), f"{nash} vs single", 0.5))
    for g in ("majority", "minority"):
        specs.append((f"Tulu2 MaxMin − single, {g}", tulu.get("minus_single"), f"maxmin {g}", 0.0))
    return specs


def read_claims(metrics_dir) -> pd.DataFrame:
    """One row per headline claim: claim, mean, lo, hi, kl (matched-KL claims), null, verdict."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        raise ValueError(f"metrics directory {str(metrics_dir)!r} does not exist")
    rows = []
    for claim, holder, key, null in _specs(metrics_dir):
        node = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(node, dict) or not {"mean", "lo", "hi"} <= set(node):
            rows.append({"claim": claim, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"),
                         "kl": float("nan"), "null": null, "verdict": MISSING})
            continue
        kl = holder.get("kl", float("nan")) if key == "difference" else float("nan")
        rows.append({"claim": claim, "mean": float(node["mean"]), "lo": float(node["lo"]), "hi": float(node["hi"]),
                     "kl": float(kl), "null": null, "verdict": verdict(float(node["lo"]), float(node["hi"]), null)})
    return pd.DataFrame(rows)


def compare_claims(a_dir, b_dir) -> pd.DataFrame:
    """Two runs' claims side by side, row by row: claim, a, b (each "mean [lo, hi]" and the verdict),
    ``same_verdict`` (False where either run lacks the claim)."""
    a, b = read_claims(a_dir), read_claims(b_dir)

    def show(r):
        if r.verdict == MISSING:
            return MISSING
        f = "+.2f" if r.null == 0 else ".2f"  # differences signed, probabilities not
        kl = f" at KL {r.kl:.1f}" if r.kl == r.kl else ""
        return f"{r.mean:{f}} [{r.lo:{f}}, {r.hi:{f}}]{kl}: {r.verdict}"

    # claim labels carry the ratio and β each run read from its own files: rows pair by position
    return pd.DataFrame({"claim": a.claim, "a": [show(r) for r in a.itertuples()], "b": [show(r) for r in b.itertuples()],
                         "same_verdict": [(x != MISSING) and x == y for x, y in zip(a.verdict, b.verdict)]})


def markdown(table: pd.DataFrame) -> str:
    """A table as Markdown rows (to paste into a README; pandas' own needs the tabulate package)."""
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
