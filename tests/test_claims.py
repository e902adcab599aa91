"""pluralign.claims: reading a run's headline claims back from its metrics files, and two runs side by side."""
import json

import pytest

from pluralign import claims


def iv(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "seeds": 5, "prompts": 500}


def write_run(root, minority_diff, nash_pref, *, ratio=10, beta="0.125", tulu=True):
    """A metrics directory in the notebooks' own format (keys as 09/12/14 write them)."""
    root.mkdir(parents=True, exist_ok=True)
    r = f"{ratio}:1"
    vs = {f"{r} maxmin majority difference of win rates vs base": iv(-0.22, -0.29, -0.15),
          f"{r} maxmin minority difference of win rates vs base": iv(*minority_diff),
          "1:1 maxmin majority difference of win rates vs base": iv(0.44, 0.39, 0.49),
          "1:1 maxmin minority difference of win rates vs base": iv(-0.04, -0.34, 0.29)}
    matched = {g: {"kl": 9.0, "difference": iv(0.05, -0.1, 0.17)} for g in ("majority", "minority", "pooled")}
    (root / "09_evaluate.json").write_text(json.dumps({
        "final_kl": {f"{r} single": 13.6, f"{r} maxmin": 8.9, "1:1 single": 3.0, "1:1 maxmin": 4.0},
        "versus_single": vs, "matched_kl_maxmin_vs_single": matched}))
    nash = f"nash β={beta}"
    (root / "12_compare.json").write_text(json.dumps({
        "ratio": ratio,
        "matched_kl": {f"{nash} vs single, pref": {"kl": 2.4, "difference": iv(*nash_pref)},
                       f"{nash} vs single, win_minority": {"kl": 2.4, "difference": iv(0.14, -0.02, 0.31)},
                       f"{nash} vs single, win_majority": {"kl": 2.4, "difference": iv(0.08, -0.05, 0.19)}},
        "preference_head_to_head": {f"{nash} vs single": iv(0.30, 0.03, 0.77)}}))
    if tulu:
        (root / "14_tulu2_align.json").write_text(json.dumps({
            "minus_single": {"maxmin majority": iv(-0.26, -0.87, 0.0), "maxmin minority": iv(0.27, -0.13, 0.72)}}))
    return root


def test_verdict_is_the_side_of_null_the_interval_lies_on():
    assert claims.verdict(0.03, 0.11, 0.0) == "higher"
    assert claims.verdict(-0.29, -0.15, 0.0) == "lower"
    assert claims.verdict(-0.02, 0.13, 0.0) == "no difference shown"
    assert claims.verdict(0.03, 0.77, 0.5) == "no difference shown"  # a win rate's null is 1/2
    assert claims.verdict(0.55, 0.77, 0.5) == "higher"
    assert claims.verdict(0.0, 0.2, 0.0) == "no difference shown"  # touching null is covering it


def test_read_claims_takes_each_interval_from_where_the_notebook_wrote_it(tmp_path):
    t = claims.read_claims(write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11))).set_index("claim")
    row = t.loc["10:1 MaxMin − single, final checkpoints, majority"]
    assert (row["mean"], row["lo"], row["hi"], row["verdict"]) == (-0.22, -0.29, -0.15, "lower")
    assert t.loc["10:1 MaxMin − single, final checkpoints, minority", "verdict"] == "no difference shown"
    assert t.loc["1:1 MaxMin − single, final checkpoints, majority", "verdict"] == "higher"
    pref = t.loc["nash β=0.125 − single at matched KL, learned preference"]
    assert (pref["mean"], pref["kl"], pref["verdict"]) == (0.07, 2.4, "higher")
    assert t.loc["10:1 MaxMin − single at matched KL, pooled", "kl"] == 9.0
    h2h = t.loc["P(nash β=0.125 ≻ single), final checkpoints, learned preference"]
    assert (h2h["null"], h2h["verdict"]) == (0.5, "no difference shown")
    assert t.loc["Tulu2 MaxMin − single, minority", "mean"] == 0.27
    assert (t.verdict != claims.MISSING).all()


def test_ratio_and_beta_come_from_the_files(tmp_path):
    t = claims.read_claims(write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11), ratio=3, beta="0.5"))
    assert "3:1 MaxMin − single, final checkpoints, majority" in set(t.claim)
    assert "nash β=0.5 − single at matched KL, learned preference" in set(t.claim)
    assert (t.verdict != claims.MISSING).all()


def test_a_claim_the_run_lacks_is_marked_not_invented(tmp_path):
    t = claims.read_claims(write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11), tulu=False))
    tulu = t[t.claim.str.startswith("Tulu2")]
    assert len(tulu) == 2 and (tulu.verdict == claims.MISSING).all() and tulu["mean"].isna().all()
    assert (t[~t.claim.str.startswith("Tulu2")].verdict != claims.MISSING).all()


def test_compare_claims_says_which_verdicts_two_runs_share(tmp_path):
    a = write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11))
    b = write_run(tmp_path / "b", (0.02, -0.03, 0.07), (-0.01, -0.11, 0.10), tulu=False)
    t = claims.compare_claims(a, b).set_index("claim")
    assert bool(t.loc["10:1 MaxMin − single, final checkpoints, minority", "same_verdict"])  # both cover 0
    pref = t.loc["nash β=0.125 − single at matched KL, learned preference"]
    assert not pref["same_verdict"]
    assert pref["a"] == "+0.07 [+0.03, +0.11] at KL 2.4: higher"
    assert pref["b"] == "-0.01 [-0.11, +0.10] at KL 2.4: no difference shown"
    assert t.loc["P(nash β=0.125 ≻ single), final checkpoints, learned preference", "a"].startswith("0.30 [0.03, 0.77]")
    assert not t.loc["Tulu2 MaxMin − single, minority", "same_verdict"]  # b lacks it: not "the same"


def test_markdown_has_a_row_per_claim(tmp_path):
    text = claims.markdown(claims.read_claims(write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11))))
    lines = text.splitlines()
    assert lines[0].startswith("| claim | mean | lo | hi |") and lines[1].startswith("|---|")
    assert len(lines) == 2 + len(claims.read_claims(tmp_path / "a"))


def test_a_missing_directory_is_one_line_naming_it(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    with pytest.raises(ValueError, match="nowhere"):
        claims.read_claims(tmp_path / "nowhere")
    broken = write_run(tmp_path / "broken", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11))
    (broken / "12_compare.json").write_text('{"ratio": 10,')  # a half-written file
    with pytest.raises(ValueError, match=r"12_compare\.json: not valid JSON"):
        claims.read_claims(broken)
    spec = importlib.util.spec_from_file_location("claims_cli", Path(__file__).parents[1] / "scripts" / "claims.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err
    assert cli.main([str(write_run(tmp_path / "a", (0.05, -0.02, 0.13), (0.07, 0.03, 0.11))),
                     "--against", str(tmp_path / "a")]) == 0
    assert "| True |" in capsys.readouterr().out
