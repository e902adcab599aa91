"""Preference models P(y ≻ y' | x) for Nash learning from human feedback (Munos et al., 2024).

Two kinds, behind one call interface ``pref(prompts, a, b) -> (B,) P(a ≻ b | x)``:

  PairwisePreferenceModel  reads both responses in one sequence and is not bound to a reward
                           scale: it can represent non-transitive and mixed-population
                           preferences that no single Bradley–Terry reward can (NLHF §3.2);
  BTPreference             P = σ(r(y) − r(y')) from one pooled reward model — what TRL's
                           Nash-MD trainer used in place of a preference model.

Pair text: ``prompt + response_a + eos + response_b + eos``.  The eos token is the separator
because the `cpu` profile's word-level tokenizer maps any marker word it has not seen (``A:``,
``[SEP]``) to <unk>; eos is in every tokenizer.  The classifier's logit f(x, a, b) is
antisymmetrised, P(a ≻ b | x) = σ((f(x, a, b) − f(x, b, a)) / 2), so that P(a ≻ b) + P(b ≻ a) = 1
and P(a ≻ a) = ½ hold by construction, whatever the network learned.  The pair text is tokenised
as reward texts are (:func:`pluralign.reward_models.encode`: the tokenizer's own special tokens,
<s> first for Llama, none for GPT-2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .preferences import PreferencePairs
from .reward_models import check_pad, encode, length_sorted_logits, load_reward_model, right_padded, score

__all__ = ["pair_text", "PairwisePreferenceModel", "train_pairwise", "BTPreference",
           "preference_accuracy_by_group"]


def pair_text(tokenizer, prompt: str, a: str, b: str) -> str:
    """The text the pairwise classifier reads: prompt + a + eos + b + eos."""
    return prompt + a + tokenizer.eos_token + b + tokenizer.eos_token


def _check_lengths(prompts, a, b) -> None:
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} responses a and {len(b)} responses b: lengths differ")


def _probability(d: torch.Tensor) -> torch.Tensor:
    """σ(d), written so that _probability(d) + _probability(−d) == 1 exactly in floating point:
    σ(|d|) ≥ ½ makes 1 − σ(|d|) an exact subtraction (Sterbenz)."""
    p = torch.sigmoid(d.abs())
    return torch.where(d >= 0, p, 1 - p)


class PairwisePreferenceModel:
    """P(a ≻ b | x) from a one-output sequence classifier over the pair text.

    model: any ``*ForSequenceClassification`` with ``num_labels=1`` (pooled at the last non-pad
    token, so pad must differ from eos); tokenizer: the policy's tokenizer."""

    def __init__(self, model, tokenizer):
        if model.config.num_labels != 1:
            raise ValueError(f"a pairwise preference model has one output, got num_labels={model.config.num_labels}")
        check_pad(tokenizer, "pairwise preference model")
        self.model, self.tokenizer = model, tokenizer
        self.max_length = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_base(cls, name_or_path: str, tokenizer, seed: int = 0) -> "PairwisePreferenceModel":
        """One-output classifier from ``name_or_path``: a base policy's backbone gets a new head drawn
        under ``seed``; a saved classifier keeps its trained head (``seed`` then has no effect; use
        :meth:`from_pretrained` for a saved preference model)."""
        return cls(load_reward_model(name_or_path, tokenizer, seed=seed), tokenizer)

    def f(self, texts: list[str]) -> torch.Tensor:
        """Raw classifier logit of each pair text: (B,).  Gradients flow unless disabled."""
        return self._f_ids(encode(self.tokenizer, texts)["input_ids"])

    def _f_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """f of pre-tokenised pair texts: one right-padded batch, run in length-sorted chunks
        (:func:`pluralign.reward_models.length_sorted_logits`: the same logits up to float rounding,
        without a batch's short texts padded to its longest)."""
        width = max(map(len, ids))
        if self.max_length is not None and width > self.max_length:
            raise ValueError(f"pair text of {width} tokens exceeds the model's {self.max_length} positions")
        enc = right_padded(ids, self.tokenizer.pad_token_id).to(self.model.device)
        return length_sorted_logits(self.model, enc["input_ids"], enc["attention_mask"])[:, 0].float()

    def logit(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        """Antisymmetric log-odds (f(x, a, b) − f(x, b, a)) / 2 of a ≻ b: (B,), differentiable.
        Both orders go through the network in one batch."""
        _check_lengths(prompts, a, b)
        ab = [pair_text(self.tokenizer, x, y, z) for x, y, z in zip(prompts, a, b)]
        ba = [pair_text(self.tokenizer, x, z, y) for x, y, z in zip(prompts, a, b)]
        f = self.f(ab + ba)
        return (f[: len(ab)] - f[len(ab):]) / 2

    @torch.no_grad()
    def __call__(self, prompts: list[str], a: list[str], b: list[str], batch_size: int = 256) -> torch.Tensor:
        """P(a ≻ b | x): (B,).  Every distinct pair text is scored once, the texts sorted by (token
        count, text), so that swapping a and b feeds the network the very same batches:
        P(a ≻ b) + P(b ≻ a) == 1 and P(a ≻ a) == ½ exactly (at equal ``batch_size``), not just up to
        batch-dependent rounding; and each batch holds texts of similar length (less padding)."""
        _check_lengths(prompts, a, b)
        ab = [pair_text(self.tokenizer, x, y, z) for x, y, z in zip(prompts, a, b)]
        ba = [pair_text(self.tokenizer, x, z, y) for x, y, z in zip(prompts, a, b)]
        texts = sorted(set(ab + ba))
        if not texts:
            return torch.zeros(0)
        ids = encode(self.tokenizer, texts)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), texts[i]))
        unique, ids = [texts[i] for i in order], [ids[i] for i in order]
        was_training = self.model.training
        self.model.eval()
        f = torch.cat([self._f_ids(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]).cpu()
        self.model.train(was_training)
        at = {t: i for i, t in enumerate(unique)}
        f_ab = f[[at[t] for t in ab]]
        f_ba = f[[at[t] for t in ba]]
        return _probability((f_ab - f_ba) / 2)

    def save_pretrained(self, path) -> None:
        """Classifier and tokenizer, as ``save_pretrained`` writes them."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path, tokenizer=None) -> "PairwisePreferenceModel":
        """Load what :meth:`save_pretrained` wrote (tokenizer from ``path`` unless given)."""
        from transformers import AutoModelForSequenceClassification

        from .lm import check_source, load_tokenizer

        check_source(str(path), "pairwise preference model")
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.eval(), tokenizer)


def train_pairwise(model: PairwisePreferenceModel, tokenizer, pairs: PreferencePairs, epochs: float = 1.0,
                   lr: float = 5e-4, batch_size: int = 32, seed: int = 0, progress: bool = True) -> list[float]:
    """Maximum likelihood of chosen ≻ rejected: minimise −log P(chosen ≻ rejected | x) with AdamW
    (constant ``lr``, gradients clipped at 1) over ``epochs`` passes of seeded random batches.
    The antisymmetric logit puts both orders of every pair through the network, so the fit sees
    (chosen, rejected) and (rejected, chosen) alike.  Returns the loss of every step.

    Written in plain torch on purpose: TRL's RewardTrainer scores each response on its own and
    cannot train a classifier that reads two responses in one sequence."""
    if tokenizer is not model.tokenizer and tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise ValueError("train_pairwise: tokenizer differs from the one the preference model was built with")
    _check_lengths(pairs.prompt, pairs.chosen, pairs.rejected)
    n = pairs.n_pairs
    if n == 0:
        return []
    steps = max(1, math.ceil(epochs * math.ceil(n / batch_size)))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    opt = torch.optim.AdamW(model.model.parameters(), lr=lr)
    order, losses = torch.zeros(0, dtype=torch.long), []
    model.model.train()
    for _ in tqdm(range(steps), desc="pairwise preference", disable=not progress, mininterval=5):
        if order.numel() < batch_size:  # refill with the next epoch's permutation
            order = torch.cat([order, torch.randperm(n, generator=g)])
        rows, order = order[:batch_size].tolist(), order[batch_size:]
        logit = model.logit([pairs.prompt[i] for i in rows], [pairs.chosen[i] for i in rows],
                            [pairs.rejected[i] for i in rows])
        loss = -F.logsigmoid(logit).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.model.eval()
    return losses


class BTPreference:
    """P(a ≻ b | x) = σ(r(x, a) − r(x, b)) from one (pooled) Bradley–Terry reward model."""

    def __init__(self, reward_model, tokenizer):
        self.model, self.tokenizer = reward_model, tokenizer

    def logit(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        """Reward margin r(x, a) − r(x, b): (B,)."""
        _check_lengths(prompts, a, b)
        return score(self.model, self.tokenizer, prompts, a) - score(self.model, self.tokenizer, prompts, b)

    @torch.no_grad()
    def __call__(self, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        return _probability(self.logit(prompts, a, b))


def preference_accuracy_by_group(pref, pairs: PreferencePairs) -> list[float]:
    """Held-out accuracy, P(chosen ≻ rejected) > ½, per true group of the labelling user: [G]
    (nan for a group with no pairs)."""
    g = pairs.group[pairs.user]
    present = torch.unique(g).tolist()
    if len(present) < 2:
        raise ValueError(f"per-group accuracy needs pairs from at least two groups; these hold group(s) {present} only")
    right = (pref(pairs.prompt, pairs.chosen, pairs.rejected) > 0.5).float()
    if right.numel() != g.numel():
        raise ValueError(f"{right.numel()} preferences for {g.numel()} pairs")
    return [float(right[g == k].mean()) for k in range(int(g.max()) + 1)]
