"""Real text for the Tulu2 experiment: preference pairs from AlpacaEval's style variants, users
who label them, Alpaca PPO prompts, the Koala evaluation prompts, and the text traits that both
the simulated users and the rule judge read.

Sources (verified copies in ``data/raw/``, read through :mod:`pluralign.rawdata`; see
``data/raw/README.md`` for origins and licenses): AlpacaEval (Li et al. 2023; 805 instructions,
each answered concisely and verbosely by the same generator for six generators), Alpaca
(AlpacaDataCleaned, Taori et al. 2023) and the 50 Koala prompts (Geng et al. 2023).

**Pairs.**  For every AlpacaEval instruction and each generator of :data:`STYLE_GENERATORS`, the
pair (``<generator>_concise``, ``<generator>_verbose``): two real answers to one instruction by
one model that differ by design in length (and, less, in everything else).  4,827 such pairs
exist; 28 are two identical texts and 3 lack a variant — :func:`style_pairs` leaves those out
and *counts* them (nothing is dropped without a number).

**Dimensions** (the RLPHF annotator instructions, :data:`pluralign.soups.PREFERENCES`), each as a
trait score in [0, 1] of one text (:func:`trait`; higher = preferred by that dimension):

  P1A elementary   1 − g/20, g = Flesch–Kincaid grade (``textstat``) clipped to [0, 20]
  P1B expert       g/20
  P2A concise      1 − ℓ, ℓ = min(1, log(1 + words) / log(1001))
  P2B informative  ℓ

Simulated users label a pair as the GPT-2 users do (:func:`pluralign.preferences.label_pairs`):
a user of group g prefers a with P = σ((s_g(a) − s_g(b)) / temperature).  Every pair is labelled
by one user; all groups draw from the same pool of pairs (so P1A and P1B users disagree on every
pair, as the two instructions ask).  The P3 dimensions (tone) have no text rule here.

**Reward-model inputs are long** (verbose answers run to 9,000 characters).  TRL's RewardTrainer
silently drops any pair whose chosen or rejected text is longer than ``max_length`` tokens;
:func:`truncate_pairs` instead cuts each response deliberately (its end, at a token boundary, so
that ``prompt + response + eos`` fits) and returns how many were cut, and
:func:`pluralign.lora.LoraRewardMixture` refuses any pair that still does not fit.  The labels
stay those of the full texts (a user read the whole answer).
"""
from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import torch

from . import rawdata
from .checks import TEXT_DIMENSIONS  # the dimensions with a text rule (trait)
from .preferences import PreferencePairs, label_pairs
from .reward_models import encode, reward_text
from .soups import PREFERENCES, tulu_prompt

__all__ = ["STYLE_GENERATORS", "TEXT_DIMENSIONS", "PROMPT_STYLES", "fk_grade", "n_words", "trait", "traits",
           "style_pairs", "split_by_instruction", "label", "sample_instructions", "prompt_style",
           "format_prompt", "format_prompts", "write_prompt_files", "fitting_prompts", "truncate_pairs", "too_long",
           "bpe_tokenizer",
           "pool_texts"]

STYLE_GENERATORS = ("alpaca-7b", "gpt4_1106_preview", "gpt4_0613", "gpt-3.5-turbo-1106", "claude-2.1",
                    "Mixtral-8x7B-Instruct-v0.1")
PROMPT_STYLES = ("tulu", "chat")
GRADE_CAP = 20.0
WORDS_CAP = 1000


# -- traits --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1 << 16)
def fk_grade(text: str) -> float:
    """Flesch–Kincaid grade level of ``text`` (``textstat.flesch_kincaid_grade``: 0.39 words per
    sentence + 11.8 syllables per word − 15.59; syllables from the CMU dictionary, else pyphen)."""
    import textstat

    return float(textstat.flesch_kincaid_grade(text)) if text.strip() else 0.0


def n_words(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def trait(dim: str, text: str) -> float:
    """How much an annotator of dimension ``dim`` (P1A, P1B, P2A, P2B) likes ``text``, in [0, 1]."""
    if dim in ("P1A", "P1B"):
        g = min(GRADE_CAP, max(0.0, fk_grade(text))) / GRADE_CAP
        return 1.0 - g if dim == "P1A" else g
    if dim in ("P2A", "P2B"):
        ell = min(1.0, math.log1p(n_words(text)) / math.log1p(WORDS_CAP))
        return 1.0 - ell if dim == "P2A" else ell
    raise ValueError(f"dimension {dim!r} has no text rule (known: {', '.join(TEXT_DIMENSIONS)}); the P3 (tone) "
                     "dimensions need the RLPHF files or a model judge")


def traits(dims, texts) -> torch.Tensor:
    """(len(dims), len(texts)) float64 trait scores (:func:`trait`; grades are cached per text)."""
    texts = list(texts)
    return torch.tensor([[trait(d, t) for t in texts] for d in dims], dtype=torch.float64).reshape(len(dims), len(texts))


# -- pairs -----------------------------------------------------------------------------------------
def style_pairs(records, generators=STYLE_GENERATORS) -> tuple[list[dict], dict]:
    """(pairs, counts) from AlpacaEval records (:func:`pluralign.rawdata.alpaca_eval`): one pair
    ``{"idx", "instruction", "generator", "concise", "verbose"}`` per instruction and generator
    with both variants, in record then generator order.  ``counts``: ``candidates`` (records ×
    generators), ``missing_variant`` and ``identical`` (left out, counted) and ``pairs``."""
    pairs, missing, identical = [], 0, 0
    for r in records:
        for g in generators:
            c, v = r["outputs"].get(f"{g}_concise"), r["outputs"].get(f"{g}_verbose")
            if not isinstance(c, str) or not isinstance(v, str) or not c.strip() or not v.strip():
                missing += 1
                continue
            if c.strip() == v.strip():
                identical += 1
                continue
            pairs.append({"idx": int(r["idx"]), "instruction": r["instruction"].strip(), "generator": g,
                          "concise": c.strip(), "verbose": v.strip()})
    counts = {"candidates": len(records) * len(generators), "missing_variant": missing, "identical": identical,
              "pairs": len(pairs)}
    return pairs, counts


def split_by_instruction(pairs: list[dict], test_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test): an instruction's pairs fall wholly in one split; ``test_fraction`` of the
    instructions (seeded shuffle) are held out."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = sorted({p["idx"] for p in pairs})
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: max(1, round(test_fraction * len(ids)))])
    return [p for p in pairs if p["idx"] not in test_ids], [p for p in pairs if p["idx"] in test_ids]


def label(pairs: list[dict], dims, shares, n_users: int, temperature: float, seed: int, prompts=None) -> PreferencePairs:
    """Users of the groups ``dims`` (e.g. P1A majority, P1B minority) in proportions ``shares``
    label the pairs: :func:`pluralign.preferences.label_pairs` with the :func:`trait` scores of
    each group as its BT utility.  ``prompts``: the prompt text of each pair (default: the
    instruction in the Tulu template).  Every pair is kept (none is identical: :func:`style_pairs`);
    responses follow the prompt directly (no space added), as PPO scores them."""
    dims = list(dims)
    prompts = [tulu_prompt(p["instruction"]) for p in pairs] if prompts is None else list(prompts)
    a, b = [p["concise"] for p in pairs], [p["verbose"] for p in pairs]
    out = label_pairs(prompts, a, b, traits(dims, a), traits(dims, b), list(shares), n_users, temperature, seed)
    if out.n_pairs != len(pairs):
        raise RuntimeError(f"{len(pairs) - out.n_pairs} of {len(pairs)} pairs were dropped while labelling")
    # label_pairs starts responses with a space (GPT-2's prompt + response); these prompts end with a
    # new line, and PPO scores its stripped responses right after the prompt: the same text here
    strip = lambda xs: [x.strip() for x in xs]  # noqa: E731
    return PreferencePairs(out.prompt, strip(out.chosen), strip(out.rejected), out.user, out.n_users, out.group)


# -- prompts ---------------------------------------------------------------------------------------
def sample_instructions(records, n: int, seed: int = 0, max_chars: int = 0) -> list[dict]:
    """A seeded sample of ``n`` Alpaca records (all of them if ``n`` is 0 or larger), in sample
    order, as ``{"instruction", "input"}`` (what :func:`pluralign.soups.load_questions` reads).
    ``max_chars`` > 0: only records whose instruction and input together have at most that many
    characters are drawn from (the cpu smoke run's short prompts)."""
    records = [r for r in records
               if max_chars <= 0 or len(r["instruction"]) + len(r.get("input") or "") <= max_chars]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    pick = order if n <= 0 else order[:n]
    return [{"instruction": records[i]["instruction"], "input": records[i].get("input") or ""} for i in pick]


def prompt_style(profile: str) -> str:
    """How a profile's base model is prompted: Tulu's ``<|user|>`` format (paper, and the cpu
    stand-in trained on it) or the model's own chat template (small: SmolLM2-Instruct)."""
    return "chat" if profile == "small" else "tulu"


def format_prompt(q: str, style: str = "tulu", tokenizer=None, preference: str | None = None) -> str:
    """``q`` (with ``preference`` appended after a space) as a prompt.  ``tulu``: Tulu's template
    (:func:`pluralign.soups.tulu_prompt`).  ``chat``: the tokenizer's chat template, one user turn
    and the assistant's turn opened, without the template's leading BOS token — the tokenizer and
    :func:`pluralign.lm.encode_prompts` put it first, so the token ids are the template's."""
    if style == "tulu":
        return tulu_prompt(q, preference)
    if style != "chat":
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
    text = q if preference is None else f"{q} {preference}"
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return out[len(bos):] if bos and out.startswith(bos) else out


def format_prompts(questions, style: str = "tulu", tokenizer=None, preference: str | None = None) -> list[str]:
    return [format_prompt(q, style, tokenizer, preference) for q in questions]


def write_prompt_files(out_dir, root=None, n_ppo_prompts: int = 10_000, seed: int = 0, max_chars: int = 0) -> dict:
    """Write the PPO prompts (a seeded sample of Alpaca, JSON list of ``{instruction, input}``; see
    :func:`sample_instructions` for ``max_chars``) and the 50 Koala prompts (JSON lines ``{id,
    prompt}``) under ``out_dir`` from the verified raw files in ``root``; returns
    ``{"ppo_prompts": path, "eval_prompts": path}``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ppo = out / "alpaca_prompts.json"
    ppo.write_text(json.dumps(sample_instructions(rawdata.alpaca(root), n_ppo_prompts, seed, max_chars), indent=1,
                              ensure_ascii=False) + "\n", encoding="utf-8")
    koala = out / "koala_eval_50.jsonl"
    koala.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}, ensure_ascii=False) + "\n"
                             for r in rawdata.koala(root)), encoding="utf-8")
    return {"ppo_prompts": ppo, "eval_prompts": koala}


# -- reward-model inputs -------------------------------------------------------------------------
def _length(tokenizer, prompt: str, response: str) -> int:
    return len(encode(tokenizer, [reward_text(tokenizer, prompt, response)])["input_ids"][0])


def too_long(tokenizer, pairs: PreferencePairs, max_length: int) -> int:
    """How many pairs have a chosen or rejected reward text longer than ``max_length`` tokens
    (tokenised exactly as TRL's RewardTrainer tokenises them: what it would drop)."""
    def lengths(resps):
        texts = [reward_text(tokenizer, p, r) for p, r in zip(pairs.prompt, resps)]
        return [len(x) for x in encode(tokenizer, texts)["input_ids"]] if texts else []

    return sum(max(a, b) > max_length for a, b in zip(lengths(pairs.chosen), lengths(pairs.rejected)))


def _cut(tokenizer, prompt: str, response: str, max_length: int) -> tuple[str, bool]:
    """``response`` with its end cut so that the reward text fits ``max_length`` tokens."""
    if _length(tokenizer, prompt, response) <= max_length:
        return response, False
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    keep = len(ids)
    while keep > 0:
        over = _length(tokenizer, prompt, tokenizer.decode(ids[:keep])) - max_length
        if over <= 0:
            return tokenizer.decode(ids[:keep]), True
        keep -= max(1, over)
    raise ValueError(f"the prompt alone needs more than max_length={max_length} tokens "
                     f"({_length(tokenizer, prompt, '')} with eos): raise tulu_reward.max_length; prompt "
                     f"{' '.join(prompt.split())[:60]!r}")


def fitting_prompts(pairs: list[dict], prompts: list[str], tokenizer, max_length: int,
                    min_response_tokens: int = 32) -> tuple[list[dict], list[str], int]:
    """(the pairs, their prompts, how many were left out): a pair whose prompt leaves fewer than
    ``min_response_tokens`` of the ``max_length`` reward-text tokens for its responses is left out
    *before* labelling, and counted (long AlpacaEval instructions: up to 1,900 characters)."""
    keep = [i for i, q in enumerate(prompts) if max_length - _length(tokenizer, q, "") >= min_response_tokens]
    return [pairs[i] for i in keep], [prompts[i] for i in keep], len(prompts) - len(keep)


def truncate_pairs(tokenizer, pairs: PreferencePairs, max_length: int) -> tuple[PreferencePairs, dict]:
    """(the pairs with every response cut to fit, counts): each response whose reward text
    (prompt + response + eos, tokenised as RewardTrainer does) exceeds ``max_length`` tokens loses
    its end at a token boundary until it fits; labels are unchanged.  Counts: ``pairs``,
    ``pairs_cut`` (either side), ``chosen_cut``, ``rejected_cut``.  Raises ValueError (one line)
    when a prompt alone does not fit."""
    ch, rj, n_ch, n_rj, either = [], [], 0, 0, 0
    for p, c, r in zip(pairs.prompt, pairs.chosen, pairs.rejected):
        c2, cut_c = _cut(tokenizer, p, c, max_length)
        r2, cut_r = _cut(tokenizer, p, r, max_length)
        ch.append(c2)
        rj.append(r2)
        n_ch += cut_c
        n_rj += cut_r
        either += cut_c or cut_r
    out = PreferencePairs(list(pairs.prompt), ch, rj, pairs.user.clone(), pairs.n_users, pairs.group.clone())
    left = too_long(tokenizer, out, max_length)
    if left:
        raise RuntimeError(f"{left} pairs still exceed max_length={max_length} after truncation")
    return out, {"pairs": pairs.n_pairs, "pairs_cut": either, "chosen_cut": n_ch, "rejected_cut": n_rj,
                 "max_length": max_length}


# -- the cpu profile's tokenizer -----------------------------------------------------------------
def bpe_tokenizer(texts, vocab_size: int = 4000):
    """A byte-level BPE tokenizer trained on ``texts`` (:func:`pluralign.imdb.train_bpe_tokenizer`:
    <pad> 0, <bos> 1, <eos> 2, <unk> 3, deterministic) that, like Tulu2's Llama tokenizer, puts
    <bos> first when called with its default ``add_special_tokens=True``."""
    from tokenizers import processors

    from .imdb import train_bpe_tokenizer

    tok = train_bpe_tokenizer(list(texts), vocab_size)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.bos_token_id)])])
    return tok


def pool_texts(pairs: list[dict], prompts=()) -> list[str]:
    """Every text of the pairs (instructions and both answers) plus ``prompts``: what the cpu
    profile's tokenizer and tiny base are trained on."""
    out = []
    for p in pairs:
        out += [p["instruction"], p["concise"], p["verbose"]]
    return out + list(prompts) + list(PREFERENCES.values())
