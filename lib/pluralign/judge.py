"""Pairwise judges and win rates for the Tulu2-7B evaluation (policy vs baseline on the Koala
prompts, one preference criterion at a time).

The GPT-4-era judges the paper used are retired, so the judge is pluggable: anything with
``compare(prompt, response_a, response_b, criterion) -> "A" | "B" | "tie"``.  Backends:

  TransformersJudge  a local causal LM, asked for A / B / tie; answers the one of the three whose
                     first token has the highest next-token logit (deterministic, no sampling)
  OpenAIJudge        an OpenAI-compatible chat-completions endpoint; base URL, model and key come
                     only from PLURALIGN_JUDGE_BASE_URL, PLURALIGN_JUDGE_MODEL, PLURALIGN_JUDGE_API_KEY
  RuleJudge          the `cpu` profile's stand-in: reads the generated stand-in's known traits
                     (:func:`pluralign.soups.standin_score`); meaningless on real text

Position bias: :func:`judge_pair` asks twice, the second time with the responses swapped, and a
response wins only if both orders pick it; disagreement or a tie in either order is a tie.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from typing import Protocol

import torch

__all__ = ["VERDICTS", "CRITERIA", "Judge", "judge_pair", "judge_pairs", "summarise", "win_rates",
           "parse_verdict", "judge_prompt", "TransformersJudge", "OpenAIJudge", "RuleJudge"]

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


def _verdict(v, judge) -> str:
    if v not in VERDICTS:
        raise ValueError(f"{type(judge).__name__}.compare returned {v!r}; expected one of {VERDICTS}")
    return v


def judge_pair(judge: Judge, prompt: str, response_a: str, response_b: str, criterion: str) -> str:
    """Verdict on (a, b) from both presentation orders: "A" if the judge picks a both as first and
    as second response, "B" likewise for b, otherwise "tie" (the orders disagree, or either says tie)."""
    first = _verdict(judge.compare(prompt, response_a, response_b, criterion), judge)
    second = _verdict(judge.compare(prompt, response_b, response_a, criterion), judge)  # "B" here means a
    if first == "A" and second == "B":
        return "A"
    if first == "B" and second == "A":
        return "B"
    return "tie"


def judge_pairs(judge: Judge, prompts, responses_a, responses_b, criterion: str) -> list[str]:
    """:func:`judge_pair` for every prompt: a list of "A" / "B" / "tie"."""
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(prompts)} prompts but {len(responses_a)} and {len(responses_b)} responses")
    return [judge_pair(judge, p, a, b, criterion) for p, a, b in zip(prompts, responses_a, responses_b)]


def summarise(verdicts, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Counts of A (win), tie and B (loss); win rate with ties counted half, and its percentile
    bootstrap interval over prompts (``n_boot`` resamples, seeded)."""
    n = len(verdicts)
    if n == 0:
        raise ValueError("no verdicts to summarise")
    s = torch.tensor([{"A": 1.0, "tie": 0.5, "B": 0.0}[v] for v in verdicts], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = s[torch.randint(n, (n_boot, n), generator=g)].mean(1)
    tail = (1 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"n": n, "win": verdicts.count("A"), "tie": verdicts.count("tie"), "loss": verdicts.count("B"),
            "win_rate_with_half_ties": float(s.mean()), "ci_low": lo, "ci_high": hi}


def win_rates(judge: Judge, prompts, policy_responses, baseline_responses, criterion: str, n_boot: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
    """Policy (position A) vs baseline on every prompt → :func:`summarise` numbers (win = policy
    preferred in both orders)."""
    return summarise(judge_pairs(judge, prompts, policy_responses, baseline_responses, criterion),
                     n_boot, confidence, seed)


# -- shared by the model judges ----------------------------------------------------------------
SYSTEM = "You compare two responses to the same request and say which better meets a criterion."


def judge_prompt(prompt: str, response_a: str, response_b: str, criterion: str) -> str:
    """The question put to a model judge."""
    return (f"Criterion: {criterion}\n\nRequest:\n{prompt}\n\nResponse A:\n{response_a}\n\n"
            f"Response B:\n{response_b}\n\nWhich response better meets the criterion? "
            "Reply with one word: A, B or tie.")


def parse_verdict(text: str) -> str:
    """A model's reply → "A" / "B" / "tie".  Accepts "A", "b.", "Tie", "Response A",
    "Output (b)"; anything else raises ValueError."""
    t = text.strip().strip("\"'`*.:!").strip().lower()
    m = re.fullmatch(r"(?:(?:response|output|answer)\s*:?\s*)?\(?([ab])\)?|(tie)", t)
    if m is None:
        raise ValueError(f"judge reply {text[:80]!r} is not A, B or tie")
    return "tie" if m.group(2) else m.group(1).upper()


class TransformersJudge:
    """A local causal LM as judge.  The question (:func:`judge_prompt`, in the tokenizer's chat
    template when it has one, else followed by "Answer:") is run once, and the verdict is the one of
    A / B / tie whose first answer token has the largest next-token logit — no sampling."""

    def __init__(self, model_path: str | None = None, model=None, tokenizer=None, dtype=torch.float32,
                 device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .lm import check_source

        if model is None:
            if model_path is None:
                raise ValueError("give model_path or model")
            check_source(model_path, "judge model")
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if tokenizer is None:
            if model_path is None:
                raise ValueError("give the tokenizer with the model")
            tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model, self.tokenizer = model.eval(), tokenizer
        if device is not None:
            self.model.to(device)

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
        fulls = [self.tokenizer(text + ans, add_special_tokens=False)["input_ids"] for ans in VERDICTS]
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
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        firsts, k = self._answer_tokens(text, ids)
        ids = ids[:k]
        if self.tokenizer.bos_token_id is not None and (not ids or ids[0] != self.tokenizer.bos_token_id):
            ids = [self.tokenizer.bos_token_id] + ids
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        return VERDICTS[int(logits[firsts].argmax())]


class OpenAIJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint as judge (temperature 0, a few tokens),
    over urllib.  Configuration only from the environment: PLURALIGN_JUDGE_BASE_URL (e.g.
    ``https://api.openai.com/v1`` or a local vLLM server's ``http://host:8000/v1``),
    PLURALIGN_JUDGE_MODEL and PLURALIGN_JUDGE_API_KEY.  Retries 429 / 5xx / timeouts."""

    ENV = ("PLURALIGN_JUDGE_BASE_URL", "PLURALIGN_JUDGE_MODEL", "PLURALIGN_JUDGE_API_KEY")

    def __init__(self, timeout: float = 60.0, max_tokens: int = 8, retries: int = 3):
        missing = [k for k in self.ENV if not os.environ.get(k)]
        if missing:
            raise RuntimeError(f"OpenAIJudge needs the environment variable(s) {', '.join(missing)} "
                               "(an OpenAI-compatible endpoint's base URL, the model name and the API key)")
        base, self.model, self._key = (os.environ[k] for k in self.ENV)
        self.url = base.rstrip("/") + "/chat/completions"
        self.timeout, self.max_tokens, self.retries = timeout, max_tokens, retries

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(url={self.url!r}, model={self.model!r})"

    def _post(self, body: dict) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._key}"})
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read().decode())
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500 or attempt == self.retries - 1:
                    raise RuntimeError(f"judge endpoint {self.url} answered HTTP {e.code}: "
                                       f"{e.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, TimeoutError) as e:
                if attempt == self.retries - 1:
                    raise RuntimeError(f"judge endpoint {self.url} unreachable: {e}") from None
            time.sleep(2 ** attempt)

    def compare(self, prompt, response_a, response_b, criterion) -> str:
        out = self._post({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                          "messages": [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": judge_prompt(prompt, response_a, response_b,
                                                                                criterion)}]})
        try:
            reply = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"judge endpoint {self.url} sent no choices[0].message.content: {str(out)[:200]}") from None
        return parse_verdict(reply)


class RuleJudge:
    """STAND-IN judge for the `cpu` profile: the criterion's soups dimension scored by the
    generated stand-in's own rules (:func:`pluralign.soups.standin_score`: long-word share,
    length, tone phrases); "tie" when the two scores differ by at most ``margin``."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    @staticmethod
    def dimension(criterion: str) -> str:
        if criterion in CRITERIA:
            return criterion
        for dim, text in CRITERIA.items():
            if criterion == text:
                return dim
        raise ValueError(f"RuleJudge knows only the soups criteria (pluralign.judge.CRITERIA), not {criterion[:60]!r}")

    def compare(self, prompt, response_a, response_b, criterion) -> str:
        from .soups import standin_score

        dim = self.dimension(criterion)
        d = standin_score(dim, response_a) - standin_score(dim, response_b)
        if not math.isfinite(d) or abs(d) <= self.margin:
            return "tie"
        return "A" if d > 0 else "B"
