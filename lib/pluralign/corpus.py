"""A generated corpus of short, review-like English texts (the `cpu` profile's stand-in for IMDb).

A small probabilistic grammar writes movie reviews of 1–6 sentences.  Each review draws its
*mood* (how positive it is) independently of its *length*, so that sentiment and conciseness are
separate traits a policy can trade off — as in the MaxMin-RLHF GPT-2 experiment, where the
majority wants positive text and the minority wants short text.  Sentiment words come from the
VADER lexicon shipped with ``vaderSentiment`` (only words the lexicon scores are used, so the
VADER scorer reads what the grammar meant); negation ("was not good") and "!" emphasis are
included because VADER models them.  Prompts are the first 2–8 words of a review, like the
paper's IMDb prompts.
"""
from __future__ import annotations

import random

__all__ = ["vocabulary", "generate_reviews", "make_prompts", "load_text_dataset", "imdb_prompts"]

NOUNS = ["movie", "film", "story", "plot", "acting", "cast", "ending", "script", "music", "soundtrack",
         "dialogue", "director", "characters", "scenes", "lead", "villain", "camera work", "pacing", "finale"]
POSITIVE = ["good", "great", "wonderful", "excellent", "amazing", "brilliant", "beautiful", "fun", "funny",
            "lovely", "perfect", "enjoyable", "charming", "delightful", "fantastic", "superb", "hilarious",
            "clever", "awesome", "nice", "fascinating", "impressive", "entertaining", "sweet", "smart",
            "powerful", "gorgeous", "stunning", "inspiring", "warm"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "horrible", "stupid", "weak", "poor",
            "disappointing", "annoying", "painful", "ugly", "pathetic", "lame", "ridiculous", "dreadful",
            "messy", "confusing", "silly", "worthless", "miserable", "horrendous", "unpleasant"]
VERBS_POS = ["loved", "enjoyed", "liked", "adored", "admired", "appreciated"]
VERBS_NEG = ["hated", "disliked", "regret", "wasted"]
BOOSTERS = ["really", "very", "truly", "quite", "so", "extremely"]
PEOPLE = ["my friends", "my family", "my sister", "my brother", "my kids", "my parents", "a friend"]
WHEN = ["last night", "yesterday", "this weekend", "on a plane", "at home", "in the theater", "twice"]
FILLER = [
    "i watched it {when} .",
    "i saw it with {people} {when} .",
    "the story follows a family in a small town .",
    "it is about two brothers and a long trip .",
    "the {noun} lasts about two hours .",
    "it was released a few years ago .",
    "the {noun} is set in a big city .",
    "we talked about the {noun} after .",
]


def _sentiment_sentence(rng: random.Random, positive: bool) -> str:
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    opposite = rng.choice(NEGATIVE if positive else POSITIVE)
    noun = rng.choice(NOUNS)
    boost = rng.choice(BOOSTERS) + " " if rng.random() < 0.3 else ""
    bang = " !" if rng.random() < 0.25 else " ."
    form = rng.random()
    if form < 0.45:
        return f"the {noun} was {boost}{adj}{bang}"
    if form < 0.60:  # negation says the same thing through the opposite word
        return f"the {noun} was not {opposite}{bang}"
    if form < 0.80:
        verb = rng.choice(VERBS_POS if positive else VERBS_NEG)
        return f"i {verb} the {noun}{bang}"
    if form < 0.90:
        return f"what a {adj} {noun} !"
    return f"{boost}{adj} {noun} and {rng.choice(POSITIVE if positive else NEGATIVE)} {rng.choice(NOUNS)} ."


def _filler(rng: random.Random) -> str:
    return rng.choice(FILLER).format(when=rng.choice(WHEN), people=rng.choice(PEOPLE), noun=rng.choice(NOUNS))


def generate_reviews(n: int, seed: int, max_sentences: int = 6, filler_prob: float = 0.3) -> list[str]:
    """n reviews.  Per review: mood m ~ U(0, 1) (probability each sentiment sentence is positive)
    and length L ~ U{1..max_sentences}, drawn independently; each sentence is filler with
    probability ``filler_prob``, else a sentiment sentence positive with probability m."""
    if n < 1:
        raise ValueError(f"n (number of reviews) must be >= 1, got {n}")
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mood = rng.random()
        length = rng.randint(1, max_sentences)
        sents = [_filler(rng) if rng.random() < filler_prob else _sentiment_sentence(rng, rng.random() < mood)
                 for _ in range(length)]
        out.append(" ".join(sents))
    return out


def vocabulary() -> list[str]:
    """Every word the grammar can emit (sorted): the base of the word-level tokenizer."""
    words = set()
    for group in (NOUNS, POSITIVE, NEGATIVE, VERBS_POS, VERBS_NEG, BOOSTERS, PEOPLE, WHEN, FILLER):
        for item in group:
            words.update(item.replace("{when}", "").replace("{people}", "").replace("{noun}", "").split())
    words.update(["the", "was", "not", "i", "what", "a", "and", "!", "."])
    return sorted(words)


def make_prompts(reviews: list[str], n: int, seed: int, min_words: int = 2, max_words: int = 8) -> list[str]:
    """n prompts: the first k ∈ [min_words, max_words] words of distinct reviews that have more
    words than k (the paper's prompts: first 2–8 tokens of a review, cut at a word boundary)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    rng = random.Random(seed)
    order = list(range(len(reviews)))
    rng.shuffle(order)
    prompts = []
    for i in order:
        words = reviews[i].split()
        k = rng.randint(min_words, max_words)
        if len(words) > k:
            prompts.append(" ".join(words[:k]))
        if len(prompts) == n:
            return prompts
    raise ValueError(f"only {len(prompts)} reviews are long enough for {n} prompts")


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


def imdb_prompts(texts: list[str], tokenizer, n: int, seed: int, min_chars: int = 200,
                 min_tokens: int = 2, max_tokens: int = 8) -> list[str]:
    """The paper's prompts: the first k ∈ [2, 8] tokens of reviews longer than ``min_chars``
    characters, cut back to a word boundary (as the public re-implementation does)."""
    long = [t.replace("<br />", " ") for t in texts if len(t) > min_chars]
    rng = random.Random(seed)
    rng.shuffle(long)
    out = []
    for t in long:
        k = rng.randint(min_tokens, max_tokens)
        head = tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:k])
        head = head.rsplit(" ", 1)[0] if not t[len(head):len(head) + 1].isspace() and " " in head.strip() else head
        if head.strip():
            out.append(head.strip())
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} reviews longer than {min_chars} characters for {n} prompts")
