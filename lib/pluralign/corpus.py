"""A generated corpus of short, review-like English texts: a test fixture.

The pipeline runs on real IMDb reviews (:mod:`pluralign.imdb`, ``data/raw/``); this grammar is
kept because the unit tests of the reward models, pairwise models and PPO need a small fixed
vocabulary (:func:`vocabulary`, for :func:`pluralign.lm.build_word_tokenizer`) and texts whose
sentiment is known by construction.  No stage imports it.

A small probabilistic grammar writes movie reviews of 1–6 sentences.  Each review draws its
*mood* (how positive it is) independently of its *length*, so that sentiment and conciseness are
separate traits a policy can trade off — as in the MaxMin-RLHF GPT-2 experiment, where the
majority wants positive text and the minority wants short text.  Sentiment words come from the
VADER lexicon shipped with ``vaderSentiment`` (only words the lexicon scores are used, so the
VADER scorer reads what the grammar meant); negation ("was not good") and "!" emphasis are
included because VADER models them.
"""
from __future__ import annotations

import random

__all__ = ["vocabulary", "generate_reviews"]

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
