"""Nash-MD-PG for causal LMs on tiny GPT-2 / Llama models with a word-level tokenizer (no hub)."""
import copy
import math
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pluralign import lm  # noqa: E402
from pluralign.nash_md_lm import (NashMD, NashMDConfig, mixture_logprobs, mixture_sample,  # noqa: E402
                                  mixture_sample_nocache, nash_md_clipped_loss, nash_md_loss, preference_from_reward,
                                  train_nash_md)
from pluralign.ppo import response_logprobs_and_values  # noqa: E402

WORDS = [f"w{i}" for i in range(16)]
TARGET = "w5"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are fastest on one thread (and OpenMP spin-waits badly on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return lm.build_word_tokenizer(WORDS)


def tiny_gpt2(tok, seed=0, n_layer=1, n_embd=16, dtype=torch.float32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64, vocab_size=len(tok),
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg).to(dtype).eval()  # conftest makes float64 the default dtype


def tiny_llama(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, vocab_size=len(tok),
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).float().eval()


def queries(tok, n):
    """Left-padded prompts of lengths 1, 2, 3 and 4 tokens."""
    texts = ["<bos> w1 w2 w3", "<bos> w4", "<bos> w7 w8", "<bos>"]
    q = tok([texts[i % len(texts)] for i in range(n)], return_tensors="pt", padding=True, add_special_tokens=False)
    return q["input_ids"], q["attention_mask"]


def sample(fn, policy, ref, tok, q, beta, T=10, seed=0, **kw):
    return fn(policy, ref, *q, beta, T, tok.eos_token_id, tok.pad_token_id,
              generator=torch.Generator().manual_seed(seed), return_logprobs=True, **kw)


def full_logprobs(model, q, ids, temperature=1.0):
    """log softmax(logits / T) (B, T, V) at the positions that predict each response token."""
    Q = q[0].shape[1]
    x = torch.cat([q[0], ids], 1)
    am = torch.cat([q[1], torch.ones_like(ids)], 1)
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp_min(0)).logits
    return torch.log_softmax(logits[:, Q - 1:-1].float() / temperature, -1)


# 1. the cached sampler is the cache-less computation ------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_cache_matches_recompute(tok, arch, beta):
    build = tiny_gpt2 if arch == "gpt2" else tiny_llama
    policy, ref = build(tok, seed=0), build(tok, seed=1)
    q = queries(tok, 8)
    ids, mask, logp = sample(mixture_sample, policy, ref, tok, q, beta, T=10, temperature=0.8)
    ids0, mask0, logp0 = sample(mixture_sample_nocache, policy, ref, tok, q, beta, T=10, temperature=0.8)
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    torch.testing.assert_close(logp, logp0, atol=1e-5, rtol=1e-5)
    assert logp.shape == (*ids.shape, len(tok)) and ids.shape[1] <= 10
    # positions count attended tokens only: three more columns of left padding change nothing
    pad = lambda x, v: torch.cat([torch.full((x.shape[0], 3), v, dtype=x.dtype), x], 1)  # noqa: E731
    ids2, _, logp2 = sample(mixture_sample, policy, ref, tok, (pad(q[0], tok.pad_token_id), pad(q[1], 0)), beta,
                            T=10, temperature=0.8)
    assert torch.equal(ids2, ids)
    torch.testing.assert_close(logp2, logp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_finished_rows_leave_the_batch_with_the_same_draws(tok, beta):
    """Without return_logprobs the cached sampler drops finished rows from its forward batch (and
    caches); the draws stay the cache-less sampler's, row for row, and so do the drawn tokens'
    log-probs."""
    policy, ref = tiny_gpt2(tok, seed=0), tiny_gpt2(tok, seed=1)
    q = queries(tok, 24)
    kw = dict(temperature=0.8, generator=torch.Generator().manual_seed(7))
    rows = []  # the policy's forward batch at every step
    hook = policy.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    ids, mask, drawn = mixture_sample(policy, ref, *q, beta, 30, tok.eos_token_id, tok.pad_token_id,
                                      return_token_logprobs=True, **kw)
    hook.remove()
    # step t feeds the rows still unfinished after t tokens
    assert rows == [24] + [int((mask.sum(1) > t).sum()) for t in range(1, len(rows))]
    rows.clear()  # drop_finished=False: every row to the longest one's end, the same answers
    hook = policy.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    kept = mixture_sample(policy, ref, *q, beta, 30, tok.eos_token_id, tok.pad_token_id, temperature=0.8,
                          generator=torch.Generator().manual_seed(7), drop_finished=False)
    hook.remove()
    assert set(rows) == {24} and torch.equal(kept[0], ids)
    kw["generator"] = torch.Generator().manual_seed(7)
    ids0, mask0, logp0 = mixture_sample_nocache(policy, ref, *q, beta, 30, tok.eos_token_id, tok.pad_token_id,
                                                return_logprobs=True, **kw)
    lengths = mask.sum(1)
    assert int(lengths.min()) < int(lengths.max())  # rows ended apart
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    expect = logp0.gather(-1, ids0[..., None]).squeeze(-1).masked_fill(~mask0, 0.0)
    torch.testing.assert_close(drawn, expect, atol=1e-5, rtol=1e-5)


def test_rows_stop_at_eos_and_sampling_stops_when_all_have(tok):
    policy, ref = tiny_gpt2(tok, 0), tiny_gpt2(tok, 1)
    ids, mask, _ = sample(mixture_sample, policy, ref, tok, queries(tok, 24), 0.5, T=30)
    eos = tok.eos_token_id
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert bool(m[:n].all()) and not bool(m[n:].any())
        if bool((row == eos).any()):
            assert int((row == eos).nonzero()[0]) == n - 1 and bool((row[n:] == tok.pad_token_id).all())
    assert ids.shape[1] < 30 or not bool(((ids == eos) & mask).any(1).all())


def test_right_padding_is_rejected(tok):
    q = tok(["<bos> w1 w2", "<bos>"], return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        mixture_sample(tiny_gpt2(tok), tiny_gpt2(tok), q["input_ids"], q["attention_mask"], 0.5, 3, 2, 0)


# 2. β = 0 is the policy, β = 1 the reference, between them the geometric mixture --------------
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_endpoints_are_the_policy_and_the_reference(tok, beta):
    policy, ref = tiny_gpt2(tok, 0), tiny_gpt2(tok, 1)
    q = queries(tok, 8)
    ids, mask, logp = sample(mixture_sample, policy, ref, tok, q, beta, T=8, temperature=0.7)
    target = full_logprobs(policy if beta == 0 else ref, q, ids, temperature=0.7)
    other = full_logprobs(ref if beta == 0 else policy, q, ids, temperature=0.7)
    m = mask.bool()
    torch.testing.assert_close(logp[m], target[m], atol=1e-5, rtol=1e-5)  # every step, every token
    assert float((logp[m] - other[m]).abs().max()) > 0.1


def test_unused_model_is_not_run(tok):
    class Boom(torch.nn.Module):
        def forward(self, **kw):
            raise AssertionError("this model should not be run")

    model, q = tiny_gpt2(tok), queries(tok, 4)
    a = sample(mixture_sample, model, Boom(), tok, q, 0.0, T=4)  # self-play: μ unused
    b = sample(mixture_sample, Boom(), model, tok, q, 1.0, T=4)  # best response: π_θ unused
    assert torch.equal(a[0], b[0])


def test_mixture_is_the_normalised_geometric_mean(tok):
    policy, ref = tiny_gpt2(tok, 0), tiny_gpt2(tok, 1)
    beta, n = 0.3, 4000
    q = tok(["<bos> w3"] * n, return_tensors="pt", add_special_tokens=False)
    ids, _, logp = sample(mixture_sample, policy, ref, tok, (q["input_ids"], q["attention_mask"]), beta, T=1)
    with torch.no_grad():
        p = torch.softmax(policy(q["input_ids"][:1]).logits[0, -1].float(), -1)
        r = torch.softmax(ref(q["input_ids"][:1]).logits[0, -1].float(), -1)
    expected = p ** (1 - beta) * r ** beta
    expected = expected / expected.sum()
    torch.testing.assert_close(logp[0, 0].exp(), expected, atol=1e-6, rtol=1e-5)
    empirical = torch.bincount(ids[:, 0], minlength=len(tok)).float() / n
    assert 0.5 * float((empirical - expected).abs().sum()) < 0.04  # total variation; ~0.02 expected
    torch.testing.assert_close(mixture_logprobs(torch.randn(3, 5), None, 0.0).exp().sum(-1), torch.ones(3))


# 3. the policy-gradient estimate --------------------------------------------------------------
def test_loss_gradient_is_the_score_function_estimator():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -0.2, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    P, tau = torch.tensor([0.9, 0.2]), 0.1
    loss, st = nash_md_loss(lp, ref, mask, P, tau)
    loss.backward()
    # k = Σ (0.5, −1.0, 0) = −0.5 and Σ (−0.2, −0.5) = −0.7 (padding ignored);  A = P − ½ − τ k = 0.45, −0.23
    A = torch.tensor([0.45, -0.23])
    torch.testing.assert_close(lp.grad, -A[:, None] * mask / 2)
    assert st["kl"] == pytest.approx((-0.5 - 0.7) / 2) and st["preference"] == pytest.approx(0.55)
    assert st["loss"] == pytest.approx(-float((A * torch.tensor([-3.5, -1.0])).mean()))


def test_loss_gradient_finite_differences(tok):
    """On a float64 model: autograd of nash_md_loss = the finite-difference gradient of the surrogate
    s(θ) = −mean_b A_b · log π_θ(y_b|x), A held at its value at θ (the estimator's definition)."""
    model, ref = tiny_gpt2(tok, 0, dtype=torch.float64), tiny_gpt2(tok, 1, dtype=torch.float64)
    q = queries(tok, 4)
    ids, mask, _ = sample(mixture_sample, model, model, tok, q, 0.0, T=5)
    x, am = torch.cat([q[0], ids], 1), torch.cat([q[1], mask.long()], 1)
    Q, P, tau = q[0].shape[1], torch.tensor([0.9, 0.1, 0.6, 0.5], dtype=torch.float64), 0.3
    with torch.no_grad():
        ref_lp, _, _ = response_logprobs_and_values(ref, None, x, am, Q, 1.0)

    def seq_logprob():
        lp, _, _ = response_logprobs_and_values(model, None, x, am, Q, 1.0)
        return lp, (lp * mask).sum(1)

    lp, _ = seq_logprob()
    loss, _ = nash_md_loss(lp, ref_lp, mask, P, tau)
    loss.backward()
    A = (P - 0.5 - tau * ((lp - ref_lp) * mask).sum(1)).detach()
    params = dict(model.named_parameters())
    eps = 1e-6
    for name, index in [("transformer.h.0.attn.c_attn.weight", (3, 5)), ("transformer.wte.weight", (7, 2)),
                        ("transformer.h.0.mlp.c_fc.bias", (11,)), ("transformer.ln_f.weight", (4,))]:
        p = params[name]
        with torch.no_grad():
            p[index] += eps
            up = -(A * seq_logprob()[1]).mean()
            p[index] -= 2 * eps
            down = -(A * seq_logprob()[1]).mean()
            p[index] += eps
        assert float(p.grad[index]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-9), name


# 4. training ----------------------------------------------------------------------------------
def target_count(tok, texts):
    return torch.tensor([float(t.split().count(TARGET)) for t in texts])


def test_nash_md_raises_the_win_rate_against_the_base(tok):
    """P(y ≻ y') = ½ + ½ sign(#w5(y) − #w5(y')): a few steps of self-play-leaning Nash-MD make the
    policy beat the base policy."""
    def preference(prompts, y, y_prime):
        return 0.5 + 0.5 * torch.sign(target_count(tok, y) - target_count(tok, y_prime))

    base = tiny_gpt2(tok, 0, n_layer=2, n_embd=32)
    cfg = NashMDConfig(beta=0.125, tau=0.01, learning_rate=1e-2, batch_size=32, max_new_tokens=8, seed=0)
    nash = NashMD(copy.deepcopy(base), tok, cfg)
    q = queries(tok, cfg.batch_size)
    history = []
    for _ in range(15):
        r = nash.rollout(*q)
        y = nash.decode(r.response_ids, r.response_mask)
        y_prime = nash.decode(r.opponent_ids, r.opponent_mask)
        history.append(nash.step(r, preference(None, y, y_prime)))
    assert history[-1]["kl"] > 0 and all(h["grad_norm"] > 0 for h in history)

    def win_rate(model, seed):
        a = lm.sample(model, tok, ["w1 w2 w3", "w4", "w7 w8", ""] * 32, max_new_tokens=8, seed=seed)
        b = lm.sample(base, tok, ["w1 w2 w3", "w4", "w7 w8", ""] * 32, max_new_tokens=8, seed=seed + 1)
        return float(preference(None, a, b).mean())

    before, after = win_rate(base, 10), win_rate(nash.model, 10)
    assert abs(before - 0.5) < 0.1 and after > 0.7, (before, after)


def test_reference_is_a_frozen_copy_and_save(tok, tmp_path):
    model = tiny_gpt2(tok)
    nash = NashMD(model, tok, NashMDConfig(batch_size=8, max_new_tokens=5, learning_rate=1e-2))
    before = [p.clone() for p in nash.ref_model.parameters()]
    r = nash.rollout(*queries(tok, 8))
    st = nash.step(r, torch.linspace(0, 1, 8))
    assert set(st) >= {"preference", "kl", "loss", "grad_norm", "response_length", "opponent_length", "eos_frac"}
    assert st["kl"] == pytest.approx(0.0, abs=1e-6) and st["preference"] == pytest.approx(0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, nash.ref_model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="preference"):
        nash.step(r, torch.zeros(3))
    with pytest.raises(ValueError, match="preference"):
        nash.step(r, torch.full((8,), 2.0))
    nash.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "tokenizer.json").exists()


def test_missing_eos_penalty_lowers_the_weight_of_unfinished_responses(tok):
    cfg = NashMDConfig(batch_size=8, max_new_tokens=3, missing_eos_penalty=1.0)
    nash = NashMD(tiny_gpt2(tok), tok, cfg)
    r = nash.rollout(*queries(tok, 8))
    r.response_ids[r.response_ids == tok.eos_token_id] = 7  # nobody finishes
    r.response_mask[:] = True
    st = nash.step(r, torch.full((8,), 0.5))
    # A = (P − 1) − ½ − τ k for every row; P itself is reported unpenalised
    assert st["preference"] == 0.5 and st["eos_frac"] == 0
    assert st["advantage"] == pytest.approx(-1.0 - cfg.tau * st["kl"], abs=1e-6)


def test_train_nash_md(tok, tmp_path):
    tiny_gpt2(tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    reward = lambda prompts, responses: target_count(tok, responses)  # noqa: E731
    seen = []

    def preference(prompts, y, y_prime):
        seen.append((prompts, y, y_prime))
        return preference_from_reward(reward)(prompts, y, y_prime)

    cfg = NashMDConfig(batch_size=4, max_new_tokens=4, seed=1)
    nash, history = train_nash_md(str(tmp_path / "base"), tok, preference, ["w1 w2", "w3", "w4 w5 w6"], steps=2,
                                  config=cfg, progress=False, monitor=lambda texts: {"n": len(texts)})
    assert [h["step"] for h in history] == [1, 2] and all(h["n"] == 4 for h in history)
    assert {"preference", "kl", "loss"} <= set(history[0])
    prompts, y, y_prime = seen[0]
    assert len(prompts) == len(y) == len(y_prime) == 4 and all(t.startswith(" ") for t in y + y_prime)


# 5. LoRA: μ is the adapter-disabled model ----------------------------------------------------
def lora(model):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True)
    return get_peft_model(model, cfg)


def test_lora_mixture_uses_two_caches(tok):
    base = tiny_gpt2(tok)
    original = copy.deepcopy(base)
    model = lora(base).eval()
    with torch.no_grad():  # LoRA B starts at zero: move it so that policy ≠ reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    merged = copy.deepcopy(model).merge_and_unload()
    q = queries(tok, 8)
    ids, mask, logp = sample(mixture_sample, model, None, tok, q, 0.3, T=8)
    ids0, mask0, logp0 = sample(mixture_sample_nocache, merged, original, tok, q, 0.3, T=8)
    assert torch.equal(ids, ids0)
    torch.testing.assert_close(logp, logp0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="peft"):
        mixture_sample(original, None, *q, 0.3, 2, tok.eos_token_id, tok.pad_token_id)


def test_lora_step_leaves_the_reference_unchanged(tok, tmp_path):
    base = tiny_gpt2(tok)
    original = copy.deepcopy(base)
    model = lora(base)
    nash = NashMD(model, tok, NashMDConfig(batch_size=8, max_new_tokens=6, learning_rate=1e-2))
    assert nash.ref_model is None
    assert sum(p.numel() for p in nash.params) == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    r = nash.rollout(*queries(tok, 8))
    nash.step(r, torch.linspace(0, 1, 8))
    r2 = nash.rollout(*queries(tok, 8))
    Q, m = r2.query_ids.shape[1], r2.response_mask
    with torch.no_grad():
        lp_orig, _, _ = response_logprobs_and_values(original, None, r2.input_ids, r2.attention_mask, Q, 1.0)
        lp_policy, _, _ = response_logprobs_and_values(model, None, r2.input_ids, r2.attention_mask, Q, 1.0)
    torch.testing.assert_close(r2.ref_logprobs[m], lp_orig[m], atol=1e-6, rtol=1e-6)
    assert float((lp_policy - lp_orig)[m].abs().max()) > 1e-3
    with pytest.raises(ValueError, match="ref_model"):
        NashMD(model, tok, NashMDConfig(), ref_model=original)
    nash.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and not (tmp_path / "model.safetensors").exists()


# 6. Nash-EMA ----------------------------------------------------------------------------------
def trained(tok, **kw):
    """A NashMD after one step on a tiny GPT-2 (so that θ̄, θ and μ all differ)."""
    cfg = dict(batch_size=8, max_new_tokens=5, learning_rate=1e-2)
    nash = NashMD(tiny_gpt2(tok), tok, NashMDConfig(**{**cfg, **kw}))
    nash.step(nash.rollout(*queries(tok, 8)), torch.linspace(0, 1, 8))
    return nash


def test_ema_opponent_moves_toward_the_policy_at_rate_decay(tok):
    d = 0.8
    nash = NashMD(tiny_gpt2(tok), tok, NashMDConfig(batch_size=8, max_new_tokens=5, learning_rate=1e-2, ema_decay=d,
                                                    opponent="ema"))
    q = queries(tok, 8)
    for _ in range(2):
        ema_before = [p.clone() for p in nash.ema_model.parameters()]
        nash.step(nash.rollout(*q), torch.linspace(0, 1, 8))
        for bar, old, new in zip(nash.ema_model.parameters(), ema_before, nash.model.parameters()):
            torch.testing.assert_close(bar, d * old + (1 - d) * new.detach())
        assert not all(torch.equal(a, b) for a, b in zip(nash.ema_model.parameters(), nash.model.parameters()))
    assert NashMD(tiny_gpt2(tok), tok, NashMDConfig()).ema_model is None


def test_nash_ema_pg_samples_the_opponent_from_the_ema_policy_alone(tok):
    """opponent="ema" (Nash-EMA-PG, the paper's): y' ~ π_θ̄, every step's log-probs are the EMA model's own
    whatever β is; they differ from the θ̄–μ mixture, and rollout() draws y' exactly so."""
    nash = trained(tok, opponent="ema", ema_decay=0.5, beta=0.5)
    q = queries(tok, 8)
    state = nash.generator.get_state()
    r = nash.rollout(*q)
    nash.generator.set_state(state)
    ids, mask, logp = nash.sample_opponent(*q, return_logprobs=True)
    assert torch.equal(ids, r.opponent_ids) and torch.equal(mask, r.opponent_mask)
    m = mask.bool()
    ema, ref = full_logprobs(nash.ema_model, q, ids), full_logprobs(nash.ref_model, q, ids)
    torch.testing.assert_close(logp[m], ema[m], atol=1e-5, rtol=1e-5)
    assert float((logp[m] - mixture_logprobs(ema, ref, 0.5)[m]).abs().max()) > 0.05
    policy = full_logprobs(nash.model, q, ids)
    assert float((logp[m] - policy[m]).abs().max()) > 0.05  # θ̄ ≠ θ after a step


def test_ema_mixture_is_the_geometric_mixture_of_the_ema_and_the_reference(tok):
    """opponent="ema_mixture" (ours, not the paper's): log π' = (1−β) log π_θ̄ + β log μ + c — what ema_decay
    alone used to give; same draws as mixture_sample(θ̄, μ) with the same generator."""
    beta = 0.3
    nash = trained(tok, opponent="ema_mixture", ema_decay=0.5, beta=beta)
    q = queries(tok, 8)
    ids, mask, logp = nash.sample_opponent(*q, generator=torch.Generator().manual_seed(3), return_logprobs=True)
    ids0, mask0, logp0 = sample(mixture_sample, nash.ema_model, nash.ref_model, tok, q, beta, T=5, seed=3)
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    torch.testing.assert_close(logp, logp0)
    m = mask.bool()
    expected = mixture_logprobs(full_logprobs(nash.ema_model, q, ids), full_logprobs(nash.ref_model, q, ids), beta)
    torch.testing.assert_close(logp[m], expected[m], atol=1e-5, rtol=1e-5)


def test_default_opponent_is_the_nash_md_mixture_of_the_policy_and_the_reference(tok):
    """opponent="mixture" (the default, Nash-MD-PG): unchanged, no EMA kept."""
    nash = trained(tok, beta=0.3)
    assert nash.config.opponent == "mixture" and nash.config.ema_decay is None and nash.ema_model is None
    q = queries(tok, 8)
    ids, mask, logp = nash.sample_opponent(*q, generator=torch.Generator().manual_seed(3), return_logprobs=True)
    ids0, _, logp0 = sample(mixture_sample, nash.model, nash.ref_model, tok, q, 0.3, T=5, seed=3)
    assert torch.equal(ids, ids0)
    torch.testing.assert_close(logp, logp0)


@pytest.mark.parametrize("kw, message", [
    (dict(ema_decay=0.9), r"^ema_decay is only used by the EMA opponents"),
    (dict(opponent="ema"), r"^opponent 'ema' needs ema_decay"),
    (dict(opponent="ema_mixture"), r"^opponent 'ema_mixture' needs ema_decay"),
    (dict(opponent="nash-ema", ema_decay=0.9), r"^opponent must be one of"),
])
def test_opponent_and_ema_decay_go_together(kw, message):
    with pytest.raises(ValueError, match=message):
        NashMDConfig(**kw)


# 7. configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("beta", 1.5), ("beta", -0.1), ("tau", 0), ("tau", float("inf")), ("learning_rate", 0.0), ("batch_size", 0),
    ("max_new_tokens", 2.0), ("temperature", -1.0), ("max_grad_norm", 0), ("ema_decay", 1.5), ("opponent", "ema2"),
    ("missing_eos_penalty", "big"), ("seed", 0.5), ("optim", "adam"),
])
def test_bad_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {re.escape(repr(value))}$"):
        NashMDConfig(**{field: value})


def test_bad_config_messages():
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\], got 1.5$"):
        NashMDConfig(beta=1.5)
    with pytest.raises(ValueError, match=r"^tau must be a finite number > 0, got 0$"):
        NashMDConfig(tau=0)


# 8. Nash-EMA with LoRA: θ̄ is a second adapter on the same base ----------------------------------
def lora_policy(tok):
    """A LoRA policy with B ≠ 0 (so that the policy is not the reference from the start)."""
    model = lora(tiny_gpt2(tok)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return model


def adapter_state(model, name):
    """{key: tensor} of one adapter's weights by peft's own API (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


@pytest.mark.parametrize("opponent", ["ema", "ema_mixture"])
def test_lora_ema_is_a_second_adapter_on_the_same_base(tok, opponent):
    """The EMA of a PeftModel is an adapter beside the policy's: no base weight is copied."""
    model = lora_policy(tok)
    base = {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n}
    n_tensors, n_lora = len(list(model.parameters())), sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    nash = NashMD(model, tok, NashMDConfig(batch_size=8, max_new_tokens=4, ema_decay=0.5, opponent=opponent))
    # every base tensor the trainer holds, over the policy and any EMA copy: one of each, not two
    held = [m for m in (model, nash.ema_model, nash.ref_model) if m is not None]
    base_ptrs = [p.data_ptr() for m in held for n, p in m.named_parameters() if "lora_" not in n]
    assert len(set(base_ptrs)) == len(base), (len(set(base_ptrs)), len(base))
    assert nash.ema_model is None and nash.ema_adapter in model.peft_config
    # base tensors are the same objects; only the adapter's tensors were added
    assert {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n} == base
    assert len(list(model.parameters())) == n_tensors + n_lora
    # the EMA starts as the policy's adapter, frozen; the policy adapter stays active and trainable
    assert model.active_adapter == "default"
    ema, policy = adapter_state(model, nash.ema_adapter), adapter_state(model, "default")
    assert ema.keys() == policy.keys() and all(torch.equal(ema[k], policy[k]) for k in ema)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n and ".default." in n}
    assert {id(p) for p in nash.params} == {id(p) for n, p in model.named_parameters() if n in trainable}


@pytest.mark.parametrize("opponent", ["ema", "ema_mixture"])
def test_lora_ema_adapter_is_the_ema_of_the_policy_adapter(tok, opponent):
    """After k steps the EMA adapter is θ̄_k = d θ̄_{k−1} + (1−d) θ_k, θ̄_0 = θ_0, computed here by hand;
    the policy keeps learning (its adapter active and trainable), the base never moves, μ is the base."""
    d, k = 0.6, 3
    mu, model = tiny_gpt2(tok), lora_policy(tok)  # the same base weights (same seed)
    nash = NashMD(model, tok, NashMDConfig(batch_size=8, max_new_tokens=5, learning_rate=1e-2, ema_decay=d,
                                           beta=0.5, opponent=opponent))
    base_before = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    bar = adapter_state(model, "default")
    q = queries(tok, 8)
    for _ in range(k):
        before = adapter_state(model, "default")
        r = nash.rollout(*q)
        st = nash.step(r, torch.linspace(0, 1, 8))
        theta = adapter_state(model, "default")
        assert st["grad_norm"] > 0 and any(not torch.equal(before[n], theta[n]) for n in theta)
        bar = {n: d * bar[n] + (1 - d) * theta[n] for n in bar}
        ema = adapter_state(model, nash.ema_adapter)
        for n in bar:
            torch.testing.assert_close(ema[n], bar[n])
        assert model.active_adapter == "default"
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, _ in model.named_parameters() if "lora_" in n and ".default." in n}
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if "lora_" not in n)
    # μ = the adapter-disabled model, with two adapters loaded
    Q, m = r.query_ids.shape[1], r.response_mask
    with torch.no_grad():
        lp_mu, _, _ = response_logprobs_and_values(mu, None, r.input_ids, r.attention_mask, Q, 1.0)
    torch.testing.assert_close(r.ref_logprobs[m], lp_mu[m], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("opponent", ["ema", "ema_mixture"])
def test_lora_ema_opponent_equals_a_deepcopy_with_the_ema_weights(tok, opponent, tmp_path):
    """The opponent run through the EMA adapter = the opponent of a deepcopied PeftModel whose (only active)
    adapter holds the EMA weights, μ its adapter-disabled self; afterwards the policy is the policy again."""
    from peft import set_peft_model_state_dict

    beta, model = 0.4, lora_policy(tok)
    nash = NashMD(model, tok, NashMDConfig(batch_size=8, max_new_tokens=6, learning_rate=1e-2, ema_decay=0.5,
                                           beta=beta, opponent=opponent))
    q = queries(tok, 8)
    for _ in range(2):
        nash.step(nash.rollout(*q), torch.linspace(0, 1, 8))
    x = torch.cat([q[0], torch.full((8, 3), 7)], 1)
    am = torch.cat([q[1], torch.ones(8, 3, dtype=q[1].dtype)], 1)
    lp_before, _, _ = response_logprobs_and_values(model, None, x, am, q[0].shape[1], 1.0)
    reference = copy.deepcopy(model)
    set_peft_model_state_dict(reference, adapter_state(model, nash.ema_adapter), adapter_name="default")
    reference.set_adapter("default")
    ids, mask, logp = nash.sample_opponent(*q, generator=torch.Generator().manual_seed(5), return_logprobs=True)
    ids0, mask0, logp0 = sample(mixture_sample, reference, None, tok, q, 0.0 if opponent == "ema" else beta, T=6,
                                seed=5)
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    torch.testing.assert_close(logp, logp0, atol=1e-6, rtol=1e-6)
    # the policy again: same log-probs, gradients reach its adapter only, and the EMA adapter is not saved
    assert model.active_adapter == "default"
    lp_after, _, _ = response_logprobs_and_values(model, None, x, am, q[0].shape[1], 1.0)
    torch.testing.assert_close(lp_after, lp_before, atol=0, rtol=0)
    model.zero_grad(set_to_none=True)
    lp_after.sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in n and ".default." in n), n
    nash.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and not (tmp_path / nash.ema_adapter).exists()




def test_lora_ema_refuses_a_trainable_base_weight(tok):
    """A trainable weight outside the policy adapter has no place in an EMA adapter: refused, adapter removed."""
    model = lora_policy(tok)
    model.get_base_model().transformer.ln_f.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"ln_f\.weight is not part of the adapter 'default'"):
        NashMD(model, tok, NashMDConfig(ema_decay=0.5, opponent="ema"))
    assert "ema" not in model.peft_config and model.active_adapter == "default"


# 9. PPO's budget: ppo_epochs passes over minibatches, on the clipped surrogate -------------------
def count_forwards(model):
    """A list that grows by one per forward of ``model`` (its hook handle second)."""
    calls = []
    return calls, model.register_forward_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_one_update_is_the_plain_nash_md_pg_step(tok, optim):
    """ppo_epochs=1, one minibatch (the defaults): the same parameters after a step as one AdamW step on
    nash_md_loss (the score-function estimator) with gradient clipping, and one policy forward, no more.
    The fused AdamW kernel (optim="adamw_torch_fused") takes the same step to float rounding."""
    cfg = NashMDConfig(batch_size=8, max_new_tokens=6, learning_rate=1e-2, tau=0.5, missing_eos_penalty=0.3,
                       optim=optim)
    assert cfg.ppo_epochs == 1 and cfg.mini_batch_size is None
    nash = NashMD(tiny_gpt2(tok, 0), tok, cfg, ref_model=tiny_gpt2(tok, 1))  # μ ≠ θ: k ≠ 0, the τ term counts
    r = nash.rollout(*queries(tok, 8))
    P = torch.linspace(0, 1, 8)
    twin = copy.deepcopy(nash.model)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    has_eos = ((r.response_ids == tok.eos_token_id) & r.response_mask).any(1)
    lp, _, _ = response_logprobs_and_values(twin, None, r.input_ids, r.attention_mask, r.query_ids.shape[1], 1.0)
    loss, expected = nash_md_loss(lp, r.ref_logprobs, r.response_mask, P.float() - 0.3 * (~has_eos).float(),
                                  cfg.tau)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(list(twin.parameters()), cfg.max_grad_norm))
    optimizer.step()
    before = [p.clone() for p in nash.model.parameters()]
    forwards, hook = count_forwards(nash.model)
    st = nash.step(r, P)
    hook.remove()
    assert bool(nash.optimizer.defaults["fused"]) == (optim == "adamw_torch_fused")
    assert len(forwards) == 1 and nash.n_updates == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, nash.model.parameters()))
    for a, b in zip(nash.model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert st["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    for k in ("kl", "advantage"):
        assert st[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k
    assert float(((lp.detach() - r.ref_logprobs) * r.response_mask).sum(1).abs().max()) > 0.1  # some k_b ≠ 0
    assert st["clipfrac"] == 0 and st["ratio"] == 1 and st["approx_kl"] == 0


def test_equal_budget_steps_like_ppo(tok):
    """batch 8, minibatch 4, ppo_epochs 2: 4 AdamW steps per step (n_updates counts them), one no-grad forward per
    minibatch first for log π_old, so kl and the advantage are those at rollout time; y' draws are left alone."""
    cfg = NashMDConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=6, learning_rate=1e-2,
                       tau=0.5)
    nash = NashMD(tiny_gpt2(tok, 0), tok, cfg, ref_model=tiny_gpt2(tok, 1))
    steps = []
    nash.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    q, P = queries(tok, 8), torch.linspace(0, 1, 8)
    for i in range(2):
        r = nash.rollout(*q)
        with torch.no_grad():
            lp, _, _ = response_logprobs_and_values(nash.model, None, r.input_ids, r.attention_mask, q[0].shape[1],
                                                    1.0)
        _, expected = nash_md_loss(lp, r.ref_logprobs, r.response_mask, P, cfg.tau)
        y_prime_state = nash.generator.get_state()
        forwards, hook = count_forwards(nash.model)
        st = nash.step(r, P)
        hook.remove()
        assert nash.n_updates == 4 * (i + 1) and len(steps) == 4 * (i + 1)
        assert len(forwards) == 2 + 4  # log π_old in two chunks, then one forward per update
        assert torch.equal(nash.generator.get_state(), y_prime_state)
        for k in ("kl", "advantage", "preference"):
            assert st[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7), k
        assert {"loss", "grad_norm", "clipfrac", "approx_kl", "ratio"} <= set(st) and st["grad_norm"] > 0
        assert st["approx_kl"] > 0  # later updates see θ ≠ θ_old


def test_clipped_loss_by_hand():
    """ε = 0.2; row 0 has A = 1, row 1 A = −1.  ρ = 1.5 with A > 0 and ρ = 0.5 with A < 0 left the clip range on
    the side the advantage favours: clipped, zero gradient; ρ = 0.5 with A > 0 and ρ = 1.5 with A < 0 keep the
    unclipped branch (the pessimistic one) and its gradient; padding counts for nothing."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])
    rho = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 1.1]])
    lp = (old + rho.log()).requires_grad_()
    A, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, st = nash_md_clipped_loss(lp, old, A, mask, 0.2)
    loss.backward()
    # −mean_b Σ_t: row 0 min(1.5, 1.2) + min(0.5, 0.8) + 1 = 2.7; row 1 min(−0.5, −0.8) + min(−1.5, −1.2) = −2.3
    assert float(loss.detach()) == pytest.approx(-(2.7 - 2.3) / 2)
    # d loss / d log π = −A ρ / B on the unclipped branch, 0 on the clipped one
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.25, -0.5], [0.0, 0.75, 0.0]]))
    assert st["clipfrac"] == pytest.approx(2 / 5) and st["ratio"] == pytest.approx(1.0)
    assert st["approx_kl"] == pytest.approx(0.5 * 2 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 5)


def test_clipped_loss_at_the_old_policy_is_the_score_function_estimator():
    """ρ = 1: the gradient of nash_md_clipped_loss is that of nash_md_loss (a sum over tokens, not a mean)."""
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -0.2, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    P, tau = torch.tensor([0.9, 0.2]), 0.1
    loss, _ = nash_md_loss(lp, ref, mask, P, tau)
    (expected,) = torch.autograd.grad(loss, lp)
    A = P - 0.5 - tau * ((lp - ref) * mask).sum(1).detach()
    loss, st = nash_md_clipped_loss(lp, lp.detach(), A, mask, 0.2)
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, expected, atol=0, rtol=0)
    assert st["clipfrac"] == 0 and st["ratio"] == 1


def test_reusing_a_batch_with_a_large_step_clips(tok):
    """Several passes over one batch at lr 0.1: the ratio leaves [1−ε, 1+ε] and clipfrac > 0 is reported; with a
    clip range no ratio reaches, nothing is clipped."""
    q, P = queries(tok, 8), torch.linspace(0, 1, 8)
    clipfrac = {}
    for eps in (0.05, 1e6):
        cfg = NashMDConfig(batch_size=8, mini_batch_size=4, ppo_epochs=4, max_new_tokens=6, learning_rate=0.1,
                           max_grad_norm=100.0, cliprange=eps)
        nash = NashMD(tiny_gpt2(tok, 0), tok, cfg)
        st = nash.step(nash.rollout(*q), P)
        assert nash.n_updates == 8 and st["approx_kl"] > 0
        clipfrac[eps] = st["clipfrac"]
    assert clipfrac[0.05] > 0.05 and clipfrac[1e6] == 0, clipfrac


@pytest.mark.parametrize("kw, field, value", [
    (dict(batch_size=8, mini_batch_size=3), "mini_batch_size", 3),
    (dict(batch_size=8, mini_batch_size=16), "mini_batch_size", 16),
    (dict(mini_batch_size=0), "mini_batch_size", 0),
    (dict(ppo_epochs=0), "ppo_epochs", 0),
    (dict(ppo_epochs=1.5), "ppo_epochs", 1.5),
    (dict(cliprange=0), "cliprange", 0),
    (dict(cliprange=float("nan")), "cliprange", float("nan")),
])
def test_bad_update_budget_names_the_field(kw, field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {re.escape(repr(value))}$"):
        NashMDConfig(**kw)
    NashMDConfig(batch_size=8, mini_batch_size=8)  # a divisor, the batch itself included
