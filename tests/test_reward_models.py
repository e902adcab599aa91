"""Neural reward models on tiny local models: TRL RewardTrainer fits, and EM with neural M-steps
separates two clearly different synthetic groups of users."""
import random

import pytest
import torch

from pluralign import corpus, em, lm
from pluralign import reward_models as rm
from pluralign.preferences import PreferencePairs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base")
    tok = lm.build_word_tokenizer(corpus.vocabulary())
    lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), lm.load_tokenizer(str(path))


def two_group_pairs(n_users=12, per_user=24, seed=0):
    """Group 0 always prefers the response with 'great', group 1 the one with 'awful'."""
    rng = random.Random(seed)
    prompt, chosen, rejected, user = [], [], [], []
    group = torch.tensor([u % 2 for u in range(n_users)])
    for u in range(n_users):
        for _ in range(per_user):
            noun = rng.choice(corpus.NOUNS)
            good, bad = f" the {noun} was great .", f" the {noun} was awful ."
            prompt.append(rng.choice(["the movie", "i watched it", "what a"]))
            chosen.append(good if group[u] == 0 else bad)
            rejected.append(bad if group[u] == 0 else good)
            user.append(u)
    return PreferencePairs(prompt, chosen, rejected, torch.tensor(user), n_users, group)


def test_reward_models_load_with_the_fused_gelu_and_score_as_the_plain_one(base):
    from transformers import AutoModelForSequenceClassification
    from transformers.activations import GELUTanh, NewGELUActivation

    path, tok = base
    fused = rm.load_reward_model(path, tok, seed=3)
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert any(isinstance(m, GELUTanh) for m in fused.modules())
    torch.manual_seed(3)
    plain = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    plain.config.pad_token_id = tok.pad_token_id
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    prompts, responses = ["the movie", "what a"], [" the plot was great .", " awful ."]
    torch.testing.assert_close(rm.score(fused, tok, prompts, responses), rm.score(plain.eval(), tok, prompts, responses),
                               atol=1e-5, rtol=1e-5)


def test_length_sorted_scoring_returns_each_score_in_the_callers_order(base):
    path, tok = base
    model = rm.load_reward_model(path, tok, seed=4).eval()
    prompts = ["the movie", "what a", "i watched it", "the movie", "what a"]
    responses = [" the plot was great and the cast was great .", " awful .", " the plot .", " great", " the cast was awful ."]
    one_by_one = torch.cat([rm.score(model, tok, [p], [r], batch_size=1) for p, r in zip(prompts, responses)])
    batched = rm.score(model, tok, prompts, responses, batch_size=2)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    assert len(set(batched.tolist())) == len(responses)  # distinct scores: a mix-up of the order would show


def test_reward_trainer_learns_a_preference(base):
    path, tok = base
    pairs = two_group_pairs()
    majority = pairs.subset((pairs.group[pairs.user] == 0).nonzero().flatten())
    model = rm.load_reward_model(path, tok, seed=0)
    rm.train_reward_model(model, tok, majority, epochs=3, lr=3e-3, batch_size=16)
    assert float((rm.pair_margins(model, tok, majority) > 0).float().mean()) > 0.95
    acc = rm.accuracy_by_group(model, tok, pairs)
    assert acc[0] > 0.95 and acc[1] < 0.05  # the other group wants the opposite


def test_em_with_neural_m_steps_separates_two_groups(base):
    path, tok = base
    pairs = two_group_pairs()
    fit = em.mixture_em(lambda: rm.NeuralRewardMixture(path, tok, 2, epochs=2, lr=3e-3, batch_size=16, seed=0),
                        pairs, n_init=2, init="random", max_iter=4, seed=1)
    assert em.purity(fit.assignment, pairs.group) == 1.0
    # each cluster's model now ranks its own users' pairs correctly
    for k in range(2):
        mine = pairs.subset((fit.assignment[pairs.user] == k).nonzero().flatten())
        assert float((rm.pair_margins(fit.model.models[k], tok, mine) > 0).float().mean()) > 0.9


def test_neural_mixture_refuses_soft_assignments(base):
    path, tok = base
    mix = rm.NeuralRewardMixture(path, tok, 2)
    with pytest.raises(ValueError, match="hard assignments only"):
        mix.fit(two_group_pairs(n_users=2, per_user=2), torch.full((2, 2), 0.5))


# ---- tokenisation: what the reward model reads is what TRL's RewardTrainer trains it on ----------
def _tiny_classifier(tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForSequenceClassification(config).float().eval()


def _trl_ids(model, tok, pairs, tmp_path):
    """chosen/rejected ids as TRL 1.16's RewardTrainer tokenises a raw prompt/chosen/rejected dataset."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_length=None)
    raw = Dataset.from_dict({"prompt": pairs.prompt, "chosen": pairs.chosen, "rejected": pairs.rejected})
    ds = RewardTrainer(model=model, args=args, train_dataset=raw, processing_class=tok).train_dataset
    return ds["chosen_ids"], ds["rejected_ids"]


def _scored_ids(model, tok, prompts, responses):
    """The unpadded token ids rm.score feeds the model, put back in the callers' order (score
    batches texts by length)."""
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: seen.extend(ids[mask.bool()].tolist() for ids, mask in
                                     zip(kw["input_ids"], kw["attention_mask"])), with_kwargs=True)
    try:
        rm.score(model, tok, prompts, responses, batch_size=3)
    finally:
        hook.remove()
    texts = [rm.reward_text(tok, p, r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # the order rm.score fed them in
    back = [None] * len(seen)
    for position, i in enumerate(order):
        back[i] = seen[position]
    return back


def _small_pairs():
    pairs = two_group_pairs(n_users=2, per_user=3)
    pairs.prompt[0] = "what a"  # the prompts have different lengths: padding is exercised
    return pairs


@pytest.mark.parametrize("kind", ["llama", "gpt2", "word_bos"])
def test_scored_and_trained_ids_equal_trl_reward_trainer_tokenisation(kind, tmp_path):
    """llama: a Llama tokenizer; gpt2: GPT-2's; word_bos: the Tulu2 stand-in's word-level tokenizer,
    which puts <bos> first as Llama's does (lm.build_word_tokenizer(..., add_bos=True))."""
    import tiny

    tok = {"llama": tiny.tiny_llama_tokenizer, "gpt2": tiny.tiny_gpt2_tokenizer,
           "word_bos": lambda: lm.build_word_tokenizer(corpus.vocabulary(), add_bos=True)}[kind]()
    model, pairs = _tiny_classifier(tok), _small_pairs()
    trl_chosen, trl_rejected = _trl_ids(model, tok, pairs, tmp_path)
    ours = rm._processed(tok, pairs)
    assert ours["chosen_ids"] == trl_chosen and ours["rejected_ids"] == trl_rejected
    assert _scored_ids(model, tok, pairs.prompt, pairs.chosen) == trl_chosen
    assert all(ids[-1] == tok.eos_token_id for ids in trl_chosen)
    if kind != "gpt2":  # Llama's tokenizer adds <s>: the reward model reads BOS first, as in training
        assert all(ids[0] == tok.bos_token_id for ids in trl_chosen)
    else:  # GPT-2's adds nothing: the ids are what they were before (no BOS, text + eos only)
        old = tok([rm.reward_text(tok, p, r) for p, r in zip(pairs.prompt, pairs.chosen)],
                  add_special_tokens=False)["input_ids"]
        assert trl_chosen == old and all(ids[0] != tok.eos_token_id for ids in trl_chosen)


def test_word_tokenizer_ids_are_unchanged(base):
    """The cpu profile's word-level tokenizer adds no special tokens: its reward ids (and so the
    GPT-2 stages' numbers) are those of add_special_tokens=False."""
    path, tok = base
    model, pairs = rm.load_reward_model(path, tok, seed=0).eval(), _small_pairs()
    texts = [rm.reward_text(tok, p, r) for p, r in zip(pairs.prompt, pairs.chosen)]
    old = tok(texts, add_special_tokens=False)["input_ids"]
    assert rm._processed(tok, pairs)["chosen_ids"] == old
    assert _scored_ids(model, tok, pairs.prompt, pairs.chosen) == old


def test_seed_only_seeds_a_new_head(base, tmp_path):
    """load_reward_model: a base LM gets a new head drawn under ``seed``; a saved reward model keeps
    its trained head whatever the seed (the docstring says so)."""
    path, tok = base
    pairs = _small_pairs()
    a, b = rm.load_reward_model(path, tok, seed=0), rm.load_reward_model(path, tok, seed=1)
    assert not torch.equal(rm.score(a, tok, pairs.prompt, pairs.chosen), rm.score(b, tok, pairs.prompt, pairs.chosen))
    a.save_pretrained(tmp_path / "rm")
    trained = rm.score(a.eval(), tok, pairs.prompt, pairs.chosen)
    for seed in (0, 7):
        back = rm.load_reward_model(str(tmp_path / "rm"), tok, seed=seed).eval()
        assert torch.equal(rm.score(back, tok, pairs.prompt, pairs.chosen), trained)
    assert "new, seeded head" not in rm.load_reward_model.__doc__


def test_scoring_refuses_pad_equal_to_eos(base):
    path, tok = base
    model = rm.load_reward_model(path, tok, seed=0)
    same = lm.load_tokenizer(path)
    same.pad_token = same.eos_token
    with pytest.raises(ValueError, match=r"pad token .*must differ from eos") as err:
        rm.score(model, same, ["the movie"], [" was great ."])
    assert "add_special_tokens" in str(err.value) and "to eos" not in str(err.value)


def _ragged_batch(tok, n=40, seed=0):
    """A right-padded batch of n texts of very different lengths, as TRL's preference collator pads it."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(corpus.NOUNS) for _ in range(rng.randint(1, 20))) for _ in range(n)]
    return rm.right_padded(rm.token_ids(tok, texts), tok.pad_token_id)


def test_length_sorted_logits_equal_one_padded_forward_with_their_gradients(base):
    path, tok = base
    model = rm.load_reward_model(path, tok, seed=5).eval()  # no dropout: both passes compute the same function
    enc = _ragged_batch(tok)
    assert enc["attention_mask"].sum() < 0.7 * enc["attention_mask"].numel()  # the padding is real
    one = model(**enc).logits
    (g_one,) = torch.autograd.grad(one.square().sum(), model.score.weight)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        chunked = rm.length_sorted_logits(model, enc["input_ids"], enc["attention_mask"], rows=16)
    finally:
        hook.remove()
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), model.score.weight)
    torch.testing.assert_close(chunked, one, atol=1e-5, rtol=1e-5)  # every row in the batch's own order
    torch.testing.assert_close(g_chunked, g_one, atol=1e-4, rtol=1e-4)
    assert [s[0] for s in calls] == [16, 16, 8]
    assert sum(r * w for r, w in calls) < 0.8 * enc["input_ids"].numel()  # fewer tokens computed
    assert calls[0][1] < calls[-1][1] == enc["input_ids"].shape[1]  # the short chunk is cut to its longest row


def test_length_sorted_logits_pass_a_left_padded_or_small_batch_through_as_given(base):
    path, tok = base
    model = rm.load_reward_model(path, tok, seed=5).eval()
    enc = _ragged_batch(tok, n=8)
    left_ids, left_mask = enc["input_ids"].flip(1), enc["attention_mask"].flip(1)
    with torch.no_grad():
        assert torch.equal(rm.length_sorted_logits(model, left_ids, left_mask, rows=2),
                           model(input_ids=left_ids, attention_mask=left_mask).logits)
        assert torch.equal(rm.length_sorted_logits(model, enc["input_ids"], enc["attention_mask"], rows=8),
                           model(**enc).logits)


def test_length_sorted_reward_training_takes_trls_one_forward_gradients(base, monkeypatch):
    """train_reward_model (chunks of CHUNK_ROWS rows) against the same RewardTrainer run with every
    batch in one forward, as TRL pads it: every step's gradients equal up to float rounding.  The
    optimizer's step is a no-op that records the gradients, so both runs see the same weights at
    every step (comparing weights after Adam steps would compare sign(g) where g is ~0)."""
    path, tok = base
    pairs = two_group_pairs(n_users=4, per_user=24)
    for i in range(0, pairs.n_pairs, 3):  # ragged lengths within each batch
        pairs.chosen[i] = pairs.chosen[i] + " the plot was great and the cast was great and the music was great ."
    steps = {}

    def record(opt, *a, **kw):
        steps[rows].append([p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None])

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    for rows in (8, 10_000):
        steps[rows] = []
        monkeypatch.setattr(rm, "CHUNK_ROWS", rows)
        model = rm.load_reward_model(path, tok, seed=0)
        calls = []
        hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(len(kw["input_ids"])), with_kwargs=True)
        rm.train_reward_model(model, tok, pairs, epochs=1, lr=3e-3, batch_size=16)
        hook.remove()
        assert max(calls) == (8 if rows == 8 else 32)
    assert len(steps[8]) == len(steps[10_000]) == pairs.n_pairs // 16
    for chunked, one in zip(steps[8], steps[10_000]):
        assert len(chunked) == len(one) > 0
        for g_chunked, g_one in zip(chunked, one):
            torch.testing.assert_close(g_chunked, g_one, atol=1e-5, rtol=1e-4)
        assert any(g.abs().max() > 1e-3 for g in one)  # real gradients, not zeros on both sides


def test_token_ids_are_encode_s_ids_and_follow_a_grown_vocabulary(base):
    path, _ = base
    tok = lm.load_tokenizer(path)
    texts = ["the movie was great", "what a zorblax", "the movie was great"]
    before = rm.token_ids(tok, texts)
    assert before == rm.encode(tok, texts)["input_ids"]
    assert rm.token_ids(tok, texts) == before  # from the memo
    tok.add_tokens(["zorblax"])
    after = rm.token_ids(tok, texts)
    assert after == rm.encode(tok, texts)["input_ids"] and after != before
