"""Sampling from causal LMs token by token with a KV cache, shared by the trainers and the KL
frontier: PPO's and Nash-MD-PG's rollouts (:func:`pluralign.ppo.sample_responses`), the frontier's
checkpoints and Nash-MD's opponent, the geometric mixture of the policy and the reference
(:func:`mixture_sample`), and :func:`pluralign.lm.sample` on CPU (the base policy's answers, the
label stage's pairs).

Why not ``model.generate``: on CPU its ``torch.multinomial`` over a 4,096-token vocabulary costs
~11 ms per token at batch 64, more than the cpu profile's model forward; the inverse-CDF draw here
costs a cumulative sum.  And ``generate`` keeps finished rows in the batch to the longest row's
end, while :func:`mixture_sample` drops them.  ``generate`` stays where its logits processors are
wanted (top-k / top-p) and off the CPU.

Shapes: B sequences, Q query positions (left-padded), T response positions (right-padded),
V vocabulary.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["mixture_logprobs", "mixture_sample", "mixture_sample_nocache", "truncate_after_eos"]


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def truncate_after_eos(response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int):
    """Response ids (B, T) → (ids with pad after the first EOS, mask (B, T) bool: tokens up to and
    including the first EOS).  Works when pad == eos."""
    is_eos = response_ids == eos_token_id
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return response_ids.masked_fill(after, pad_token_id), ~after


def mixture_logprobs(policy_logits, ref_logits, beta: float, temperature: float = 1.0) -> torch.Tensor:
    """log π'(·) = (1−β) log softmax(ℓ_θ / T) + β log softmax(ℓ_μ / T) − log Z, over the last dim.

    Temperature T divides each model's logits before mixing (equivalently the mixed logits, as
    mixing is linear).  β = 0 / β = 1 return the policy's / reference's log-probs and ignore the
    other argument (which may be None)."""
    def logp(logits):  # half-precision logits are normalised in float32
        return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)

    if beta == 0:
        return logp(policy_logits)
    if beta == 1:
        return logp(ref_logits)
    return torch.log_softmax((1 - beta) * logp(policy_logits) + beta * logp(ref_logits), dim=-1)


def _uniforms(n: int, generator, device) -> torch.Tensor:
    """n uniforms (n, 1): one per row of the whole batch at every sampling step, from ``generator``
    (on its own device) or torch's global one."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, 1, generator=generator, device=gen_device).to(device)


def _draw(logprobs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of (B, V) log-probs by inverse CDF from that row's uniform u (B, 1):
    the cached and cache-less samplers consume the generator identically (:func:`_uniforms`)."""
    cdf = torch.cumsum(logprobs.exp(), dim=-1)
    return (cdf < u * cdf[:, -1:]).sum(-1).clamp_max(logprobs.shape[-1] - 1)


def _views(policy, ref, beta: float):
    """The two "model views" (model, adapter_off) for π_θ and μ; None where β makes it unused.
    ref=None means μ is the policy's adapter-disabled self (peft only)."""
    if ref is None and not _is_peft(policy):
        raise ValueError("ref is None but the policy is not a peft PeftModel: pass the reference model")
    pi = (policy, False) if beta < 1 else None
    mu = ((policy, True) if ref is None else (ref, False)) if beta > 0 else None
    return pi, mu


def _forward(view, **inputs):
    model, adapter_off = view
    with model.disable_adapter() if adapter_off else nullcontext():
        return model(**inputs)


def _check_left_padded(query_mask):
    if not bool(query_mask[:, -1].all()):
        raise ValueError("queries must be left-padded (tokenizer.padding_side = 'left')")


def _finish(tokens: list, eos_token_id, pad_token_id, step_logprobs, return_logprobs, drawn_logprobs=None):
    response, mask = truncate_after_eos(torch.stack(tokens, 1), eos_token_id, pad_token_id)
    out = (response, mask)
    if return_logprobs:
        out += (torch.stack(step_logprobs, 1),)
    if drawn_logprobs is not None:
        out += (torch.stack(drawn_logprobs, 1).masked_fill(~mask, 0.0),)
    return out


@torch.no_grad()
def mixture_sample(policy, ref, query_ids, query_mask, beta: float, max_new_tokens: int, eos_token_id: int,
                   pad_token_id: int, temperature: float = 1.0, generator=None, return_logprobs: bool = False,
                   return_token_logprobs: bool = False, drop_finished: bool = True):
    """y' ~ π' for left-padded queries (B, Q), one KV cache per model view.

    π' is :func:`mixture_logprobs` of the policy and ref (temperature applied to each model's
    logits before mixing).  ref=None with a peft policy: μ is the adapter-disabled policy, kept in
    its own cache.  After the prompt, each model sees one new token per forward; positions count
    attended tokens only (left padding), as ``generate`` does.  Rows that have emitted EOS get
    padding from then on; sampling stops when every row has.  β ∈ {0, 1} runs one model only.

    Returns response ids (B, T) (pad after the first EOS), mask (B, T) bool (tokens up to and
    including the first EOS), with return_logprobs the mixture log-probs (B, T, V) at every step,
    and with return_token_logprobs the drawn tokens' log π'(y_t) (B, T), 0 outside the mask (at
    β = 0 these are log π_θ,T(y_t): what the KL frontier needs without a second forward).
    T ≤ max_new_tokens.

    Finished rows leave the batch (``drop_finished``, unless return_logprobs): once a row has
    emitted EOS its padding is not fed again, and the KV caches, mask and positions keep the
    unfinished rows only (``DynamicCache.batch_select_indices``).  Answers end at different
    lengths — the cpu profile's base policy answers in 16 ± 14 tokens under a 48-token cap — so a
    batch run to the longest row's end computed mostly padding (``benchmarks/bench_sampler.py``
    on the recorded base policy: 0.56× the time at β = 0, 0.67× for Nash-MD's two-model opponent,
    the same tokens).  The
    generator still gives one uniform per row of the whole batch at every step, so the draws are
    the cache-less sampler's (to float rounding: a smaller batch may round its matmuls
    differently; on 2,000 real prompts the answers and log-probs came out bit-identical).  With
    return_logprobs every row stays (the (B, T, V) log-probs are defined at every step)."""
    _check_left_padded(query_mask)
    views = _views(policy, ref, beta)
    mask = query_mask.long()
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    inputs = dict(input_ids=query_ids, attention_mask=mask, position_ids=position)
    caches = [None, None]
    B = len(query_ids)
    tokens, step_logprobs = [], []
    drawn = [] if return_token_logprobs else None
    compact = drop_finished and not return_logprobs
    alive = torch.arange(B, device=query_ids.device)  # rows (of the whole batch) still in the forward batch
    done = torch.zeros(B, dtype=torch.bool, device=query_ids.device)
    for _ in range(max_new_tokens):
        logits = [None, None]
        for i, view in enumerate(views):
            if view is not None:
                # transformers 5.x names the KV cache `cache` (past_key_values is deprecated)
                out = _forward(view, **inputs, cache=caches[i], use_cache=True, logits_to_keep=1)
                logits[i], caches[i] = out.logits[:, -1], out.cache
        logp = mixture_logprobs(logits[0], logits[1], beta, temperature)  # (rows in the batch, V)
        u = _uniforms(B, generator, logp.device)
        step = _draw(logp, u[alive])
        nxt = torch.full((B,), pad_token_id, dtype=step.dtype, device=step.device)
        nxt[alive] = torch.where(done[alive], pad_token_id, step)
        tokens.append(nxt)
        if return_logprobs:
            step_logprobs.append(logp)
        if drawn is not None:
            d = logp.new_zeros(B)
            d[alive] = logp.gather(-1, step[:, None]).squeeze(-1)
            drawn.append(d)
        done = done | (nxt == eos_token_id)
        if bool(done.all()):
            break
        keep = ~done[alive]
        if compact and not bool(keep.all()):
            rows = keep.nonzero().squeeze(1)
            for c in caches:
                if c is not None:
                    c.batch_select_indices(rows)
            alive, mask, nxt_in, pos = alive[rows], mask[rows], nxt[alive[rows]], inputs["position_ids"][rows]
        else:
            nxt_in, pos = nxt[alive], inputs["position_ids"]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
        inputs = dict(input_ids=nxt_in[:, None], attention_mask=mask, position_ids=pos[:, -1:] + 1)
    return _finish(tokens, eos_token_id, pad_token_id, step_logprobs, return_logprobs, drawn)


@torch.no_grad()
def mixture_sample_nocache(policy, ref, query_ids, query_mask, beta: float, max_new_tokens: int, eos_token_id: int,
                           pad_token_id: int, temperature: float = 1.0, generator=None, return_logprobs: bool = False):
    """:func:`mixture_sample` without a KV cache: both models re-read query + y'_<t for every new
    token (what TRL 1.13's GeometricMixtureWrapper did).  Same arguments, same random numbers,
    same outputs up to float rounding; the test oracle and the benchmark's baseline."""
    _check_left_padded(query_mask)
    views = _views(policy, ref, beta)
    ids, mask = query_ids, query_mask.long()
    tokens, step_logprobs = [], []
    done = torch.zeros(len(query_ids), dtype=torch.bool, device=query_ids.device)
    for _ in range(max_new_tokens):
        position = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = [None, None]
        for i, view in enumerate(views):
            if view is not None:
                out = _forward(view, input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False,
                               logits_to_keep=1)
                logits[i] = out.logits[:, -1]
        logp = mixture_logprobs(logits[0], logits[1], beta, temperature)
        nxt = torch.where(done, pad_token_id, _draw(logp, _uniforms(len(logp), generator, logp.device)))
        tokens.append(nxt)
        if return_logprobs:
            step_logprobs.append(logp)
        done = done | (nxt == eos_token_id)
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
    return _finish(tokens, eos_token_id, pad_token_id, step_logprobs, return_logprobs)
