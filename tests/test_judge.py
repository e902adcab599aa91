"""Pairwise judging: the position swap and tie rule on fake judges, win-rate numbers, the stand-in
rule judge, a local transformers judge, and the OpenAI-compatible client against a local server."""
import http.server
import json
import threading

import pytest
import torch

from pluralign import judge as J
from pluralign import lm, lora, soups


class Always:
    """Says the same thing whatever it is shown (pure position bias when it says A or B)."""

    def __init__(self, verdict):
        self.verdict = verdict

    def compare(self, prompt, a, b, criterion):
        return self.verdict


class Longer:
    """A consistent judge: the longer response wins, equal lengths tie."""

    def compare(self, prompt, a, b, criterion):
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


class Scripted:
    """Answers from a list, recording what it was shown."""

    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def compare(self, prompt, a, b, criterion):
        self.seen.append((a, b))
        return self.answers.pop(0)


@pytest.mark.parametrize("first, second, verdict", [
    ("A", "B", "A"), ("B", "A", "B"),                     # both orders agree
    ("A", "A", "tie"), ("B", "B", "tie"),                 # position bias: the orders disagree
    ("tie", "B", "tie"), ("A", "tie", "tie"), ("tie", "tie", "tie"),
])
def test_judge_pair_rule(first, second, verdict):
    j = Scripted([first, second])
    assert J.judge_pair(j, "q", "x", "y", "c") == verdict
    assert j.seen == [("x", "y"), ("y", "x")]  # the second question swaps the positions


def test_position_biased_judge_gives_only_ties_and_a_consistent_one_wins():
    prompts, policy, baseline = ["q"] * 6, ["a long answer"] * 4 + ["s", "same"], ["short"] * 5 + ["same"]
    for v in ("A", "B"):
        r = J.win_rates(Always(v), prompts, policy, baseline, "c")
        assert (r["win"], r["tie"], r["loss"]) == (0, 6, 0) and r["win_rate_with_half_ties"] == 0.5
    r = J.win_rates(Longer(), prompts, policy, baseline, "c")
    assert (r["n"], r["win"], r["tie"], r["loss"]) == (6, 4, 1, 1)
    assert r["win_rate_with_half_ties"] == pytest.approx(4.5 / 6)
    assert 0 <= r["ci_low"] <= r["win_rate_with_half_ties"] <= r["ci_high"] <= 1


def test_summary_interval():
    all_wins = J.summarise(["A"] * 10)
    assert all_wins["win_rate_with_half_ties"] == all_wins["ci_low"] == all_wins["ci_high"] == 1.0
    mixed = J.summarise(["A"] * 30 + ["B"] * 30 + ["tie"] * 40, seed=1)
    assert mixed["win_rate_with_half_ties"] == 0.5 and 0.4 < mixed["ci_low"] < 0.5 < mixed["ci_high"] < 0.6
    assert J.summarise(["A"] * 30 + ["B"] * 30 + ["tie"] * 40, seed=1) == mixed  # seeded bootstrap
    with pytest.raises(ValueError, match="no verdicts"):
        J.summarise([])


def test_bad_verdicts_and_lengths_are_refused():
    with pytest.raises(ValueError, match=r"Always\.compare returned 'a'"):
        J.judge_pair(Always("a"), "q", "x", "y", "c")
    with pytest.raises(ValueError, match="3 prompts but 2 and 3 responses"):
        J.win_rates(Longer(), ["q"] * 3, ["x"] * 2, ["y"] * 3, "c")


@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("b", "B"), (" Tie.", "tie"), ("Response A", "A"), ("Output (b)", "B"), ("**A**", "A"), ("(a)", "A"),
])
def test_parse_verdict(reply, verdict):
    assert J.parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["", "Both are fine", "A or B", "C"])
def test_parse_verdict_refuses_anything_else(reply):
    with pytest.raises(ValueError, match="is not A, B or tie"):
        J.parse_verdict(reply)


def test_rule_judge_reads_the_standin_traits():
    simple = "the dog and the cat play in the sun ."
    expert = "the thermodynamics of electromagnetic interferometry is probabilistic ."
    long = " ".join([simple] * 4)
    j = J.RuleJudge()
    assert J.judge_pair(j, "q", simple, expert, J.CRITERIA["P1A"]) == "A"
    assert J.judge_pair(j, "q", simple, expert, J.CRITERIA["P1B"]) == "B"
    assert J.judge_pair(j, "q", simple, long, "P2A") == "A"  # a dimension name works too
    assert J.judge_pair(j, "q", simple, long, J.CRITERIA["P2B"]) == "B"
    assert J.judge_pair(j, "q", simple, simple, J.CRITERIA["P2B"]) == "tie"
    assert J.RuleJudge(margin=0.9).compare("q", simple, expert, "P1A") == "tie"
    assert J.judge_pair(j, "q", "hey friend ! " + simple, "ugh , whatever . " + simple, "P3A") == "A"
    with pytest.raises(ValueError, match="knows only the soups criteria"):
        j.compare("q", simple, expert, "Prefer the funnier one.")


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge")
    tok = lm.build_word_tokenizer(soups.standin_vocabulary() + ["A", "B", "tie", "Answer:"])
    lora.tiny_llama(tok, hidden_size=32, n_layer=1, n_head=2, n_kv_head=2, intermediate_size=64).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_transformers_judge_is_deterministic(tiny_judge):
    j = J.TransformersJudge(tiny_judge)
    a, b = "the dog can play .", "the photosynthesis is catalytic ."
    verdicts = [j.compare("explain soap .", a, b, J.CRITERIA["P1A"]) for _ in range(2)]
    assert verdicts[0] in J.VERDICTS and verdicts[0] == verdicts[1]
    assert J.judge_pair(j, "explain soap .", a, b, J.CRITERIA["P1A"]) in J.VERDICTS


def test_transformers_judge_reads_the_logit_of_each_answer(tiny_judge):
    """A stand-in 'model' whose next-token logits favour one answer token picks that answer."""
    real = J.TransformersJudge(tiny_judge)
    tok = real.tokenizer

    class Favour(torch.nn.Module):
        def __init__(self, word):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.token = tok.convert_tokens_to_ids(word)

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., self.token] = 1.0
            return type("Out", (), {"logits": logits})

    for word, verdict in [("A", "A"), ("B", "B"), ("tie", "tie")]:
        assert J.TransformersJudge(model=Favour(word), tokenizer=tok).compare("q", "x", "y", "c") == verdict
    with pytest.raises(ValueError, match="give model_path or model"):
        J.TransformersJudge()


@pytest.fixture
def fake_endpoint():
    """A local OpenAI-compatible /chat/completions that answers from a list and records requests."""
    state = {"replies": [], "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
            status, content = state["replies"].pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode())

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()


def test_openai_judge_needs_its_environment(monkeypatch):
    for k in J.OpenAIJudge.ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PLURALIGN_JUDGE_MODEL", "m")
    with pytest.raises(RuntimeError, match="PLURALIGN_JUDGE_BASE_URL, PLURALIGN_JUDGE_API_KEY"):
        J.OpenAIJudge()


def test_openai_judge_over_http(monkeypatch, fake_endpoint):
    url, state = fake_endpoint
    monkeypatch.setenv("PLURALIGN_JUDGE_BASE_URL", url)
    monkeypatch.setenv("PLURALIGN_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("PLURALIGN_JUDGE_API_KEY", "sk-secret")
    monkeypatch.setattr(J.time, "sleep", lambda s: None)
    j = J.OpenAIJudge()
    assert "sk-secret" not in repr(j)
    state["replies"] = [(200, "A"), (503, ""), (200, "Output (a)")]  # second question: one retry after a 503
    assert J.judge_pair(j, "why ?", "x", "y", J.CRITERIA["P2A"]) == "tie"  # A then A: position bias → tie
    first = state["requests"][0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-secret"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0
    user = first["body"]["messages"][-1]["content"]
    assert J.CRITERIA["P2A"] in user and user.index("Response A:\nx") < user.index("Response B:\ny")
    assert "Response A:\ny" in state["requests"][1]["body"]["messages"][-1]["content"]  # swapped
    state["replies"] = [(200, "I cannot decide")]
    with pytest.raises(ValueError, match="is not A, B or tie"):
        j.compare("q", "x", "y", "c")
    state["replies"] = [(401, "")]
    with pytest.raises(RuntimeError, match="HTTP 401"):
        j.compare("q", "x", "y", "c")
