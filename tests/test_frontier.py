"""The frontier's KL estimate against an exact KL on a tiny model, and its checkpoint recorder."""
import pytest
import torch

from pluralign import frontier, lm

WORDS = [f"w{i}" for i in range(6)]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok = lm.build_word_tokenizer(WORDS)
    policy = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=0, dropout=0.0).eval()
    ref = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=1, dropout=0.0).eval()
    with torch.no_grad():  # make the two models disagree clearly
        policy.lm_head.weight.mul_(8.0)
    return tok, policy, ref


@torch.no_grad()
def exact_kl(policy, ref, tok, prompt, L, T):
    """KL(π_T ‖ μ_T) over every response of at most L tokens (EOS stops it), by enumeration:
    Σ over unfinished prefixes of P_π(prefix) · KL(π(·|prefix) ‖ μ(·|prefix))."""
    ids, mask = lm.encode_prompts(tok, [prompt])
    eos = tok.eos_token_id
    frontier_ = [([], 1.0)]
    total = 0.0
    for _ in range(L):
        nxt = []
        for prefix, p in frontier_:
            x = torch.cat([ids, torch.tensor([prefix], dtype=torch.long).view(1, -1)], 1)
            lp = torch.log_softmax(policy(input_ids=x).logits[0, -1].double() / T, -1)
            lq = torch.log_softmax(ref(input_ids=x).logits[0, -1].double() / T, -1)
            total += p * float((lp.exp() * (lp - lq)).sum())
            for v in range(len(lp)):
                if v != eos:
                    nxt.append((prefix + [v], p * float(lp[v].exp())))
        frontier_ = nxt
    return total


def test_kl_estimate_matches_the_exact_kl(setup):
    tok, policy, ref = setup
    L, T, n = 3, 0.7, 3000
    exact = exact_kl(policy, ref, tok, "w1 w2", L, T)
    texts, kl = frontier.sample_with_kl(policy, ref, tok, ["w1 w2"] * n, L, temperature=T, seed=0)
    assert len(texts) == n and kl.shape == (n,)
    se = float(kl.std()) / n ** 0.5
    assert exact > 0.05  # the models do disagree
    assert abs(float(kl.mean()) - exact) < 4 * se, (float(kl.mean()), exact, se)
    # the same model as reference: exactly zero
    _, zero = frontier.sample_with_kl(policy, policy, tok, ["w1 w2"] * 8, L, temperature=T, seed=0)
    assert torch.allclose(zero, torch.zeros(8, dtype=torch.float64), atol=1e-6)


def test_the_samplers_own_logprobs_are_the_forward_pass_ones(setup):
    """The KL estimate takes log π_T(y) from the KV-cached sampler: the same numbers as a full
    forward over the sampled responses (the reference side is always a forward pass)."""
    from pluralign.ppo import sample_responses

    tok, policy, ref = setup
    ids, mask = lm.encode_prompts(tok, ["w1 w2", "w3", "w4 w5 w1"])
    kw = dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=5,
              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    response, rmask, drawn = sample_responses(policy, ids, mask, kw, return_token_logprobs=True)
    torch.manual_seed(0)
    again, again_mask = sample_responses(policy, ids, mask, kw)
    assert torch.equal(response, again) and torch.equal(rmask, again_mask)  # asking for them draws nothing more
    full = torch.cat([ids, response], 1)
    am = torch.cat([mask, rmask.long()], 1)
    forward = frontier.sequence_logprob(policy, full, am, ids.shape[1], rmask, 0.7)
    assert bool((drawn[~rmask] == 0).all())
    torch.testing.assert_close(drawn.sum(1), forward, atol=1e-5, rtol=1e-5)
    # nucleus sampling goes through generate, which has no such numbers: None (the caller runs a forward)
    assert sample_responses(policy, ids, mask, dict(kw, top_p=0.9), return_token_logprobs=True)[2] is None


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_the_cut_forward_gives_the_full_batch_sums(setup, chunk):
    """response_logprob cuts each chunk of rows to its own longest answer and query: the same sums
    as one forward over the whole padded batch, rows with empty-looking answers and long prompts
    included, in the callers' order."""
    from pluralign.ppo import sample_responses

    tok, policy, ref = setup
    prompts = ["w1", "w2 w3 w4 w5 w0 w1", "w4 w5", "", "w3 w3 w3"] * 3
    ids, mask = lm.encode_prompts(tok, prompts)
    kw = dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=8, pad_token_id=tok.pad_token_id,
              eos_token_id=tok.eos_token_id)
    torch.manual_seed(5)
    response, rmask, _ = sample_responses(policy, ids, mask, kw, return_token_logprobs=True)
    lengths = rmask.sum(1)
    assert int(lengths.min()) < int(lengths.max())  # answers of several lengths, so chunks get cut differently
    full = frontier.sequence_logprob(ref, torch.cat([ids, response], 1), torch.cat([mask, rmask.long()], 1),
                                     ids.shape[1], rmask, 0.7)
    cut = frontier.response_logprob(ref, ids, mask, response, rmask, 0.7, chunk=chunk)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_nucleus_sampling_goes_through_generate_as_lm_sample_does(setup):
    tok, policy, ref = setup
    prompts = ["w1", "w2 w3", "w4 w5 w0", "w3"] * 5
    texts, _ = frontier.sample_with_kl(policy, ref, tok, prompts, 5, temperature=0.7, top_p=0.9, seed=3, batch_size=8)
    assert texts == lm.sample(policy, tok, prompts, 5, temperature=0.7, top_p=0.9, seed=3, batch_size=8)
    plain, _ = frontier.sample_with_kl(policy, ref, tok, prompts, 5, temperature=0.7, seed=3, batch_size=8)
    again, _ = frontier.sample_with_kl(policy, ref, tok, prompts, 5, temperature=0.7, seed=3, batch_size=8)
    assert plain == again and len(plain) == len(prompts)
    # plain sampling on CPU: lm.sample draws through the same sampler, so the base policy's answers and a
    # checkpoint's are the same draws from the same seed
    assert plain == lm.sample(policy, tok, prompts, 5, temperature=0.7, seed=3, batch_size=8)


def test_checkpoints_record_the_steps_asked_and_the_last(setup):
    tok, policy, ref = setup
    ck = frontier.Checkpoints(ref, tok, ["w1", "w2"], at=[2, 4], last=5, max_new_tokens=3, temperature=0.7)
    for step in range(1, 6):
        ck(step, policy)
    frame = ck.frame(method="m", seed=0)
    assert sorted(frame.step.unique()) == [2, 4, 5] and len(frame) == 6
    assert list(frame.columns[:2]) == ["seed", "method"] and frame.prompt.tolist() == [0, 1] * 3
    # one sampling seed for every checkpoint: the same policy gives the same answers each time
    assert frame[frame.step == 2].response.tolist() == frame[frame.step == 4].response.tolist()
    with pytest.raises(ValueError, match=r"checkpoint steps must be integers in \[1, 5\].*got 0"):
        frontier.Checkpoints(ref, tok, ["w1"], at=[0, 3], last=5, max_new_tokens=3)
    with pytest.raises(ValueError, match="got 6"):
        frontier.Checkpoints(ref, tok, ["w1"], at=[6], last=5, max_new_tokens=3)
