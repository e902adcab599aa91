"""The KL frontier: what a policy gains (win rate against the base policy) for how far it moved
(KL(π ‖ base)), measured at checkpoints along training on held-out prompts.

Every method-vs-method claim in the compendium is made at matched KL: two methods are compared
where both have moved equally far from the base policy (:func:`pluralign.intervals.at_kl`
interpolates each run's per-prompt wins between the checkpoints that bracket a KL value).

KL estimate.  For a prompt x and one response y ~ π_T(·|x) sampled at temperature T,

    k(x, y) = Σ_t log π_T(y_t | x, y_<t) − log μ_T(y_t | x, y_<t)

(both models' logits divided by T, EOS included, padding excluded) is an unbiased one-sample
estimate of KL(π_T(·|x) ‖ μ_T(·|x)) — the quantity PPO's penalty and Nash-MD's τ regularise —
and its mean over prompts estimates E_x KL.  ``tests/test_frontier.py`` checks it against the
exact KL of a tiny model, computed by enumerating every response.
"""
from __future__ import annotations

import pandas as pd
import torch

from . import lm
from .ppo import response_logprobs_and_values, sample_responses

__all__ = ["sample_with_kl", "sequence_logprob", "response_logprob", "Checkpoints"]


@torch.no_grad()
def sequence_logprob(model, ids: torch.Tensor, attention_mask: torch.Tensor, n_query: int, response_mask,
                     temperature: float) -> torch.Tensor:
    """Σ_t log π_T(y_t) over the response tokens of left-padded query + response ids (B, Q+T): (B,)."""
    lp, _, _ = response_logprobs_and_values(model, None, ids, attention_mask, n_query, temperature, entropy=False)
    return (lp * response_mask.to(lp.dtype)).sum(1)


@torch.no_grad()
def response_logprob(model, query_ids: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
                     response_mask: torch.Tensor, temperature: float, chunk: int = 64) -> torch.Tensor:
    """Σ_t log π_T(y_t) per row for left-padded queries (B, Q) and right-padded responses (B, T): (B,).

    The same sum as :func:`sequence_logprob` over the concatenation, computed on chunks of ``chunk``
    rows of similar answer length, each cut to its own longest answer and query.  A sampled batch
    is padded to its longest answer — at a checkpoint, 256 answers of 2–16 tokens on average padded
    to one that ran to the 48-token cap — so one forward over the whole batch computed mostly
    padding.  The cut columns are right padding (which no earlier position attends to) and leading
    columns of padding only (positions count attended tokens), so the result is the same function
    of the tokens; float rounding can differ in the last bits, as any change of batch shape does."""
    n = response_mask.sum(1)
    out = torch.zeros(len(n), dtype=torch.float32)
    order = torch.argsort(n, stable=True)
    for c in range(0, len(order), chunk):
        rows = order[c:c + chunk]
        T = int(n[rows].max())
        if T == 0:
            continue
        qm = query_mask[rows]
        q0 = int(qm.any(0).nonzero()[0])  # the first column any of these rows attends to
        q, qm = query_ids[rows, q0:], qm[:, q0:]
        r, rm = response[rows, :T], response_mask[rows, :T]
        lp = sequence_logprob(model, torch.cat([q, r], 1), torch.cat([qm.long(), rm.long()], 1), q.shape[1], rm, temperature)
        out[rows] = lp.float()
    return out


@torch.no_grad()
def sample_with_kl(model, ref_model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
                   top_p: float = 1.0, batch_size: int = 256, seed: int = 0):
    """One response per prompt, drawn as the trainers draw their rollouts
    (:func:`pluralign.ppo.sample_responses`, seeded by ``seed``), plus each response's KL estimate
    k(x, y) against ``ref_model`` (module docstring); log π_T(y) is the sampler's own (KV-cached)
    where it has it, a forward pass where ``generate`` sampled.  Returns (texts, kl (N,) float64); texts are
    decoded without special tokens and stripped, as :func:`pluralign.lm.sample` returns them."""
    torch.manual_seed(seed)
    model.eval()
    ref_model.eval()
    kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p, max_new_tokens=max_new_tokens,
              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts, kls = [], []
    for i in range(0, len(prompts), batch_size):
        ids, mask = lm.encode_prompts(tokenizer, prompts[i:i + batch_size])
        response, rmask, drawn = sample_responses(model, ids, mask, kw, return_token_logprobs=True)
        texts += tokenizer.batch_decode(response, skip_special_tokens=True)
        # the policy's side from the sampler's own logits (a third of the evaluation's forwards saved); the
        # reference's by a forward cut to each chunk's own answer length (response_logprob)
        own = drawn.sum(1) if drawn is not None else response_logprob(model, ids, mask, response, rmask, temperature)
        kl = own - response_logprob(ref_model, ids, mask, response, rmask, temperature)
        kls.append(kl.double())
    return [t.strip() for t in texts], (torch.cat(kls) if kls else torch.zeros(0, dtype=torch.float64))


class Checkpoints:
    """Evaluate a policy on held-out prompts at the training iterations ``at`` (and at the last
    one): pass an instance as a trainer's ``on_step(step, model)``.  The KL frontier wants its
    early points dense (PPO moves most in its first iterations), hence a list, not a period.

    Each evaluation samples one response per prompt (seed ``seed``, the same for every
    checkpoint and every policy, as the final evaluation does) and records its text and KL
    against ``ref_model``.  :meth:`frame` returns one row per (checkpoint, prompt): step, prompt
    (its index), response, kl, plus the tags given."""

    def __init__(self, ref_model, tokenizer, prompts: list[str], at: list[int], last: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0):
        bad = [s for s in at if not (isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= last)]
        if bad:
            raise ValueError(f"checkpoint steps must be integers in [1, {last}] (the last iteration), got {bad[0]!r}")
        self.ref_model, self.tokenizer, self.prompts = ref_model, tokenizer, prompts
        self.at, self.last = set(at) | {last}, last
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        self.rows: list[pd.DataFrame] = []

    def __call__(self, step: int, model) -> None:
        if step not in self.at:
            return
        texts, kl = sample_with_kl(model, self.ref_model, self.tokenizer, self.prompts, **self.kw)
        self.rows.append(pd.DataFrame({"step": step, "prompt": range(len(texts)), "response": texts,
                                       "kl": kl.numpy()}))

    def frame(self, **tags) -> pd.DataFrame:
        out = pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame(
            columns=["step", "prompt", "response", "kl"])
        for k, v in tags.items():
            out.insert(0, k, v)
        return out
