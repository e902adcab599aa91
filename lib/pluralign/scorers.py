"""Trait scorers in [0, 1] behind one interface: what each user group truly cares about.

  positiveness  `cpu`: P(positive) from a TF-IDF + logistic-regression classifier trained here on
                the IMDb train labels (:func:`train_sentiment_classifier`, saved without pickle);
                `paper`: P(POSITIVE) from a sentiment classifier (lvwerra/distilbert-imdb);
                chosen in one place, :func:`positiveness_scorer` / :func:`trait_scorers`.
                VADER's compound score mapped to [0, 1] (lexicon ships in vaderSentiment) is a
                second, independent judge at evaluation.
  conciseness   1 − min(#tokens, max_tokens) / max_tokens, tokens of the policy's tokenizer

A scorer is a callable ``texts -> (B,) float tensor in [0, 1]`` with a ``name``.  The TF-IDF
classifier itself (:func:`load_scorer`) returns a float64 numpy array; :class:`TfidfPositiveness`
wraps it in the tensor interface, and :func:`make_scorer` picks it for a saved classifier folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["VaderPositiveness", "ClassifierPositiveness", "Conciseness", "make_scorer",
           "SentimentClassifierError", "SentimentClassifier", "train_sentiment_classifier",
           "save_sentiment_classifier", "load_scorer", "is_saved_classifier", "TfidfPositiveness",
           "positiveness_scorer", "trait_scorers", "classifier_accuracy"]


class VaderPositiveness:
    name = "positiveness"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([(self._vader.polarity_scores(t)["compound"] + 1) / 2 for t in texts])


class ClassifierPositiveness:
    """P(positive label) from a sequence classifier given by local path or hub id."""

    name = "positiveness"

    def __init__(self, name_or_path: str, positive_label: str = "POSITIVE", batch_size: int = 64, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .lm import check_source

        check_source(name_or_path, "sentiment classifier")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path).eval()
        labels = {v.upper(): int(k) for k, v in self.model.config.id2label.items()}
        if positive_label.upper() not in labels:
            raise ValueError(f"classifier {name_or_path!r} has no label {positive_label!r} (labels: {sorted(labels)})")
        self.index, self.batch_size, self.max_length = labels[positive_label.upper()], batch_size, max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            out.append(torch.softmax(self.model(**enc).logits.float(), -1)[:, self.index])
        return torch.cat(out) if out else torch.zeros(0)


class Conciseness:
    name = "conciseness"

    def __init__(self, tokenizer, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, texts: list[str]) -> torch.Tensor:
        n = torch.tensor([len(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]], dtype=torch.float32)
        return 1 - n.clamp(max=self.max_tokens) / self.max_tokens


def make_scorer(kind: str, tokenizer=None, max_tokens: int = 32, classifier: str | None = None):
    """``positiveness`` (VADER, or a classifier when ``classifier`` is given: a folder written by
    :func:`save_sentiment_classifier`, else a transformers sequence classifier by path or hub id)
    or ``conciseness``."""
    if kind == "positiveness":
        if not classifier:
            return VaderPositiveness()
        return TfidfPositiveness(classifier) if is_saved_classifier(classifier) else ClassifierPositiveness(classifier)
    if kind == "conciseness":
        return Conciseness(tokenizer, max_tokens)
    raise ValueError(f"unknown scorer {kind!r} (known: positiveness, conciseness)")


def positiveness_scorer(profile: str, classifier, sentiment_model: str):
    """The GPT-2 experiment's positiveness, the one place it is chosen: ``cpu`` — the TF-IDF
    classifier folder ``classifier`` that the corpus stage trained on the IMDb train labels
    (:class:`TfidfPositiveness`); ``paper`` — the sequence classifier ``sentiment_model`` (hub id or
    path, e.g. ``lvwerra/distilbert-imdb``; :class:`ClassifierPositiveness`)."""
    if profile == "cpu":
        return TfidfPositiveness(classifier)
    if profile == "paper":
        return ClassifierPositiveness(sentiment_model)
    raise ValueError(f"unknown profile {profile!r} (known: cpu, paper)")


def trait_scorers(profile: str, tokenizer, max_tokens: int, classifier, sentiment_model: str,
                  vader: bool = False) -> dict:
    """What the GPT-2 users truly care about, by name: ``positiveness`` (the majority's trait,
    :func:`positiveness_scorer`) and ``conciseness`` (the minority's, tokens of ``tokenizer`` up to
    ``max_tokens``); with ``vader=True`` also ``vader``, VADER's positiveness — a second judge that
    no reward model or user was built from, so that a policy which games the classifier's n-grams
    ("great great great") shows up as the two positiveness judges disagreeing."""
    out = {"positiveness": positiveness_scorer(profile, classifier, sentiment_model),
           "conciseness": Conciseness(tokenizer, max_tokens)}
    if vader:
        out["vader"] = VaderPositiveness()
    return out


def classifier_accuracy(scorer, texts: Sequence[str], labels, cuts: Sequence[int | None] = (None,)) -> dict:
    """Accuracy (P(positive) > 0.5 against 0/1 ``labels``) of a positiveness scorer on ``texts``,
    whole (cut ``None``, key ``"full"``) and cut to their first n words (key ``n``).  ``scorer``
    maps a list of texts to an array or tensor of P(positive)."""
    y = np.asarray(labels).astype(bool)
    out = {}
    for n in cuts:
        shown = list(texts) if n is None else [" ".join(t.split()[:n]) for t in texts]
        p = scorer(shown)
        p = p.numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        out["full" if n is None else int(n)] = float(((p > 0.5) == y).mean())
    return out



# --- TF-IDF + logistic-regression positiveness, trained on IMDb labels, stored without pickle -----
#
# Why not joblib / pickle: unpickling runs whatever code the file names (``__reduce__``), so a
# pipeline output that anyone can swap (a DVC cache, a shared remote, a downloaded folder) would be
# an arbitrary-code-execution hole the moment a notebook loads it; pickles also break across
# scikit-learn versions.  The fitted model is just data — the term list, the idf vector, the
# coefficients and the intercept — so it is written as JSON + a numpy ``.npz`` (read with
# ``allow_pickle=False``) and the scikit-learn objects are rebuilt from it on load.  A JSON manifest
# holds the settings and every file's sha256, so a truncated or altered folder fails with one line.

CLASSIFIER_FORMAT = "pluralign.tfidf-logreg.v1"
CLASSIFIER_META = "sentiment_classifier.json"  # format, settings, sizes, sha256 of the two files below
CLASSIFIER_VOCAB = "vocabulary.json"           # JSON list of terms, column order
CLASSIFIER_WEIGHTS = "weights.npz"             # idf (n,), coef (n,), intercept (1,), float64


class SentimentClassifierError(ValueError):
    """A saved sentiment classifier folder is missing, incomplete, altered or malformed.  The message
    is one line: ``sentiment classifier <path>: <problem>``."""

    def __init__(self, path, problem: str):
        super().__init__(" ".join(f"sentiment classifier {path}: {problem}".split()))


def _vectorizer(settings: dict, vocabulary=None):
    """The one place the TF-IDF vectorizer is configured, for training and for loading alike."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=tuple(settings["ngram_range"]), min_df=settings["min_df"],
                           sublinear_tf=settings["sublinear_tf"], lowercase=True, vocabulary=vocabulary,
                           dtype=np.float64)


@dataclass
class SentimentClassifier:
    """TF-IDF features + binary logistic regression; calling it on texts gives P(positive).

    ``vectorizer``: a fitted ``TfidfVectorizer``; ``model``: a fitted ``LogisticRegression`` with
    classes (0, 1); ``settings``: what it was trained with (see :func:`train_sentiment_classifier`).
    Empty or unseen-vocabulary texts get the intercept's probability."""

    vectorizer: object
    model: object
    settings: dict = field(default_factory=dict)
    name = "positiveness"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_proba(texts)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(B,) float64 array of P(positive)."""
        if isinstance(texts, str):
            raise TypeError("expected a list of texts, got one str")
        texts = list(texts)
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(self.vectorizer.transform(texts))[:, 1]

    @property
    def n_features(self) -> int:
        return len(self.vectorizer.vocabulary_)


def _prefixes(texts: Sequence[str], labels: np.ndarray, words: tuple[int, int], rng: np.random.Generator):
    """One random head of every text: its first k words, k uniform in [words[0], words[1]]."""
    ks = rng.integers(words[0], words[1] + 1, size=len(texts))
    return [" ".join(t.split()[:k]) for t, k in zip(texts, ks)], labels.copy()


def train_sentiment_classifier(texts: Sequence[str], labels: Sequence[int], seed: int, *,
                               ngram_range: tuple[int, int] = (1, 2), min_df: int = 5, C: float = 4.0,
                               sublinear_tf: bool = True, prefix_words: tuple[int, int] | None = (5, 60),
                               max_iter: int = 1000) -> SentimentClassifier:
    """Fit TF-IDF (word n-grams, sublinear tf, l2-normalised) + logistic regression (lbfgs, L2,
    inverse strength ``C``) on ``texts`` with ``labels`` 1 = positive, 0 = negative.

    ``prefix_words=(lo, hi)``: also train on one random head of every text (its first k words,
    k uniform in [lo, hi], same label, seeded by ``seed``), so that short texts — the policy's
    48-token continuations — are in-distribution; ``None`` trains on the texts alone.

    Defaults chosen on a 5,000-review held-out split of the IMDb train reviews (never the test
    split), fitting on the other 20,000, comparing 1/1–2/1–3-grams, min_df 2/3/5, C 1–16 and
    heads of 5–60, 2–40, 10–40, 5–100 words (one or two per review): the 1–2-gram, min_df 5, C 4
    model with one 5–60-word head per review was within noise of the best on full reviews
    (0.905) and on reviews cut to 30 words (0.773, vs 0.756 without heads), with 3× fewer
    features than min_df 2.  That split shares movies between its halves (IMDb train has up to
    30 reviews per movie; the test split has other movies), so it flatters both numbers; on the
    test split the heads trade full-review accuracy for short-text accuracy (0.899 vs 0.908 full,
    0.751 vs 0.742 on 30-word cuts, 25k train reviews) and move P(positive | empty text) from
    0.61 to 0.48.  Short texts are what this scorer judges (policy continuations), so heads are
    the default.  Fit: ~20 s on the 25k train reviews (one core), 176k features.
    """
    from sklearn.linear_model import LogisticRegression

    texts = list(texts)
    y = np.asarray(labels)
    if len(texts) != len(y):
        raise ValueError(f"{len(texts)} texts but {len(y)} labels")
    if not set(np.unique(y).tolist()) == {0, 1}:
        raise ValueError(f"labels must be 0/1 with both present, got values {sorted(set(np.unique(y).tolist()))}")
    if prefix_words is not None and not 1 <= prefix_words[0] <= prefix_words[1]:
        raise ValueError(f"prefix_words must be (lo, hi) with 1 <= lo <= hi, got {prefix_words}")
    y = y.astype(np.int64)
    settings = {"ngram_range": [int(ngram_range[0]), int(ngram_range[1])], "min_df": int(min_df), "C": float(C),
                "sublinear_tf": bool(sublinear_tf), "prefix_words": None if prefix_words is None else list(prefix_words),
                "max_iter": int(max_iter), "seed": int(seed), "n_texts": len(texts)}
    train_x, train_y = texts, y
    if prefix_words is not None:
        heads, head_y = _prefixes(texts, y, prefix_words, np.random.default_rng(seed))
        train_x, train_y = texts + heads, np.concatenate([y, head_y])
    vec = _vectorizer(settings)
    X = vec.fit_transform(train_x)
    model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(X, train_y)
    return SentimentClassifier(vec, model, settings)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_sentiment_classifier(clf: SentimentClassifier, path: str | os.PathLike) -> Path:
    """Write ``clf`` to the folder ``path`` (created if needed) as three files, none a pickle:
    ``vocabulary.json`` (the terms in column order), ``weights.npz`` (idf, coef, intercept as
    float64) and ``sentiment_classifier.json`` (format, settings, sizes and both files' sha256).
    The output is a deterministic function of the model (no timestamps).  Returns the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SentimentClassifierError(path, "exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    vocab = clf.vectorizer.vocabulary_
    terms = [None] * len(vocab)
    for term, i in vocab.items():
        terms[i] = term
    coef = np.asarray(clf.model.coef_, dtype=np.float64)
    if coef.shape != (1, len(terms)) or list(clf.model.classes_) != [0, 1]:
        raise ValueError(f"expected a binary (0, 1) model over {len(terms)} features, got coef {coef.shape}, "
                         f"classes {list(clf.model.classes_)}")
    (path / CLASSIFIER_VOCAB).write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
    with open(path / CLASSIFIER_WEIGHTS, "wb") as f:  # np.savez on a path would add ".npz" itself
        np.savez(f, idf=np.asarray(clf.vectorizer.idf_, dtype=np.float64), coef=coef[0],
                 intercept=np.asarray(clf.model.intercept_, dtype=np.float64))
    meta = {"format": CLASSIFIER_FORMAT, "classes": ["negative", "positive"], "n_features": len(terms),
            "settings": clf.settings,
            "files": {name: _sha256(path / name) for name in (CLASSIFIER_VOCAB, CLASSIFIER_WEIGHTS)}}
    (path / CLASSIFIER_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def is_saved_classifier(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_sentiment_classifier` (has its manifest)."""
    return (Path(path) / CLASSIFIER_META).is_file()


def load_scorer(path: str | os.PathLike) -> SentimentClassifier:
    """Load a folder written by :func:`save_sentiment_classifier`; the result maps a list of texts
    to a numpy array of P(positive), identical to the saved model's.

    No pickle is read: JSON for terms and settings, ``np.load(allow_pickle=False)`` for the
    arrays, and the scikit-learn objects are rebuilt from them.  Raises
    :class:`SentimentClassifierError` (one line naming the folder) when the folder or a file is
    missing, a checksum differs, or the contents are malformed."""
    from sklearn.linear_model import LogisticRegression

    path = Path(path)
    if not path.exists():
        raise SentimentClassifierError(path, "missing (no such folder)")
    if not path.is_dir():
        raise SentimentClassifierError(path, "not a folder")
    meta_path = path / CLASSIFIER_META
    if not meta_path.is_file():
        raise SentimentClassifierError(path, f"no {CLASSIFIER_META} (not a folder written by save_sentiment_classifier)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SentimentClassifierError(path, f"{CLASSIFIER_META} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != CLASSIFIER_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise SentimentClassifierError(path, f"{CLASSIFIER_META}: format {got!r}, expected {CLASSIFIER_FORMAT!r}")
    try:
        files, settings, n = meta["files"], meta["settings"], int(meta["n_features"])
        _ = (settings["ngram_range"], settings["min_df"], settings["sublinear_tf"], settings["C"])
    except (KeyError, TypeError, ValueError) as e:
        raise SentimentClassifierError(path, f"{CLASSIFIER_META} lacks or mangles a field ({type(e).__name__}: {e})") from None
    for name in (CLASSIFIER_VOCAB, CLASSIFIER_WEIGHTS):
        f = path / name
        if not f.is_file():
            raise SentimentClassifierError(path, f"{name} is missing")
        if _sha256(f) != files.get(name):
            raise SentimentClassifierError(path, f"{name} does not match the sha256 in {CLASSIFIER_META} "
                                           f"({f.stat().st_size:,} bytes): the file was altered or truncated")
    try:
        terms = json.loads((path / CLASSIFIER_VOCAB).read_text(encoding="utf-8"))
        with np.load(path / CLASSIFIER_WEIGHTS, allow_pickle=False) as z:
            idf, coef, intercept = (np.array(z[k], dtype=np.float64) for k in ("idf", "coef", "intercept"))
    except Exception as e:  # noqa: BLE001 - any decoding failure is one line naming the folder
        raise SentimentClassifierError(path, f"unreadable contents ({type(e).__name__}: {e})") from None
    if not (isinstance(terms, list) and all(isinstance(t, str) for t in terms) and len(terms) == n):
        raise SentimentClassifierError(path, f"{CLASSIFIER_VOCAB} must be a list of {n:,} strings")
    if idf.shape != (n,) or coef.shape != (n,) or intercept.shape != (1,):
        raise SentimentClassifierError(path, f"weights have shapes idf {idf.shape}, coef {coef.shape}, "
                                       f"intercept {intercept.shape}; expected ({n},), ({n},), (1,)")
    if not (np.isfinite(idf).all() and np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise SentimentClassifierError(path, "weights contain non-finite values")
    try:
        vec = _vectorizer(settings, vocabulary=terms)
        vec.idf_ = idf
        model = LogisticRegression(C=float(settings["C"]))
        model.classes_ = np.array([0, 1])
        model.coef_, model.intercept_, model.n_features_in_ = coef[None, :], intercept, n
    except (ValueError, TypeError) as e:
        raise SentimentClassifierError(path, f"cannot rebuild the model ({type(e).__name__}: {e})") from None
    return SentimentClassifier(vec, model, settings)


class TfidfPositiveness:
    """A saved TF-IDF sentiment classifier in the scorer interface: ``texts -> (B,) float32 tensor``."""

    name = "positiveness"

    def __init__(self, path: str | os.PathLike):
        self.classifier = load_scorer(path)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.classifier(texts)).float()
