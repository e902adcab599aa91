"""Real IMDb text for the GPT-2 experiment: the reviews, prompts cut from them, the passages the
base policy is pretrained on, and a byte-level BPE tokenizer trained on them.

The `cpu` profile's reviews come from :func:`pluralign.rawdata.imdb` (the verified copy in
``data/raw/``, ``<br />`` already stripped); the `paper` profile's from a hub id or local dataset
(:func:`load_text_dataset`).  :func:`load_reviews` gives either as ``{"text", "label"}`` records.
Nothing here reads ``params.yaml``; callers pass locations and settings.

- :func:`make_prompts` — the public re-implementation's prompt rule (marcellobullo/sharedrep-rlhf,
  ``src/helper/imdb_utils.py``: ``pre_processing_imdb`` / ``sample_fragment``), see its docstring.
- :func:`split_reviews` — a seeded pretraining pool / held-out slice of the train split.
- :func:`passages` — reviews cut into runs of 1–N whole sentences: the base policy's pretraining
  documents, each ending with ``<eos>`` (see its docstring for why).
- :func:`train_bpe_tokenizer` — GPT-2-style byte-level BPE (``tokenizers``) wrapped as a
  ``transformers.PreTrainedTokenizerFast`` with the same special tokens, ids and padding side as
  :func:`pluralign.lm.build_word_tokenizer`, so either tokenizer drops into the rest of the code.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

__all__ = ["make_prompts", "train_bpe_tokenizer", "load_reviews", "load_text_dataset", "one_line", "split_reviews",
           "sentences", "passages", "first_words"]

_WORD = re.compile(r"\S+")
# what str.splitlines() breaks at besides \n and \r: 330 train and 226 test reviews hold U+0085
# (a cp1252 ellipsis read as Latin-1), which would split a review across lines of a text file
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")
# a sentence ends at . ! or ? (runs of them, e.g. "..." or "?!"), optionally followed by closing
# quotes or brackets, where whitespace follows
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")


def one_line(text: str) -> str:
    """``text`` with every character that ``str.splitlines`` breaks at replaced by one space, so one
    review is one line of a text file (``report.write_text_lines`` / ``read_text().splitlines()``)."""
    return _LINE_BREAKS.sub(" ", text)


def load_text_dataset(name_or_path: str, split: str = "train"):
    """A text dataset by hub id (``stanfordnlp/imdb``, paper profile) or local path: a folder
    written by ``Dataset.save_to_disk`` or a data file (csv / json / parquet) with a ``text``
    column.  Returns a ``datasets.Dataset``."""
    from pathlib import Path

    import datasets

    p = Path(name_or_path)
    if p.exists():
        if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(p))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        elif p.is_file():
            kind = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}.get(p.suffix.lstrip("."))
            if kind is None:
                raise ValueError(f"text dataset file {name_or_path!r} must be .csv, .json, .jsonl or .parquet")
            ds = datasets.load_dataset(kind, data_files=str(p), split="train")
        else:
            ds = datasets.load_dataset(str(p), split=split)
    elif p.is_absolute() or name_or_path.startswith("."):
        raise FileNotFoundError(f"text dataset path {name_or_path!r} does not exist")
    else:
        ds = datasets.load_dataset(name_or_path, split=split)
    if "text" not in ds.column_names:
        raise ValueError(f"text dataset {name_or_path!r} has no 'text' column (has {ds.column_names})")
    return ds


def load_reviews(split: str, root=None, dataset: str | None = None) -> list[dict]:
    """IMDb reviews of ``split`` ("train" / "test") as ``[{"text": str, "label": int}]`` (label 1 =
    positive), texts on one line (:func:`one_line`) with ``<br />`` runs replaced by a space.

    ``dataset=None`` (the `cpu` profile): the verified copy in ``root`` (``data/raw``) through
    :func:`pluralign.rawdata.imdb`, which names a missing or altered file in one line.  Otherwise a
    hub id or local path (the `paper` profile, e.g. ``stanfordnlp/imdb``) read with
    :func:`load_text_dataset`; it must have ``text`` and ``label`` columns."""
    from .rawdata import clean_review, imdb

    if dataset is None:
        return [{"text": one_line(r["text"]), "label": int(r["label"])} for r in imdb(split, root=root)]
    ds = load_text_dataset(dataset, split)
    if "label" not in ds.column_names:
        raise ValueError(f"text dataset {dataset!r} has no 'label' column (has {ds.column_names})")
    return [{"text": one_line(clean_review(t)), "label": int(y)} for t, y in zip(ds["text"], ds["label"])]


def split_reviews(records: Sequence, n_pool: int, n_held_out: int, seed: int) -> tuple[list, list]:
    """A seeded random (pool, held-out) split of ``records`` (the IMDb files are sorted by label):
    ``n_pool`` and ``n_held_out`` distinct records; the held-out ones are drawn first, so they do not
    change when ``n_pool`` does.  Deterministic for a seed."""
    if n_pool < 1 or n_held_out < 1:
        raise ValueError(f"need n_pool >= 1 and n_held_out >= 1, got {n_pool}, {n_held_out}")
    if n_pool + n_held_out > len(records):
        raise ValueError(f"{n_pool} + {n_held_out} reviews requested, only {len(records)} available")
    order = np.random.default_rng(seed).permutation(len(records))
    held = [records[int(i)] for i in order[:n_held_out]]
    pool = [records[int(i)] for i in order[n_held_out:n_held_out + n_pool]]
    return pool, held


def sentences(text: str) -> list[str]:
    """``text`` split after every ``.``, ``!`` or ``?`` run (with closing quotes or brackets) that
    whitespace follows; pieces stripped, empty ones dropped.  A plain rule ("Mr. Smith" splits),
    enough to cut reviews at sentence ends."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    return out + [tail] if tail else out


def passages(texts: Sequence[str], max_sentences: int, seed: int) -> list[str]:
    """Every text cut into consecutive runs of k whole sentences, k drawn uniformly from
    {1, …, ``max_sentences``} for each run (the last run of a text takes what is left);
    ``max_sentences=0`` keeps each text whole.  Deterministic for a seed.

    Why: the base policy is pretrained on ``<bos> passage <eos>`` (:func:`pluralign.lm.pack_texts`).
    On whole reviews (median 173 words, ~230 tokens) the model almost never ends a response
    within a few dozen tokens — a prototype found 93% of its 48-token samples at the cap — so
    length would be the cut-off, not something the policy chooses, and the minority (who wants
    concise text) would have nothing to judge.  On passages of a few sentences the model learns
    to end a response after one or a few sentences, and response length varies by itself."""
    if max_sentences < 0:
        raise ValueError(f"max_sentences must be >= 0, got {max_sentences}")
    if max_sentences == 0:
        return list(texts)
    rng = np.random.default_rng(seed)
    out = []
    for t in texts:
        sents = sentences(t)
        i = 0
        while i < len(sents):
            k = int(rng.integers(1, max_sentences + 1))
            out.append(" ".join(sents[i:i + k]))
            i += k
    return out


def first_words(texts: Sequence[str], n_words: int) -> list[str]:
    """Each text cut to its first ``n_words`` whitespace-separated words (joined by single spaces)."""
    return [" ".join(t.split()[:n_words]) for t in texts]


def _cut_words(text: str, k: int) -> str:
    """``text`` up to the end of its k-th whitespace-separated word (original spacing kept)."""
    ends = [m.end() for m in _WORD.finditer(text)]
    if not ends:
        return ""
    k = max(1, min(k, len(ends) - 1)) if len(ends) > 1 else 1
    return text[: ends[k - 1]]


def _cut_tokens(text: str, k: int, tokenizer) -> str:
    """The re-implementation's ``sample_fragment``: the first k tokens, extended forward while the
    next token belongs to the same word (``word_ids``), then cut from the original text."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    word_ids, offsets = enc.word_ids(), enc["offset_mapping"]
    if not word_ids:
        return ""
    if k >= len(word_ids):  # as the re-implementation: never the whole review
        k = max(1, len(word_ids) - 1)
    end = k - 1
    while end + 1 < len(word_ids) and word_ids[end] is not None and word_ids[end] == word_ids[end + 1]:
        end += 1
    return text[: offsets[end][1]].rstrip()


def make_prompts(texts: Sequence[str], n: int | None, seed: int, min_chars: int = 200, min_tokens: int = 2,
                 max_tokens: int = 8, *, tokenizer=None, return_indices: bool = False):
    """Prompts for the GPT-2 experiment: heads of real reviews, cut at a word boundary.

    The rule, as the public re-implementation (marcellobullo/sharedrep-rlhf, ``src/imdb``,
    ``pre_processing_imdb`` + ``sample_fragment``) applies it to IMDb train reviews:

    1. keep only reviews with **more than** ``min_chars`` characters (``len(text) > 200``; here
       measured after ``<br />`` stripping, the re-implementation measures the raw text);
    2. for each review draw k uniformly from {``min_tokens``, …, ``max_tokens``} (both ends
       included; the re-implementation's ``LengthSampler(2, 8)``);
    3. take the first k tokens and, if the k-th token is part of a longer word, extend to the end
       of that word — the prompt never ends inside a word; if k is not smaller than the review's
       number of tokens it becomes that number − 1 (unreachable for > 200-character reviews).

    Tokens: with ``tokenizer=None`` (default) a token is a whitespace-separated word, so the
    prompt is exactly the first k words (2–8 words), ending at a word boundary by construction.
    With a fast ``tokenizer`` (e.g. GPT-2's, as in the paper profile, or
    :func:`train_bpe_tokenizer`'s) the unit is that tokenizer's token and "word" is its
    pre-tokenizer's word (``word_ids``; for byte-level BPE the GPT-2 regex pieces, so a prompt may
    stop before punctuation), which is the re-implementation's exact rule.  Either way the prompt
    is a prefix of the review cut from the original string (the re-implementation decodes the
    tokens instead, which is the same text for byte-level BPE apart from
    ``clean_up_tokenization_spaces``), with trailing whitespace removed.

    Sampling: reviews are visited in a seeded random order (the IMDb files are sorted by label)
    and the first ``n`` eligible ones give the prompts (``n=None``: all of them).  Lengths are
    drawn per position in that order, so the prompts for a smaller ``n`` are a prefix of those for
    a larger one with the same seed.  Deterministic for a seed (``numpy.random.default_rng``).

    Returns the prompts (``list[str]``); with ``return_indices=True`` also the index into ``texts``
    of the review each prompt came from: ``(prompts, indices)``.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}")
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    eligible = np.array([i for i, t in enumerate(texts) if len(t) > min_chars], dtype=np.int64)
    if n is None:
        n = len(eligible)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > len(eligible):
        raise ValueError(f"only {len(eligible)} of {len(texts)} reviews are longer than {min_chars} characters, "
                         f"{n} prompts requested")
    rng = np.random.default_rng(seed)
    order = eligible[rng.permutation(len(eligible))]
    lengths = rng.integers(min_tokens, max_tokens + 1, size=len(eligible))
    indices = [int(i) for i in order[:n]]
    prompts = [_cut_words(texts[i], int(k)) if tokenizer is None else _cut_tokens(texts[i], int(k), tokenizer)
               for i, k in zip(indices, lengths[:n])]
    return (prompts, indices) if return_indices else prompts


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 2,
                        model_max_length: int | None = None):
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts`` with the ``tokenizers`` library.

    - Model: BPE over bytes (``pre_tokenizers.ByteLevel``, GPT-2's regex split, no prefix space;
      the 256 byte symbols are always in the vocabulary, so no text is ever unknown), byte-level
      decoder, so ``decode(encode(text)) == text`` for any string.
    - Special tokens as :func:`pluralign.lm.build_word_tokenizer`: ``<pad>`` = 0, ``<bos>`` = 1,
      ``<eos>`` = 2, ``<unk>`` = 3 (``lm.SPECIAL_TOKENS``), pad ≠ eos, left padding; none is added
      by ``tokenizer(text)`` (callers add ``<bos>``/``<eos>`` as ``lm.pack_texts`` and
      ``lm.encode_prompts`` do).  Special tokens written in a text are recognised as such.
    - ``vocab_size`` counts everything (4 special + 256 bytes + merges); ``min_frequency``: a pair
      must occur this often to be merged.  ``model_max_length`` (optional) is stored in the config.
    - Deterministic: the same texts (same order) and parameters give the same vocabulary and
      merges, also across processes.

    Returns a ``transformers.PreTrainedTokenizerFast``; save it with ``save_pretrained`` and load it
    with ``AutoTokenizer.from_pretrained`` or :func:`pluralign.lm.load_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .lm import SPECIAL_TOKENS

    specials = list(SPECIAL_TOKENS.values())  # pad, bos, eos, unk -> ids 0, 1, 2, 3
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
        raise ValueError(f"vocab_size must be >= {len(specials) + len(alphabet)} "
                         f"({len(specials)} special tokens + {len(alphabet)} bytes), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    core = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left", **SPECIAL_TOKENS, **kwargs)
    for name, token in SPECIAL_TOKENS.items():
        assert tok.convert_tokens_to_ids(token) == specials.index(token), name
    return tok
