"""PPO kernel on a tiny word-level GPT-2 (built locally, no hub)."""
import copy
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pluralign.ppo import (PPO, PPOConfig, gae, per_token_rewards, ppo_loss,  # noqa: E402
                           response_logprobs_and_values, truncate_after_eos, whiten)

WORDS = [f"w{i}" for i in range(16)]
TARGET = "w5"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are fastest on one thread (and OpenMP spin-waits badly on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_tokenizer(pad_token="<pad>"):
    """Word-level tokenizer over WORDS with <pad> <bos> <eos> <unk> (ids 0-3), left padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad_token, eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", padding_side="left")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def tiny_gpt2(tok, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg).float()  # conftest makes float64 the default dtype


def queries(tok, n):
    texts = ["<bos> w1 w2 w3", "<bos> w4", "<bos> w7 w8"]
    q = tok([texts[i % len(texts)] for i in range(n)], return_tensors="pt", padding=True)
    return q["input_ids"], q["attention_mask"]


def target_fraction(rollout, target_id):
    """Score: share of response tokens (EOS included) equal to the target word."""
    m = rollout.response_mask
    return ((rollout.response_ids == target_id) & m).sum(1) / m.sum(1)


# 1. GAE ---------------------------------------------------------------------------------------
def test_gae_matches_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])  # the 5 sits on padding and must be ignored
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # δ2 = 2 − 1.5 = 0.5                 A2 = 0.5
    # δ1 = 0 + 0.9·1.5 − 1.0 = 0.35      A1 = 0.35 + 0.72·0.5 = 0.71
    # δ0 = 1 + 0.9·1.0 − 0.5 = 1.4       A0 = 1.4 + 0.72·0.71 = 1.9112
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0, 0.0]]))


def test_gae_lambda_one_is_returns_to_go_minus_values(gen):
    B, T = 4, 6
    rewards, values = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    lengths = torch.tensor([6, 3, 1, 5])
    mask = (torch.arange(T) < lengths[:, None]).to(rewards.dtype)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = (rewards * mask).flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(adv, (to_go - values) * mask)
    torch.testing.assert_close(ret, to_go)


def test_whiten_masked(gen):
    x = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=x.dtype)
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert abs(float(vals.mean())) < 1e-6 and abs(float(vals.std()) - 1) < 1e-4
    assert bool((w[~mask.bool()] == 0).all())
    scaled = whiten(x, mask, shift_mean=False)[mask.bool()]
    torch.testing.assert_close(scaled.mean(), x[mask.bool()].mean())  # scale only: the mean stays
    torch.testing.assert_close(scaled.std(), torch.tensor(1.0, dtype=x.dtype), rtol=1e-4, atol=1e-6)


# 2. clipped losses ----------------------------------------------------------------------------
def test_ppo_loss_clipping_zeroes_gradient_and_counts_clipfrac():
    eps = 0.2
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 1.5, 1.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])  # last token: clipped but padding
    old = torch.zeros_like(ratio)
    new = ratio.log().requires_grad_(True)
    v = torch.zeros_like(ratio)
    loss, st = ppo_loss(new, old, adv, v, v, v, mask, eps, 0.2, vf_coef=0.0)
    loss.backward()
    # tokens 0 (ρ>1+ε, A>0) and 1 (ρ<1−ε, A<0) are clipped: no gradient; the rest get −A ρ / 5
    expected = torch.tensor([[0.0, 0.0, -1.1, -0.7, 1.5, 0.0]]) / 5
    torch.testing.assert_close(new.grad, expected)
    assert st["clipfrac"] == pytest.approx(2 / 5)
    # objective value: mean of max(−Aρ, −A clip ρ) over the 5 real tokens
    assert float(loss.detach()) == pytest.approx((-1.2 + 0.8 - 1.1 - 0.7 + 1.5) / 5)
    assert st["approx_kl"] == pytest.approx(0.5 * float((ratio.log()[0, :5] ** 2).mean()))


def test_value_loss_clipping():
    old_v = torch.zeros(1, 3)
    new_v = torch.tensor([[0.5, 0.1, -0.5]], requires_grad=True)
    ret = torch.ones(1, 3)
    mask = torch.ones(1, 3)
    zero = torch.zeros(1, 3)
    loss, st = ppo_loss(zero, zero, zero, new_v, old_v, ret, mask, 0.2, 0.2, vf_coef=1.0)
    loss.backward()
    # token 0 moved towards its return past the clip (0.2): the clipped error (0.8² > 0.5²) is the one
    # kept, and it has no gradient; token 1 inside the range: (V − R)/3; token 2 moved away from
    # the return: the unclipped error (1.5² > 1.2²) is kept, gradient (V − R)/3
    torch.testing.assert_close(new_v.grad, torch.tensor([[0.0, -0.9 / 3, -1.5 / 3]]))
    assert st["value_clipfrac"] == pytest.approx(1 / 3)


# 3. shaped rewards ----------------------------------------------------------------------------
def test_per_token_rewards_kl_and_score_on_last_real_token():
    lp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -0.5, -7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    scores = torch.tensor([10.0, -4.0])
    rewards, kl = per_token_rewards(scores, lp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [1.0, -0.5, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 10.0, 0.0], [-0.1, 0.05 - 4.0, 0.0, 0.0]]))


# 4. rollout masking ---------------------------------------------------------------------------
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_truncate_after_eos(pad_is_eos):
    eos, pad = 2, (2 if pad_is_eos else 0)
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask = truncate_after_eos(ids, eos, pad)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert out.tolist() == [[5, 2, pad, pad], [5, 6, 7, 8], [2, pad, pad, pad]]


def test_rollout_masks_after_first_eos_and_ignores_padding(tok):
    model = tiny_gpt2(tok)  # near-uniform over 20 tokens: about half the rows stop within 12
    ppo = PPO(model, tok, PPOConfig(batch_size=24, mini_batch_size=24, ppo_epochs=1, max_new_tokens=12))
    qi, qm = queries(tok, 24)
    r = ppo.rollout(qi, qm)
    eos = tok.eos_token_id
    stopped = 0
    for ids, m in zip(r.response_ids, r.response_mask):
        n = int(m.sum())
        assert bool(m[:n].all()) and not bool(m[n:].any())  # a prefix
        hits = (ids == eos).nonzero().flatten()
        if len(hits):
            stopped += 1
            assert int(hits[0]) == n - 1  # the first EOS is the last masked token
            assert bool((ids[n:] == tok.pad_token_id).all())
    assert stopped >= 3
    for x in (r.logprobs, r.ref_logprobs, r.values):
        assert x.shape == r.response_ids.shape and x.dtype == torch.float32
    torch.testing.assert_close(r.logprobs, r.ref_logprobs)  # policy == reference before any step
    assert len(ppo.decode(r)) == 24 and all("<eos>" not in s and "<pad>" not in s for s in ppo.decode(r))

    # log-probs of real tokens do not depend on the padding: garbage after EOS and extra left
    # padding of the query leave them unchanged
    Q = r.query_ids.shape[1]
    garbage = torch.where(r.response_mask, r.response_ids, torch.full_like(r.response_ids, 7))
    ids = torch.cat([r.query_ids, garbage], 1)
    lp, v, _ = response_logprobs_and_values(model, ppo.value_head, ids, r.attention_mask, Q, 1.0)
    m = r.response_mask
    torch.testing.assert_close(lp[m], r.logprobs[m])
    padded_ids = torch.cat([torch.full((24, 3), tok.pad_token_id), r.input_ids], 1)
    padded_am = torch.cat([torch.zeros(24, 3, dtype=torch.long), r.attention_mask], 1)
    lp2, _, _ = response_logprobs_and_values(model, ppo.value_head, padded_ids, padded_am, Q + 3, 1.0)
    torch.testing.assert_close(lp2[m], r.logprobs[m], atol=1e-5, rtol=1e-5)
    # the LM head only on the response positions (logits_to_keep) gives the full forward's log-probs
    with torch.no_grad():
        pos = (r.attention_mask.cumsum(-1) - 1).clamp_min(0)
        full = model(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=pos).logits[:, Q - 1:-1]
        by_hand = torch.log_softmax(full, -1).gather(-1, r.response_ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp[m], by_hand[m], atol=1e-5, rtol=1e-5)
    _, _, no_entropy = response_logprobs_and_values(model, None, r.input_ids, r.attention_mask, Q, 1.0, entropy=False)
    assert no_entropy is None

    # the stats count real tokens only; the first minibatch reproduces the rollout's log-probs
    stats = ppo.step(r, torch.zeros(24))
    assert stats["response_length"] == pytest.approx(float(m.sum(1).float().mean()))
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] < 1e-10


def test_rollout_rejects_right_padding(tok):
    ppo = PPO(tiny_gpt2(tok), tok, PPOConfig(batch_size=4, mini_batch_size=2))
    q = tok(["<bos> w1 w2", "<bos> w3"], return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        ppo.rollout(q["input_ids"], q["attention_mask"])


def test_missing_eos_penalty(tok):
    cfg = PPOConfig(batch_size=8, mini_batch_size=8, ppo_epochs=1, max_new_tokens=3, missing_eos_penalty=1.0)
    ppo = PPO(tiny_gpt2(tok), tok, cfg)
    r = ppo.rollout(*queries(tok, 8))
    # build a rollout where half the rows emit EOS first, and check the penalised terminal reward
    r.response_ids[:4, 0] = tok.eos_token_id
    r.response_ids, r.response_mask = truncate_after_eos(r.response_ids, tok.eos_token_id, tok.pad_token_id)
    r.response_ids[4:] = torch.where(r.response_ids[4:] == tok.eos_token_id, 7, r.response_ids[4:])
    r.response_mask[4:] = True
    stats = ppo.step(r, torch.zeros(8))
    assert stats["score"] == 0.0 and stats["eos_frac"] == 0.5
    assert stats["kl"] == 0.0 and stats["rlhf_reward"] == pytest.approx(-0.5)  # 4 of 8 rows lose 1


# 5. learning ----------------------------------------------------------------------------------
def test_ppo_raises_a_simple_reward(tok):
    cfg = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=2e-3, kl_coef=0.01,
                    max_new_tokens=8, seed=0)
    ppo = PPO(tiny_gpt2(tok), tok, cfg)
    qi, qm = queries(tok, cfg.batch_size)
    target = tok.convert_tokens_to_ids(TARGET)
    history = []
    for _ in range(15):
        r = ppo.rollout(qi, qm)
        history.append(ppo.step(r, target_fraction(r, target)))
    scores = [h["score"] for h in history]
    start, end = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert start < 0.15 and end > start + 0.25, scores
    assert history[-1]["kl"] > 0  # the policy moved away from the reference


def test_same_seed_same_numbers(tok):
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, seed=3)
    runs = []
    for _ in range(2):
        ppo = PPO(tiny_gpt2(tok), tok, cfg)
        qi, qm = queries(tok, 8)
        out = []
        for _ in range(2):
            r = ppo.rollout(qi, qm)
            out.append((r.response_ids.clone(), ppo.step(r, torch.arange(8.0))))
        runs.append(out)
    for (ids_a, st_a), (ids_b, st_b) in zip(*runs):
        assert torch.equal(ids_a, ids_b) and st_a == st_b


# 6. LoRA reference ----------------------------------------------------------------------------
def test_lora_reference_is_the_adapter_free_base(tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_gpt2(tok)
    original = copy.deepcopy(base).eval()  # PPO keeps its model in eval mode (no dropout)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True)
    model = get_peft_model(base, lora)
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=1e-2, max_new_tokens=6)
    ppo = PPO(model, tok, cfg)
    assert ppo.ref_model is None  # no second copy of the weights
    n_trainable = sum(p.numel() for p in ppo.params)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) + 33
    r = ppo.rollout(*queries(tok, 8))
    ppo.step(r, torch.arange(8.0))

    Q, m = r.query_ids.shape[1], r.response_mask
    with torch.no_grad():
        lp_orig, _, _ = response_logprobs_and_values(original, None, r.input_ids, r.attention_mask, Q, 1.0)
        lp_policy, _, _ = response_logprobs_and_values(model, None, r.input_ids, r.attention_mask, Q, 1.0)
    lp_ref = ppo.ref_logprobs(r.input_ids, r.attention_mask, Q)
    torch.testing.assert_close(lp_ref[m], lp_orig[m], atol=1e-6, rtol=1e-6)
    assert float((lp_policy - lp_orig)[m].abs().max()) > 1e-3
    torch.testing.assert_close(r.ref_logprobs[m], lp_orig[m], atol=1e-6, rtol=1e-6)

    ppo.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "value_head.safetensors").exists()
    assert (tmp_path / "tokenizer.json").exists()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))  # no pickles


def test_value_head_round_trips_through_safetensors(tok, tmp_path):
    from safetensors.torch import load_file

    from pluralign.ppo import ValueHead, load_value_head

    ppo = PPO(tiny_gpt2(tok), tok, PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=3))
    r = ppo.rollout(*queries(tok, 4))
    ppo.step(r, torch.arange(4.0))  # the head is no longer zero
    ppo.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".safetensors")) == \
        ["model.safetensors", "value_head.safetensors"]
    saved = load_file(tmp_path / "value_head.safetensors")  # plain tensors, no pickle
    assert set(saved) == {"summary.weight", "summary.bias"}
    head = load_value_head(tmp_path)
    assert isinstance(head, ValueHead) and float(head.summary.weight.abs().sum()) > 0
    for k, v in ppo.value_head.state_dict().items():
        assert torch.equal(head.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="value_head.safetensors"):
        load_value_head(tmp_path / "nowhere")


def test_lora_rejects_separate_reference(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(tok), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                      task_type="CAUSAL_LM", fan_in_fan_out=True))
    with pytest.raises(ValueError, match="ref_model"):
        PPO(model, tok, PPOConfig(), ref_model=tiny_gpt2(tok))


def test_full_model_reference_is_a_frozen_copy(tok):
    model = tiny_gpt2(tok)
    ppo = PPO(model, tok, PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=4))
    before = [p.clone() for p in ppo.ref_model.parameters()]
    r = ppo.rollout(*queries(tok, 8))
    ppo.step(r, torch.arange(8.0))
    assert all(not p.requires_grad for p in ppo.ref_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, ppo.ref_model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# 7. configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("kl_coef", -1), ("batch_size", 0), ("mini_batch_size", 5), ("mini_batch_size", 128), ("ppo_epochs", 0),
    ("learning_rate", 0.0), ("cliprange", -0.1), ("cliprange_value", float("nan")), ("vf_coef", -1.0),
    ("gamma", 1.5), ("lam", -0.1), ("max_new_tokens", 0), ("temperature", 0.0), ("top_k", -1),
    ("max_grad_norm", 0), ("missing_eos_penalty", "big"), ("whiten_rewards", 1), ("seed", 1.5),
    ("batch_size", 2.0), ("optim", "sgd"), ("optim", "adamw_torch_foreach"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {re.escape(repr(value))}$"):
        PPOConfig(**{field: value})


def test_fused_adamw_is_the_same_update_in_one_kernel(tok):
    """optim="adamw_torch_fused" (transformers' name; TrainingArguments' default since torch 2.8)
    builds torch's fused AdamW and takes the foreach kernel's step to float rounding; the default
    stays the foreach kernel (the recorded CPU runs)."""
    runs = {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        model = tiny_gpt2(tok)
        ppo = PPO(model, tok, PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=4, seed=3,
                                        learning_rate=1e-2, optim=optim))
        r = ppo.rollout(*queries(tok, 8))
        ppo.step(r, torch.arange(8.0))
        runs[optim] = (ppo, [p.detach().clone() for p in model.parameters()])
    assert not runs["adamw_torch"][0].optimizer.defaults["fused"]
    assert runs["adamw_torch_fused"][0].optimizer.defaults["fused"] is True
    assert PPOConfig().optim == "adamw_torch"
    assert all(run[0].optimizer.defaults["weight_decay"] == 0.0 for run in runs.values())
    start = [p for p in tiny_gpt2(tok).parameters()]
    moved = max(float((a - b).abs().max()) for a, b in zip(runs["adamw_torch"][1], start))
    assert moved > 1e-3  # the step did something (lr 1e-2, 4 AdamW steps)
    # to 1% of one step's size (lr): Adam's m/√v turns rounding in near-zero gradients into
    # visible, bounded differences; a different update (e.g. no bias correction) is ~lr off
    for a, b in zip(runs["adamw_torch"][1], runs["adamw_torch_fused"][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_bad_tokenizer_and_scores(tok):
    notok = make_tokenizer(pad_token=None)
    assert notok.pad_token_id is None
    with pytest.raises(ValueError, match="pad_token") as err:
        PPO(tiny_gpt2(tok), notok)
    # the advice must not be pad = eos: reward and pairwise models pool at the last non-pad token
    assert "distinct from eos" in str(err.value) and "to eos" not in str(err.value)
    ppo = PPO(tiny_gpt2(tok), tok, PPOConfig(batch_size=4, mini_batch_size=2, max_new_tokens=2))
    r = ppo.rollout(*queries(tok, 4))
    with pytest.raises(ValueError, match="scores"):
        ppo.step(r, torch.zeros(3))


# 8. top-p, learning-rate schedule, adaptive KL, update count ------------------------------------
def test_top_p_samples_the_nucleus_and_keeps_untruncated_logprobs(tok):
    """top_p → 0 keeps only the most probable token: every sample is the argmax of the temperature
    softmax; top_p = 1 on the same seed samples others.  Log-probs are those of the uncut softmax."""
    argmax_share = {}
    for top_p in (1e-6, 1.0):
        cfg = PPOConfig(batch_size=12, mini_batch_size=12, ppo_epochs=1, max_new_tokens=6, temperature=0.7, top_p=top_p)
        ppo = PPO(tiny_gpt2(tok), tok, cfg)
        assert ppo.generation_kwargs["top_p"] == top_p
        r = ppo.rollout(*queries(tok, 12))
        Q, m = r.query_ids.shape[1], r.response_mask
        am = r.attention_mask
        with torch.no_grad():
            logits = ppo.model(input_ids=r.input_ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp_min(0),
                               use_cache=False).logits[:, Q - 1:-1].float() / 0.7
        argmax_share[top_p] = float((r.response_ids == logits.argmax(-1))[m].float().mean())
        full = torch.log_softmax(logits, -1).gather(-1, r.response_ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(r.logprobs[m], full[m], atol=1e-5, rtol=1e-5)
        assert float(r.logprobs[m].max()) < -1.0  # near-uniform over 20 tokens, not the truncated 0
    assert argmax_share[1e-6] == 1.0 and argmax_share[1.0] < 0.5, argmax_share


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule_decays_to_zero_at_total_steps(tok, schedule):
    import math

    lr, total = 1e-3, 3
    factor = {"constant": lambda k: 1.0,
              "cosine": lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)),
              "linear": lambda k: 1 - min(k, total) / total}[schedule]
    cfg = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=2, learning_rate=lr,
                    lr_schedule=schedule, total_steps=total)
    ppo = PPO(tiny_gpt2(tok), tok, cfg)
    assert ppo.optimizer.param_groups[0]["lr"] == lr
    q = queries(tok, 4)
    for k in range(total + 2):  # past total_steps the lr stays at 0
        st = ppo.step(ppo.rollout(*q), torch.arange(4.0))
        assert st["learning_rate"] == pytest.approx(lr * factor(k), rel=1e-12, abs=1e-18)
        assert ppo.optimizer.param_groups[0]["lr"] == pytest.approx(lr * factor(k + 1), rel=1e-12, abs=1e-18)
    if schedule == "constant":
        assert ppo.optimizer.param_groups[0]["lr"] == lr
    else:
        assert ppo.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-18)
        assert 0 < factor(1) < 1  # it did decay in between
    # at lr 0 an update leaves the policy where it is
    if schedule != "constant":
        before = [p.clone() for p in ppo.params]
        ppo.step(ppo.rollout(*q), torch.arange(4.0))
        assert all(torch.equal(a, b) for a, b in zip(before, ppo.params))


def sharp_reference(tok):
    """A reference far from the near-uniform policy (its logits ×~30), so the sampled KL is large."""
    ref = tiny_gpt2(tok, seed=1)
    with torch.no_grad():
        ref.transformer.wte.weight.mul_(30)
    return ref


@pytest.mark.parametrize("kl_target, direction", [(1e-3, +1), (1e4, -1), (None, 0)])
def test_adaptive_kl_moves_beta_toward_the_target(tok, kl_target, direction):
    B, H, beta0 = 8, 16, 0.1
    cfg = PPOConfig(batch_size=B, mini_batch_size=B, ppo_epochs=1, max_new_tokens=4, kl_coef=beta0,
                    kl_target=kl_target, kl_horizon=H)
    ppo = PPO(tiny_gpt2(tok), tok, cfg, ref_model=sharp_reference(tok))
    q = queries(tok, B)
    beta = beta0
    for _ in range(3):
        st = ppo.step(ppo.rollout(*q), torch.zeros(B))
        assert st["kl_coef"] == beta  # the β this iteration's shaped rewards used
        assert st["non_score_reward"] == pytest.approx(-beta * st["kl"], rel=1e-5)
        if kl_target is not None:
            assert (st["kl"] - kl_target) * direction > 0
            e = min(max(st["kl"] / kl_target - 1, -0.2), 0.2)
            beta = beta * (1 + e * B / H)
        assert ppo.kl_coef == beta
    assert cfg.kl_coef == beta0  # the config is not mutated
    if direction:
        assert (ppo.kl_coef - beta0) * direction > 0
        assert ppo.kl_coef == pytest.approx(beta0 * (1 + direction * 0.2 * B / H) ** 3)  # clipped at ±0.2
    else:
        assert ppo.kl_coef == beta0


def test_adaptive_kl_inside_the_clip_is_proportional(tok):
    """The first rollout is the same whatever kl_target is; a target 4 % below its KL gives e = 0.04."""
    B, H = 8, 16
    base = dict(batch_size=B, mini_batch_size=B, ppo_epochs=1, max_new_tokens=4, kl_coef=0.1, kl_horizon=H)
    q = queries(tok, B)
    fixed = PPO(tiny_gpt2(tok), tok, PPOConfig(**base), ref_model=sharp_reference(tok))
    kl0 = fixed.step(fixed.rollout(*q), torch.zeros(B))["kl"]
    assert kl0 > 0
    ppo = PPO(tiny_gpt2(tok), tok, PPOConfig(**base, kl_target=kl0 / 1.04), ref_model=sharp_reference(tok))
    st = ppo.step(ppo.rollout(*q), torch.zeros(B))
    assert st["kl"] == kl0
    e = st["kl"] / (kl0 / 1.04) - 1
    assert e == pytest.approx(0.04)
    assert ppo.kl_coef == 0.1 * (1 + e * B / H)


@pytest.mark.parametrize("kwargs, field", [
    ({"kl_target": 0}, "kl_target"), ({"kl_target": -1}, "kl_target"), ({"kl_target": float("inf")}, "kl_target"),
    ({"kl_horizon": 0}, "kl_horizon"), ({"kl_horizon": 1.5}, "kl_horizon"),
    ({"lr_schedule": "cosine"}, "total_steps"), ({"lr_schedule": "linear"}, "total_steps"),
    ({"lr_schedule": "cosine", "total_steps": 0}, "total_steps"), ({"lr_schedule": "step"}, "lr_schedule"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": float("nan")}, "top_p"),
])
def test_bad_schedule_controller_or_top_p_names_the_field(kwargs, field):
    value = kwargs.get(field)
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {re.escape(repr(value))}$"):
        PPOConfig(**kwargs)


def test_bad_kl_target_message():
    with pytest.raises(ValueError) as err:
        PPOConfig(kl_target=0)
    assert str(err.value) == "kl_target must be None or a finite number > 0, got 0"
    with pytest.raises(ValueError, match=r"^total_steps must be an integer >= 1 when lr_schedule='cosine', got None$"):
        PPOConfig(lr_schedule="cosine")


def test_n_updates_counts_optimizer_steps(tok):
    cfg = PPOConfig(batch_size=8, mini_batch_size=2, ppo_epochs=3, max_new_tokens=2)
    ppo = PPO(tiny_gpt2(tok), tok, cfg)
    assert ppo.n_updates == 0
    q = queries(tok, 8)
    for k in range(1, 3):
        ppo.step(ppo.rollout(*q), torch.arange(8.0))
        assert ppo.n_updates == k * 3 * (8 // 2)


def test_fused_gelu_is_the_same_function(tok):
    from transformers.activations import GELUTanh, NewGELUActivation

    from pluralign.ppo import fused_gelu

    model = tiny_gpt2(tok).eval()
    ids = torch.randint(4, len(tok), (3, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert any(isinstance(m, NewGELUActivation) for m in model.modules())
        fused_gelu(model)
        after = model(input_ids=ids).logits
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert any(isinstance(m, GELUTanh) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
