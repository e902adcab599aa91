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
    # chatty replies: the leading verdict counts, whatever follows it
    ("A\n\nBecause it uses simpler words.", "A"), ("Response A is better.", "A"), ("[[A]]", "A"), ("[[b]]", "B"),
    ("It's a tie.", "tie"), ("it is a tie", "tie"), ("Tie: both are equally clear.", "tie"), ("Tied.", "tie"),
    ("B. Response B explains more.", "B"), ("Verdict: B", "B"), ("Final verdict: [[B]]", "B"),
    ("The better response is B.", "B"), ("**Response B**", "B"), ("A is better", "A"), ("'A'", "A"),
    ("A, because it is short.", "A"), ("Answer: tie", "tie"), ("B\n", "B"), ("A - it is clearer", "A"),
    ("Response B is clearly better than Response A.", "B"), ("[A]", "A"), ("b)", "B"), ("My answer: A", "A"),
    ("Neither; they are equal.", "tie"), ("\u201cA\u201d", "A"),
])
def test_parse_verdict(reply, verdict):
    assert J.parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", [
    "", "Both are fine", "A or B", "C", "[[C]]", "I cannot decide",
    "A better answer is B",  # "A" is an article here, not a verdict
    "A good answer would mention soap.", "Response A and Response B are both good.", "A/B", "Abstain", "Bad question.",
])
def test_parse_verdict_refuses_anything_else(reply):
    with pytest.raises(J.UnparseableVerdict, match="is not A, B or tie"):
        J.parse_verdict(reply)


def test_rule_judge_reads_the_standin_traits():
    simple = "the dog and the cat play in the sun ."
    expert = "the thermodynamics of electromagnetic interferometry is probabilistic ."
    long = " ".join([simple] * 4)
    j = J.RuleJudge(rules="standin")
    assert J.judge_pair(j, "q", simple, expert, J.CRITERIA["P1A"]) == "A"
    assert J.judge_pair(j, "q", simple, expert, J.CRITERIA["P1B"]) == "B"
    assert J.judge_pair(j, "q", simple, long, "P2A") == "A"  # a dimension name works too
    assert J.judge_pair(j, "q", simple, long, J.CRITERIA["P2B"]) == "B"
    assert J.judge_pair(j, "q", simple, simple, J.CRITERIA["P2B"]) == "tie"
    assert J.RuleJudge(margin=0.9, rules="standin").compare("q", simple, expert, "P1A") == "tie"
    assert J.judge_pair(j, "q", "hey friend ! " + simple, "ugh , whatever . " + simple, "P3A") == "A"
    with pytest.raises(ValueError, match="knows only the soups criteria"):
        j.compare("q", simple, expert, "Prefer the funnier one.")


def test_rule_judge_on_real_text_reads_readability_and_length():
    simple = "The sun is hot. Dogs like to run. We can play in the park."
    expert = ("Photosynthetic carbon fixation proceeds predominantly through ribulose-1,5-bisphosphate "
              "carboxylase/oxygenase, whose catalytic inefficiency necessitates considerable enzymatic abundance.")
    long = " ".join([simple] * 5)
    j = J.RuleJudge()
    assert j.describe()["rules"] == "text"
    assert J.judge_pair(j, "q", simple, expert, J.CRITERIA["P1A"]) == "A"   # lower grade wins
    assert J.judge_pair(j, "q", simple, expert, "P1B") == "B"               # higher grade wins
    assert J.judge_pair(j, "q", simple, long, "P2A") == "A"                 # fewer words win
    assert J.judge_pair(j, "q", simple, long, J.CRITERIA["P2B"]) == "B"
    assert J.judge_pair(j, "q", long, long, "P2B") == "tie"
    with pytest.raises(ValueError, match="has no text rule"):
        j.compare("q", simple, expert, "P3A")
    with pytest.raises(ValueError, match="rules must be one of"):
        J.RuleJudge(rules="vibes")


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
    state["replies"] = [(200, "I cannot decide")] * 3  # asked again twice (parse_retries=2), then given up on
    with pytest.raises(J.UnparseableVerdict, match="is not A, B or tie"):
        j.compare("q", "x", "y", "c")
    state["replies"] = [(401, "")]
    with pytest.raises(RuntimeError, match="HTTP 401"):
        j.compare("q", "x", "y", "c")


# -- unparseable replies: counted, not fatal ---------------------------------------------------
class Mumbles:
    """A judge whose reply cannot be read on the listed calls (as OpenAIJudge after its retries)."""

    def __init__(self, bad_calls, verdict="A"):
        self.bad, self.verdict, self.calls = set(bad_calls), verdict, 0

    def compare(self, prompt, a, b, criterion):
        self.calls += 1
        if self.calls in self.bad:
            raise J.UnparseableVerdict("judge reply 'hmm' is not A, B or tie")
        return self.verdict if self.calls % 2 else {"A": "B", "B": "A"}[self.verdict]


def test_unparseable_replies_count_as_ties_and_are_reported():
    assert J.judge_pair(Mumbles({1}), "q", "x", "y", "c") == "tie"
    verdicts, unparseable = J.judge_pairs(Mumbles({3, 6}), ["q"] * 3, ["x"] * 3, ["y"] * 3, "c")
    assert verdicts == ["A", "tie", "tie"] and unparseable == 2
    assert J.judge_pairs(Longer(), ["q"], ["long"], ["s"], "c") == (["A"], 0)
    r = J.win_rates(Mumbles({1, 2}), ["q"] * 4, ["x"] * 4, ["y"] * 4, "c")
    assert (r["win"], r["tie"], r["unparseable"]) == (3, 1, 2)
    assert J.win_rates(Longer(), ["q"], ["long"], ["s"], "c")["unparseable"] == 0


def test_openai_judge_asks_again_after_a_chatty_or_unreadable_reply(monkeypatch, fake_endpoint):
    url, state = fake_endpoint
    for k, v in zip(J.OpenAIJudge.ENV, (url, "judge-model", "sk-secret")):
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(J.time, "sleep", lambda s: None)
    j = J.OpenAIJudge()
    state["replies"] = [(200, "Response B is better.")]
    assert j.compare("q", "x", "y", "c") == "B"  # a chatty reply is read, not retried
    state["replies"] = [(200, "Well, let me think about both."), (200, "A")]
    assert j.compare("q", "x", "y", "c") == "A"
    again = state["requests"][-1]["body"]["messages"]
    assert again[-2] == {"role": "assistant", "content": "Well, let me think about both."}
    assert again[-1]["role"] == "user" and "A, B or tie" in again[-1]["content"]
    state["replies"] = [(200, "Hmm.")] * 3 + [(200, "A"), (200, "B")]
    verdicts, unparseable = J.judge_pairs(j, ["q"], ["x"], ["y"], "c")  # first order unreadable 3 times: a tie
    assert (verdicts, unparseable) == (["tie"], 1) and state["replies"] == [(200, "B")]


# -- the API key stays with its endpoint -------------------------------------------------------
def _server(handler_cls):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def redirecting_endpoints():
    """Endpoint 1 redirects every POST to the path state["to"] (a full URL); endpoint 2, another
    origin (another port), records what it receives and answers like a judge."""
    state = {"to": None, "code": 307, "seen": []}

    class Other(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            state["seen"].append({"path": self.path, "auth": self.headers.get("Authorization"),
                                  "body": self.rfile.read(n)})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"choices": [{"message": {"content": "A"}}]}).encode())

        do_GET = do_POST

        def log_message(self, *a):
            pass

    class First(Other):
        def do_POST(self):
            if self.path.startswith("/same/"):
                return Other.do_POST(self)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(state["code"])
            self.send_header("Location", state["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()

    first, other = _server(First), _server(Other)
    yield f"http://127.0.0.1:{first.server_address[1]}", f"http://127.0.0.1:{other.server_address[1]}", state
    for s in (first, other):
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_openai_judge_refuses_a_redirect_to_another_origin(monkeypatch, redirecting_endpoints, code):
    first, other, state = redirecting_endpoints
    for k, v in zip(J.OpenAIJudge.ENV, (first + "/v1", "judge-model", "sk-secret-123")):
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(J.time, "sleep", lambda s: None)
    state["to"], state["code"] = other + "/v1/chat/completions", code
    with pytest.raises(RuntimeError) as err:
        J.OpenAIJudge().compare("q", "x", "y", "c")
    msg = str(err.value)
    assert "redirect" in msg and other in msg and "refused" in msg and "\n" not in msg
    assert "sk-secret-123" not in msg
    assert state["seen"] == []  # the other origin never saw the request, let alone the key


def test_openai_judge_follows_a_same_origin_redirect(monkeypatch, redirecting_endpoints):
    first, other, state = redirecting_endpoints
    for k, v in zip(J.OpenAIJudge.ENV, (first + "/v1", "judge-model", "sk-secret-123")):
        monkeypatch.setenv(k, v)
    state["to"], state["code"] = first + "/same/v1/chat/completions", 307
    assert J.OpenAIJudge().compare("q", "x", "y", "c") == "A"
    seen = state["seen"][0]
    assert seen["auth"] == "Bearer sk-secret-123" and json.loads(seen["body"])["model"] == "judge-model"


@pytest.fixture
def echoing_endpoint():
    """Answers every POST with state["status"] and a body that echoes the request's Authorization header."""
    state = {"status": 400, "json": True}

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            auth = self.headers.get("Authorization")
            body = ({"error": {"message": f"invalid key; you sent Authorization: {auth}"}} if state["json"]
                    else {"echo": {"headers": {"Authorization": auth}}})
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode())

        def log_message(self, *a):
            pass

    server = _server(Echo)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, as_error", [(400, True), (401, True), (500, True), (200, False)])
def test_an_error_body_that_echoes_the_key_does_not_show_it(monkeypatch, echoing_endpoint, status, as_error):
    url, state = echoing_endpoint
    for k, v in zip(J.OpenAIJudge.ENV, (url, "judge-model", "sk-secret-123")):
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(J.time, "sleep", lambda s: None)
    state["status"], state["json"] = status, as_error
    with pytest.raises((RuntimeError, ValueError)) as err:
        J.OpenAIJudge().compare("q", "x", "y", "c")
    msg = str(err.value)
    assert "secret" not in msg and "\n" not in msg and url.split("/v1")[0] in msg
    assert (f"HTTP {status}" in msg) if as_error else ("choices[0].message.content" in msg)


def test_judges_describe_themselves_without_the_key(monkeypatch, tiny_judge):
    for k, v in zip(J.OpenAIJudge.ENV, ("https://user:pw@judge.example/v1/?api_key=sk-q", "judge-model", "sk-secret")):
        monkeypatch.setenv(k, v)
    d = J.OpenAIJudge().describe()
    assert d == {"backend": "openai", "base_url": "https://judge.example/v1", "model": "judge-model"}
    assert "sk-" not in repr(J.OpenAIJudge()) and "pw" not in repr(J.OpenAIJudge())
    assert J.RuleJudge().describe()["backend"] == "rule" and J.RuleJudge().describe()["margin"] == 0.0
    assert J.TransformersJudge(tiny_judge).describe() == {"backend": "transformers", "model": tiny_judge}


# -- tokenisation: one <bos> first, as the model was trained -----------------------------------
def _llama_like_tokenizer(chat_template=None, adds_bos=True):
    """A word-level tokenizer with Llama's special tokens (<s> </s>) whose post-processor adds <s>
    first (as LlamaTokenizerFast does) unless ``adds_bos`` is False."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = soups.standin_vocabulary() + ["A", "B", "tie", "Answer:", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(words) - set(specials)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                            special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


class Recorder(torch.nn.Module):
    """Records the ids it is given; favours no answer."""

    def __init__(self, vocab):
        super().__init__()
        self.w, self.vocab, self.seen = torch.nn.Parameter(torch.zeros(1)), vocab, []

    def forward(self, input_ids):
        self.seen.append(input_ids[0].tolist())
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})


TEMPLATE_BOS = "{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}<|assistant|> "
TEMPLATE_NO_BOS = "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}<|assistant|> "


@pytest.mark.parametrize("template, adds_bos", [(None, True), (TEMPLATE_BOS, True), (TEMPLATE_NO_BOS, True),
                                                (None, False)])
def test_transformers_judge_gives_the_model_one_bos_first(template, adds_bos):
    tok = _llama_like_tokenizer(template, adds_bos)
    model = Recorder(len(tok))
    J.TransformersJudge(model=model, tokenizer=tok).compare("explain soap .", "the dog can play .", "the sun .", "c")
    ids = model.seen[0]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.eos_token_id not in ids and tok.convert_ids_to_tokens(ids[-1]) in ("Answer:", "<|assistant|>")
    if template:
        assert tok.convert_ids_to_tokens(ids[1]) == "<|user|>"


# -- model files: a truncated shard is named ---------------------------------------------------
@pytest.fixture
def sharded_judge(tmp_path):
    tok = lm.build_word_tokenizer(soups.standin_vocabulary() + ["A", "B", "tie", "Answer:"])
    lora.tiny_llama(tok, hidden_size=32, n_layer=2, n_head=2, n_kv_head=2, intermediate_size=64).save_pretrained(
        tmp_path, max_shard_size="40KB")
    tok.save_pretrained(tmp_path)
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) > 2
    return tmp_path, shards


def test_a_truncated_safetensors_shard_is_named(sharded_judge):
    path, shards = sharded_judge
    lm.check_safetensors(path)  # intact: fine
    bad = shards[1]
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 100)
    for call in (lambda: lm.check_safetensors(path, "judge model"), lambda: J.TransformersJudge(str(path))):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert str(bad) in msg and "truncated" in msg and "\n" not in msg
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{bad.name}.*is empty"):
        lm.check_safetensors(path)


def test_a_missing_shard_is_named(sharded_judge):
    path, shards = sharded_judge
    shards[0].unlink()
    with pytest.raises(ValueError, match=f"{shards[0].name}.*listed in model.safetensors.index.json.*missing"):
        lm.check_safetensors(path)
