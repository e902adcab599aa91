"""Pairwise judges and win rates for the Tulu2-7B evaluation (policy vs baseline on the Koala
prompts, one preference criterion at a time).

The GPT-4-era judges the paper used are retired, so the judge is pluggable: anything with
``compare(prompt, response_a, response_b, criterion) -> "A" | "B" | "tie"``.  Backends:

  TransformersJudge  a local causal LM, asked for A / B / tie; answers the one of the three whose
                     first token has the highest next-token logit (deterministic, no sampling)
  OpenAIJudge        an OpenAI-compatible chat-completions endpoint; base URL, model and key come
                     only from PLURALIGN_JUDGE_BASE_URL, PLURALIGN_JUDGE_MODEL, PLURALIGN_JUDGE_API_KEY
  RuleJudge          a rule per dimension on real text (:func:`pluralign.tulu_data.trait`): P1
                     readability (Flesch–Kincaid grade), P2 length (words); the `cpu` and `small`
                     profiles' judge.  ``rules="standin"`` reads the generated test fixture's
                     traits instead (:func:`pluralign.soups.standin_score`)

Position bias: :func:`judge_pair` asks twice, the second time with the responses swapped, and a
response wins only if both orders pick it; disagreement or a tie in either order is a tie.

Unreadable replies: a model judge whose reply :func:`parse_verdict` cannot read raises
:class:`UnparseableVerdict` (OpenAIJudge first asks again, ``parse_retries`` times); that order
then counts as a tie, and :func:`judge_pairs` / :func:`win_rates` report how many there were
(``unparseable``), so one chatty reply never aborts an evaluation.

The API key (OpenAIJudge) goes only to the configured endpoint: a redirect to another origin
(scheme, host, port) is refused, and no message shows the key or a response body that echoes it.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

import torch

__all__ = ["VERDICTS", "CRITERIA", "Judge", "UnparseableVerdict", "RedirectRefused", "judge_pair",
           "judge_pair_counted", "judge_pairs", "summarise", "win_rates", "parse_verdict", "judge_prompt",
           "TransformersJudge", "OpenAIJudge", "RuleJudge"]

VERDICTS = ("A", "B", "tie")
# What the judge is told to look for, per soups preference dimension.
CRITERIA = {
    "P1A": "Prefer the response that an elementary school student could easily understand.",
    "P1B": "Prefer the response that only a PhD student in that specific field could understand.",
    "P2A": "Prefer the response that is concise and to the point, without being verbose.",
    "P2B": "Prefer the response that is more informative and leaves out no needed background.",
    "P3A": "Prefer the response that is friendly, witty, funny and humorous, like a close friend.",
    "P3B": "Prefer the response written in an unfriendly manner.",
    "P3C": "Prefer the response written in a sassy manner.",
    "P3D": "Prefer the response written in a sarcastic manner.",
}


class Judge(Protocol):
    def compare(self, prompt: str, response_a: str, response_b: str, criterion: str) -> str: ...


class UnparseableVerdict(ValueError):
    """A model judge's reply that is not A, B or tie (see :func:`parse_verdict`); ``reply`` holds it."""

    def __init__(self, message: str, reply: str = ""):
        super().__init__(message)
        self.reply = reply


class RedirectRefused(RuntimeError):
    """The judge endpoint redirected to another origin; the request (and its key) was not sent there."""


def _verdict(v, judge) -> str:
    if v not in VERDICTS:
        raise ValueError(f"{type(judge).__name__}.compare returned {v!r}; expected one of {VERDICTS}")
    return v


def _ask(judge, prompt, a, b, criterion) -> str | None:
    """The judge's verdict, or None when its reply could not be read (UnparseableVerdict)."""
    try:
        return _verdict(judge.compare(prompt, a, b, criterion), judge)
    except UnparseableVerdict:
        return None


def judge_pair_counted(judge: Judge, prompt: str, response_a: str, response_b: str, criterion: str) -> tuple[str, int]:
    """(:func:`judge_pair`'s verdict, how many of its two replies were unreadable: 0, 1 or 2).
    An unreadable reply counts as a tie in its order, so the pair is then a tie."""
    first = _ask(judge, prompt, response_a, response_b, criterion)
    second = _ask(judge, prompt, response_b, response_a, criterion)  # "B" here means a
    bad = (first is None) + (second is None)
    if first == "A" and second == "B":
        return "A", bad
    if first == "B" and second == "A":
        return "B", bad
    return "tie", bad


def judge_pair(judge: Judge, prompt: str, response_a: str, response_b: str, criterion: str) -> str:
    """Verdict on (a, b) from both presentation orders: "A" if the judge picks a both as first and
    as second response, "B" likewise for b, otherwise "tie" (the orders disagree, either says tie,
    or either reply was unreadable: :class:`UnparseableVerdict`)."""
    return judge_pair_counted(judge, prompt, response_a, response_b, criterion)[0]


def judge_pairs(judge: Judge, prompts, responses_a, responses_b, criterion: str) -> tuple[list[str], int]:
    """:func:`judge_pair` for every prompt → (a list of "A" / "B" / "tie", the number of unreadable
    replies among the 2 × len(prompts) asked; each made its pair a tie)."""
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(prompts)} prompts but {len(responses_a)} and {len(responses_b)} responses")
    verdicts, unparseable = [], 0
    for p, a, b in zip(prompts, responses_a, responses_b):
        v, bad = judge_pair_counted(judge, p, a, b, criterion)
        verdicts.append(v)
        unparseable += bad
    return verdicts, unparseable


OUTCOME = {"A": 1.0, "tie": 0.5, "B": 0.0}  # a win for the response in position A; a tie counts ½


def verdict_outcomes(verdicts) -> torch.Tensor:
    """(N,) outcomes of "A" / "tie" / "B" verdicts: 1, ½, 0 (:mod:`pluralign.intervals`' definition)."""
    return torch.tensor([OUTCOME[v] for v in verdicts], dtype=torch.float64)


def summarise(verdicts, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, unparseable: int = 0) -> dict:
    """Counts of A (win), tie and B (loss); win rate with ties counted half, and its percentile
    bootstrap interval over prompts (``n_boot`` resamples, seeded); ``unparseable`` (the number of
    unreadable judge replies behind these verdicts) is passed through."""
    n = len(verdicts)
    if n == 0:
        raise ValueError("no verdicts to summarise")
    s = verdict_outcomes(verdicts)
    g = torch.Generator().manual_seed(seed)
    means = s[torch.randint(n, (n_boot, n), generator=g)].mean(1)
    tail = (1 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"n": n, "win": verdicts.count("A"), "tie": verdicts.count("tie"), "loss": verdicts.count("B"),
            "win_rate_with_half_ties": float(s.mean()), "ci_low": lo, "ci_high": hi, "unparseable": int(unparseable)}


def win_rates(judge: Judge, prompts, policy_responses, baseline_responses, criterion: str, n_boot: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """Policy (position A) vs baseline on every prompt → :func:`summarise` numbers (win = policy
    preferred in both orders), with ``unparseable``: how many judge replies could not be read."""
    verdicts, unparseable = judge_pairs(judge, prompts, policy_responses, baseline_responses, criterion)
    return summarise(verdicts, n_boot, confidence, seed, unparseable)


# -- shared by the model judges ----------------------------------------------------------------
SYSTEM = "You compare two responses to the same request and say which better meets a criterion."


def judge_prompt(prompt: str, response_a: str, response_b: str, criterion: str) -> str:
    """The question put to a model judge."""
    return (f"Criterion: {criterion}\n\nRequest:\n{prompt}\n\nResponse A:\n{response_a}\n\n"
            f"Response B:\n{response_b}\n\nWhich response better meets the criterion? "
            "Reply with one word: A, B or tie.")


ASK_AGAIN = "Reply with exactly one word: A, B or tie."
_MARKUP = " \t\r\n*_#>\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"  # stripped from the front of a reply
_LEAD = (r"(?:(?:my|the|final|overall|your)\s+)*"
         r"(?:verdict|answer|choice|decision|judge?ment|winner|preference"
         r"|better\s+(?:response|answer|output|one|option))"
         r"\s*(?:is\b\s*)?[:\-\u2013\u2014]?\s*")
_NAME = r"(?:response|output|answer|option|assistant|candidate)\s*[:#]?\s*"
_BRACKETED = r"(?:\[\[\s*(?P<l1>[ab])\s*\]\]|\[\s*(?P<l2>[ab])\s*\]|\(\s*(?P<l3>[ab])\s*\))"
_BARE = r"(?P<l4>[ab])(?!\w)"
_NOT_A_LIST = r"(?!\s*(?:(?:or|and|vs|versus|nor)\b|[&/+]|,\s*[ab](?!\w)))"  # "A or B", "A/B", "A, B" say nothing
_BARE_END = (r"(?=\s*$|\s*\n|\s*[.,;:!?)\]*\"'`\u201d\u2019]|\s+[-\u2013\u2014]"
             r"|\s+(?:is|was|wins|won|seems|appears|meets|does|clearly|definitely|obviously|because|since)\b)")
_TIE = (r"[\[(]*\s*(?:(?:(?:it|this|that)(?:['\u2019]s|\s+is|\s+was)\s+)?(?:a\s+)?(?:tie|tied|draw)"
        r"|neither|equal(?:ly)?|both\s+(?:are\s+)?equal(?:ly\s+\w+)?)\b")
_VERDICT_RE = re.compile(rf"(?:{_LEAD})?(?:(?:{_NAME})?{_BRACKETED}{_NOT_A_LIST}|{_NAME}(?P<l5>[ab])(?!\w){_NOT_A_LIST}"
                         rf"|{_BARE}{_NOT_A_LIST}{_BARE_END}|(?P<tie>{_TIE}))", re.IGNORECASE)


def parse_verdict(text: str) -> str:
    """A model's reply → "A" / "B" / "tie", read from its **leading verdict**; the rest of the
    reply (a reason, a second paragraph) is ignored.  Case-insensitive.  The accepted grammar:

        reply     := markup* [lead] (named | bracketed | bare | tie) anything
        markup    := whitespace, * _ # > and quotes (markdown bold, headings, "A", \u201cA\u201d)
        lead      := [my|the|final|overall|your]* (verdict | answer | choice | decision | judgement
                     | winner | preference | better response|answer|output|one|option) [is] [: or dash]
        named     := (response | output | answer | option | assistant | candidate) [: or #] (bracketed | letter)
        bracketed := [[letter]] | [letter] | (letter)
        bare      := letter followed by the end, a new line, punctuation (. , ; : ! ? ) ] * quotes),
                     a dash, or one of the words is / was / wins / won / seems / appears / meets /
                     does / clearly / definitely / obviously / because / since
        letter    := A | B, not followed by a letter or digit
        tie       := [it's | it is | this is | that's ...] [a] (tie | tied | draw) | neither | equal[ly]
                     | both [are] equal[ly …]   (optionally after [[, [ or ( )

    and the letter must not start a list ("A or B", "A and B", "A/B", "A, B", "A vs B").  So "A",
    "[[B]]", "Response A is better.", "A\n\nBecause …", "Verdict: B", "The better response is B",
    "It's a tie." are read; "A better answer is B" is **not** ("A" is an article there: a bare
    letter followed by another word needs one of the verbs above), nor "C", "Both are fine" or an
    empty reply — those raise :class:`UnparseableVerdict` (a ValueError)."""
    t = str(text).lstrip(_MARKUP)
    m = _VERDICT_RE.match(t)
    if m is None:
        shown = " ".join(str(text).split())[:80]
        raise UnparseableVerdict(f"judge reply {shown!r} is not A, B or tie", str(text))
    if m.group("tie"):
        return "tie"
    return next(m.group(g) for g in ("l1", "l2", "l3", "l4", "l5") if m.group(g)).upper()


class TransformersJudge:
    """A local causal LM as judge.  The question (:func:`judge_prompt`, in the tokenizer's chat
    template when it has one, else followed by "Answer:") is run once, and the verdict is the one of
    A / B / tie whose first answer token has the largest next-token logit — no sampling.

    Tokens: the model sees exactly one <bos> first when its tokenizer has a BOS token — what
    Llama-family tokenizers add by default and what pluralign's own models were trained with
    (:func:`pluralign.lm.encode_prompts`); a chat template that writes <bos> itself is not given a
    second one, and nothing is appended (no <eos>) after the prompt.  A local ``model_path`` has its
    ``*.safetensors`` files checked first (:func:`pluralign.lm.check_safetensors`)."""

    def __init__(self, model_path: str | None = None, model=None, tokenizer=None, dtype=torch.float32,
                 device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .lm import check_safetensors, check_source

        self.model_path = model_path
        if model is None:
            if model_path is None:
                raise ValueError("give model_path or model")
            check_source(model_path, "judge model")
            check_safetensors(model_path, "judge model")
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if tokenizer is None:
            if model_path is None:
                raise ValueError("give the tokenizer with the model")
            tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model, self.tokenizer = model.eval(), tokenizer
        if device is not None:
            self.model.to(device)

    def describe(self) -> dict:
        """What to record about this judge (metrics): the model path or name."""
        name = self.model_path or getattr(getattr(self.model, "config", None), "_name_or_path", None)
        return {"backend": "transformers", "model": name or type(self.model).__name__}

    def encode(self, text: str) -> list[int]:
        """``text`` as the model expects it: the tokens of the text (special tokens that the chat
        template wrote are kept as such) with one <bos> first if the tokenizer has one."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def text(self, prompt, response_a, response_b, criterion) -> str:
        question = judge_prompt(prompt, response_a, response_b, criterion)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                tokenize=False, add_generation_prompt=True)
        return f"{SYSTEM}\n\n{question}\nAnswer: "

    def _answer_tokens(self, text: str, ids: list[int]) -> tuple[list[int], int]:
        """(first token of each answer as it would follow ``text``, position k where the answers
        start): tokenisers may merge the last prompt token with the answer, so k can be < len(ids)."""
        fulls = [self.encode(text + ans) for ans in VERDICTS]
        k = min(next((i for i, (x, y) in enumerate(zip(ids, f)) if x != y), min(len(ids), len(f))) for f in fulls)
        if any(len(f) <= k for f in fulls):
            raise ValueError(f"an answer in {VERDICTS} adds no token after the judge prompt")
        firsts = [f[k] for f in fulls]
        if len(set(firsts)) < 3:
            raise ValueError(f"the answers {VERDICTS} share a first token ({firsts}) in this tokenizer")
        return firsts, k

    @torch.no_grad()
    def compare(self, prompt, response_a, response_b, criterion) -> str:
        text = self.text(prompt, response_a, response_b, criterion)
        ids = self.encode(text)
        firsts, k = self._answer_tokens(text, ids)
        ids = ids[:k]
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        return VERDICTS[int(logits[firsts].argmax())]


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    return scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(scheme)


def _shown_origin(url: str) -> str:
    scheme, host, port = _origin(url)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == {"http": 80, "https": 443}.get(scheme) else f":{port}")


def _public_url(url: str) -> str:
    """``url`` without user:password@, query or fragment (what may be shown or recorded)."""
    return _shown_origin(url) + urllib.parse.urlsplit(url).path.rstrip("/")


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the request's origin (scheme, host and port all equal):
    anything else raises :class:`RedirectRefused` before a byte (or the Authorization header) is
    sent there.  Within the origin a 307 / 308 repeats the POST with its body."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            raise RedirectRefused(f"judge endpoint {_shown_origin(req.full_url)} answered with a redirect "
                                  f"(HTTP {code}) to another origin, {_shown_origin(newurl)}: refused (the API key is sent only "
                                  "to PLURALIGN_JUDGE_BASE_URL's own scheme, host and port)")
        keep_body = code in (307, 308)
        headers_ = {k: v for k, v in req.header_items()
                    if keep_body or k.lower() not in ("content-length", "content-type")}
        return urllib.request.Request(newurl, data=req.data if keep_body else None, headers=headers_,
                                      method=req.get_method() if keep_body else "GET",
                                      origin_req_host=req.origin_req_host, unverifiable=True)


class OpenAIJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint as judge (temperature 0, a few tokens),
    over urllib.  Configuration only from the environment: PLURALIGN_JUDGE_BASE_URL (e.g.
    ``https://api.openai.com/v1`` or a local vLLM server's ``http://host:8000/v1``),
    PLURALIGN_JUDGE_MODEL and PLURALIGN_JUDGE_API_KEY.  Retries 429 / 5xx / timeouts
    (``retries`` attempts); a reply :func:`parse_verdict` cannot read is asked again
    ``parse_retries`` times (the reply and :data:`ASK_AGAIN` appended to the conversation), then
    raises :class:`UnparseableVerdict` (which :func:`judge_pair` counts as a tie).

    The key: sent only to the base URL's origin (redirects elsewhere are refused:
    :class:`RedirectRefused`); never in ``repr``, :meth:`describe` or an error message (a response
    body is shown only as its ``error.message``, with the key and any ``Bearer …`` redacted)."""

    ENV = ("PLURALIGN_JUDGE_BASE_URL", "PLURALIGN_JUDGE_MODEL", "PLURALIGN_JUDGE_API_KEY")

    def __init__(self, timeout: float = 60.0, max_tokens: int = 8, retries: int = 3, parse_retries: int = 2):
        missing = [k for k in self.ENV if not os.environ.get(k)]
        if missing:
            raise RuntimeError(f"OpenAIJudge needs the environment variable(s) {', '.join(missing)} "
                               "(an OpenAI-compatible endpoint's base URL, the model name and the API key)")
        base, self.model, self._key = (os.environ[k] for k in self.ENV)
        if urllib.parse.urlsplit(base).scheme.lower() not in ("http", "https"):
            raise RuntimeError(f"PLURALIGN_JUDGE_BASE_URL must be an http(s) URL, got {self._redact(base)[:80]!r}")
        self.url = base.rstrip("/") + "/chat/completions"
        self.base_url = _public_url(base)
        self._shown = _public_url(self.url)
        self.timeout, self.max_tokens = timeout, max_tokens
        self.retries, self.parse_retries = max(1, int(retries)), max(0, int(parse_retries))
        self._opener = urllib.request.build_opener(_SameOriginRedirects)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(url={self._shown!r}, model={self.model!r})"

    def describe(self) -> dict:
        """What to record about this judge (metrics): base URL (no credentials or query) and model."""
        return {"backend": "openai", "base_url": self.base_url, "model": self.model}

    def _redact(self, text) -> str:
        """``text`` on one line, without the key, any bearer token or Authorization value."""
        text = str(text)
        if self._key:
            text = text.replace(self._key, "[redacted]")
        text = re.sub(r"(?i)(bearer\s+)[^\s\"',;}]+", r"\1[redacted]", text)
        text = re.sub(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?!bearer\b)[^\s\"',;}]+", r"\1[redacted]", text)
        return " ".join(text.split())

    def _error_detail(self, raw: bytes) -> str:
        """The ``error.message`` (or ``detail``) of an error body, redacted; never the raw body."""
        try:
            body = json.loads(raw.decode("utf-8", errors="replace"))
        except ValueError:
            return f"({len(raw)}-byte non-JSON body not shown)" if raw else ""
        err = body.get("error", body.get("detail")) if isinstance(body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err
        if not isinstance(msg, str):
            return "(body not shown)"
        return self._redact(msg)[:200]

    def _post(self, body: dict) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._key}"})
        for attempt in range(self.retries):
            try:
                with self._opener.open(req, timeout=self.timeout) as r:
                    raw = r.read()
                try:
                    return json.loads(raw.decode())
                except ValueError:
                    raise ValueError(f"judge endpoint {self._shown} sent a reply that is not JSON "
                                     f"({len(raw)} bytes, not shown)") from None
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500 or attempt == self.retries - 1:
                    try:
                        detail = self._error_detail(e.read(65536))
                    except Exception:  # noqa: BLE001  (a broken error body must not hide the status)
                        detail = ""
                    raise RuntimeError(f"judge endpoint {self._shown} answered HTTP {e.code}"
                                       + (f": {detail}" if detail else "")) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries - 1:
                    raise RuntimeError(f"judge endpoint {self._shown} unreachable: "
                                       f"{self._redact(getattr(e, 'reason', e))[:200]}") from None
            time.sleep(2 ** attempt)

    def _reply(self, messages: list[dict]) -> str:
        out = self._post({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens, "messages": messages})
        try:
            reply = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            shape = (f"a JSON object with keys {sorted(out)[:10]}" if isinstance(out, dict)
                     else f"a {type(out).__name__}")
            raise ValueError(f"judge endpoint {self._shown} sent no choices[0].message.content "
                             f"(got {self._redact(shape)[:200]})") from None
        return reply if isinstance(reply, str) else ""

    def compare(self, prompt, response_a, response_b, criterion) -> str:
        question = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": judge_prompt(prompt, response_a, response_b, criterion)}]
        messages = question
        for attempt in range(self.parse_retries + 1):
            reply = self._reply(messages)
            try:
                return parse_verdict(reply)
            except UnparseableVerdict:
                messages = question + [{"role": "assistant", "content": reply}, {"role": "user", "content": ASK_AGAIN}]
        shown = self._redact(reply)[:80]
        raise UnparseableVerdict(f"judge reply {shown!r} is not A, B or tie (asked {self.parse_retries + 1} times)",
                                 reply)


class RuleJudge:
    """A rule judge: the criterion's dimension scored by a text rule, "tie" when the two scores
    differ by at most ``margin``.  ``rules="text"`` (default): :func:`pluralign.tulu_data.trait` —
    P1A / P1B by Flesch–Kincaid grade (lower / higher wins), P2A / P2B by word count (fewer / more
    wins); the P3 (tone) dimensions have no rule (ValueError).  ``rules="standin"``: the generated
    soups stand-in's own rules (:func:`pluralign.soups.standin_score`), for the test fixture."""

    RULES = ("text", "standin")

    def __init__(self, margin: float = 0.0, rules: str = "text"):
        if rules not in self.RULES:
            raise ValueError(f"RuleJudge rules must be one of {self.RULES}, got {rules!r}")
        self.margin, self.rules = margin, rules

    def describe(self) -> dict:
        what = {"text": "P1: Flesch-Kincaid grade (textstat); P2: word count",
                "standin": "generated stand-in traits"}[self.rules]
        return {"backend": "rule", "rules": self.rules, "what": what, "margin": float(self.margin)}

    @staticmethod
    def dimension(criterion: str) -> str:
        if criterion in CRITERIA:
            return criterion
        for dim, text in CRITERIA.items():
            if criterion == text:
                return dim
        raise ValueError(f"RuleJudge knows only the soups criteria (pluralign.judge.CRITERIA), not {criterion[:60]!r}")

    def score(self, dim: str, text: str) -> float:
        if self.rules == "standin":
            from .soups import standin_score

            return standin_score(dim, text)
        from .tulu_data import trait

        return trait(dim, text)

    def compare(self, prompt, response_a, response_b, criterion) -> str:
        dim = self.dimension(criterion)
        d = self.score(dim, response_a) - self.score(dim, response_b)
        if not math.isfinite(d) or abs(d) <= self.margin:
            return "tie"
        return "A" if d > 0 else "B"
