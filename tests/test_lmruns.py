"""The GPT-2 runs' plan, learning-rate picks, equal budgets and matched-KL comparisons."""
import csv
import pandas as pd
import pytest
import torch

from pluralign import corpus, lm, lmruns
from pluralign.maxmin_ppo import GroupRewards, train_policy
from pluralign.nash_md_lm import NashMDConfig, train_nash_md
from pluralign.ppo import PPOConfig


def test_plan_gives_each_method_its_seeds():
    specs = lmruns.plan_align([1, 10], ["single", "maxmin"], 10, ["sample_min"], [0, 1, 2, 3, 4], [0, 1, 2], [0, 1],
                              {"single": 1e-3, "maxmin": 2e-3, "sample_min": 2e-3}, "out")
    count = pd.DataFrame(specs).groupby(["ratio", "method"]).seed.nunique().to_dict()
    assert count == {(1, "maxmin"): 2, (1, "single"): 2, (10, "maxmin"): 5, (10, "sample_min"): 3, (10, "single"): 5}
    assert {s["out"] for s in specs if s["method"] == "single" and s["ratio"] == 10} == {
        f"out/ratio_10/single_seed{i}" for i in range(5)}
    assert all(s["role"] == "final" and s["kind"] == "ppo" for s in specs)


def test_learning_rate_picks_follow_each_goal_and_variants_inherit():
    trials = pd.DataFrame({"method": ["single"] * 3 + ["maxmin"] * 3, "lr": [1e-3, 2e-3, 5e-4] * 2,
                           "score": [0.6, 0.7, 0.7, 0.5, 0.4, 0.3]})
    picks = lmruns.pick_learning_rates(trials)
    assert picks == {"single": 5e-4, "maxmin": 1e-3}  # a tie goes to the smaller learning rate
    assert lmruns.learning_rates(picks, ["single", "maxmin", "sample_min", "maxmin_oracle"]) == {
        "single": 5e-4, "maxmin": 1e-3, "sample_min": 1e-3, "maxmin_oracle": 1e-3}
    with pytest.raises(ValueError, match="no learning rate"):
        lmruns.learning_rates({"single": 1e-3}, ["sample_min"])
    with pytest.raises(ValueError, match="no learning-rate trials"):
        lmruns.pick_learning_rates(trials.iloc[:0])
    assert lmruns.goal_of("maxmin") == "worst" and lmruns.goal_of("nash β=0.125") == "pooled"


def test_goal_scores():
    frame = pd.DataFrame({"win_majority": [1.0, 1.0, 0.5, 1.0], "win_minority": [0.0, 0.5, 0.0, 0.5]})
    shares = {"majority": 0.75, "minority": 0.25}
    assert lmruns.goal_score(frame, "pooled", shares) == pytest.approx(0.75 * 0.875 + 0.25 * 0.25)
    assert lmruns.goal_score(frame, "worst", shares) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="goal"):
        lmruns.goal_score(frame, "best", shares)


def test_scoring_counts_ties_as_half_and_strict_on_request():
    frame = pd.DataFrame({"step": 1, "prompt": [0, 1, 2], "response": ["aa", "b", "ccc"], "kl": 0.0})
    base = pd.DataFrame({"prompt": [0, 1, 2], "response": ["x", "yy", "zzz"]})
    scored = lmruns.score_checkpoints(frame, base, {"len": lambda ts: torch.tensor([float(len(t)) for t in ts])}, strict=True)
    assert scored.win_len.tolist() == [1.0, 0.0, 0.5] and scored.strict_len.tolist() == [1.0, 0.0, 0.0]


def _runs(method, seeds, kls, wins):
    """Checkpoint rows for runs whose per-prompt wins are ``wins[c]`` at KL ``kls[c]`` (2 prompts)."""
    rows = []
    for s in seeds:
        for c, (k, w) in enumerate(zip(kls, wins)):
            rows += [{"ratio": 10, "method": method, "seed": s, "step": 10 * c, "prompt": p, "kl": k, "win": w[p]}
                     for p in range(2)]
    return rows


def test_matched_kl_compares_at_the_largest_kl_both_reach():
    # a moves to KL 4 and wins 1.0 there; b moves to KL 2 and wins 0.75; at KL 2 a wins 0.75 too
    rows = _runs("a", [0, 1], [0.0, 4.0], [[0.5, 0.5], [1.0, 1.0]]) + _runs("b", [0, 1, 2], [0.0, 2.0], [[0.5, 0.5], [0.75, 0.75]])
    r = lmruns.matched_kl(pd.DataFrame(rows), "a", "b", "win", n_boot=200, seed=0)
    assert r["kl"] == 2.0
    assert r["a"]["mean"] == pytest.approx(0.75) and r["b"]["mean"] == pytest.approx(0.75)
    assert r["difference"]["mean"] == pytest.approx(0.0) and r["difference"]["seeds"] == 2  # paired by rank
    # a's two runs reach KL 2 between the base policy and their only trained checkpoint (KL 4); b's three at it
    assert r["from_base"] == {"a": 2, "b": 3}


def test_matched_kl_counts_the_runs_interpolated_from_the_base_policy():
    # a: checkpoints at KL 1 and 3; b: seed 0 jumps to KL 5 at once, seed 1 passes KL 1 first
    rows = (_runs("a", [0, 1], [0.0, 1.0, 3.0], [[0.5, 0.5], [0.6, 0.6], [0.7, 0.7]])
            + _runs("b", [0], [0.0, 5.0, 6.0], [[0.5, 0.5], [1.0, 1.0], [1.0, 1.0]])
            + _runs("b", [1], [0.0, 1.0, 6.0], [[0.5, 0.5], [0.9, 0.9], [1.0, 1.0]]))
    r = lmruns.matched_kl(pd.DataFrame(rows), "a", "b", "win", n_boot=200, seed=0)
    assert r["kl"] == 3.0 and r["from_base"] == {"a": 0, "b": 1}
    assert r["b"]["mean"] == pytest.approx((0.5 + 0.5 * 3 / 5 + 0.9 + 0.1 * 2 / 5) / 2)  # seed 0 from the base
    assert lmruns.matched_kl(pd.DataFrame(rows), "a", "b", "win", n_boot=200, seed=0, target=0.5)["from_base"] == \
        {"a": 2, "b": 2}


def test_equal_budgets_ppo_and_nash_md_take_the_same_number_of_updates(tmp_path):
    torch.set_num_threads(1)
    tok = lm.build_word_tokenizer(corpus.vocabulary())
    lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts = ["the movie", "i watched it", "the acting was", "what a"] * 4

    class Length(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **_):
            return type("Out", (), {"logits": attention_mask.sum(1, keepdim=True).float()})()

    rewards = GroupRewards([Length()], tok).fit_standardisation(prompts, [" the movie was great .", " ok ."] * 8)
    steps, budget = 2, dict(batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=5, seed=0)
    seen = []
    ppo, _ = train_policy(str(tmp_path), tok, rewards, prompts, "single", steps, PPOConfig(**budget), progress=False,
                          on_step=lambda step, model: seen.append(step))
    nash, _ = train_nash_md(str(tmp_path), tok, lambda x, y, yp: torch.full((len(x),), 0.6), prompts, steps,
                            NashMDConfig(**budget, tau=0.05), progress=False)
    assert ppo.n_updates == nash.n_updates == steps * 2 * (8 // 4) and seen == [1, 2]


def test_preference_columns_and_head_to_head_pair_the_same_prompts():
    prompts = ["p0", "p1", "p2"]
    base = pd.DataFrame({"prompt": [0, 1, 2], "response": ["b", "b", "b"]})
    rows = pd.DataFrame([{"method": m, "seed": s, "step": 5, "prompt": p, "response": m * (p + 1), "kl": 0.0, "ratio": 10}
                         for m in ("x", "y") for s in (0, 1) for p in range(3)])

    def longer(xs, a, b):  # P(a ≻ b): 1 when a is longer, ½ on equal length
        return torch.tensor([1.0 if len(u) > len(v) else 0.5 if len(u) == len(v) else 0.0 for u, v in zip(a, b)])

    scored = lmruns.add_preference(rows, longer, prompts, base)
    assert scored.pref.tolist() == [0.5, 1.0, 1.0] * 4  # " x" vs " b": equal length, then longer
    h = lmruns.preference_head_to_head(scored, longer, prompts, "x", "y", 5, n_boot=200, seed=0)
    assert h["mean"] == 0.5 and h["seeds"] == 2 and h["prompts"] == 3


def test_win_matrix_intervals_bracket_the_matrix():
    from pluralign import compare

    g = torch.Generator().manual_seed(0)
    scores = {"base": [torch.rand(50, generator=g)],
              "a": [torch.rand(50, generator=g) + 0.3 for _ in range(3)], "b": [torch.rand(50, generator=g) for _ in range(3)]}
    W = compare.win_matrix(scores)
    iv = compare.win_matrix_intervals(scores, n_boot=200, seed=0)
    for x in scores:
        for y in scores:
            assert iv["lo"].loc[x, y] <= W.loc[x, y] + 1e-12 <= iv["hi"].loc[x, y] + 2e-12
    assert iv["lo"].loc["a", "b"] > 0.5  # a's scores are shifted up: a clear win


def test_checkpoint_csv_with_a_bare_carriage_return_reads_back_whole(tmp_path):
    """A generated answer may hold a bare "\\r" (byte-level BPE), which pandas' CSV writer leaves
    unquoted and a default reader takes for a line end (a real 10:1 run broke two rows this way):
    report.write_csv quotes such a frame, and notebooks 09 and 12 also read with lineterminator="\\n"."""
    from pluralign import report

    frame = pd.DataFrame({"seed": [0, 1], "step": [3, 10], "response": ["fine", "odd\rtail 482.1"], "kl": [0.5, 1.5]})
    path = tmp_path / "ppo_checkpoints.csv"
    report.write_csv(path, frame)
    back = pd.read_csv(path, keep_default_na=False, lineterminator="\n")
    assert back.response.tolist() == frame.response.tolist() and back.kl.tolist() == [0.5, 1.5]
    # the writer quotes the field, so the default reader (and dvc plots' csv module) keep the row whole
    default = pd.read_csv(path, keep_default_na=False)
    assert default.response.tolist() == frame.response.tolist() and default.step.tolist() == [3, 10]
    with open(path, newline="") as f:
        assert [r["response"] for r in csv.DictReader(f)] == frame.response.tolist()
    # a frame without one is written exactly as before (every other recorded CSV keeps its bytes)
    plain = frame.assign(response=["fine", "plain"])
    report.write_csv(path, plain)
    assert path.read_text() == plain.to_csv(index=False, float_format="%.6g")
