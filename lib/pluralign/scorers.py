"""Trait scorers in [0, 1] behind one interface: what each user group truly cares about.

  positiveness  `cpu`: VADER compound score mapped to [0, 1] (lexicon ships in vaderSentiment);
                `paper`: P(POSITIVE) from a sentiment classifier (lvwerra/distilbert-imdb)
  conciseness   1 − min(#tokens, max_tokens) / max_tokens, tokens of the policy's tokenizer

A scorer is a callable ``texts -> (B,) float tensor in [0, 1]`` with a ``name``.
"""
from __future__ import annotations

import torch

__all__ = ["VaderPositiveness", "ClassifierPositiveness", "Conciseness", "make_scorer"]


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
    """``positiveness`` (VADER, or a classifier when ``classifier`` is given) or ``conciseness``."""
    if kind == "positiveness":
        return ClassifierPositiveness(classifier) if classifier else VaderPositiveness()
    if kind == "conciseness":
        return Conciseness(tokenizer, max_tokens)
    raise ValueError(f"unknown scorer {kind!r} (known: positiveness, conciseness)")

