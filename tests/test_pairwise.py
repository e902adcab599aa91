"""Pairwise preference models on tiny local models: antisymmetry holds exactly, the hand-written
maximum-likelihood fit learns a preference, BT preferences are σ(margin), save/load round-trips."""
import random

import pytest
import torch

from pluralign import corpus, lm
from pluralign import reward_models as rm
from pluralign.pairwise import (BTPreference, PairwisePreferenceModel, pair_text, preference_accuracy_by_group,
                                train_pairwise)
from pluralign.preferences import PreferencePairs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base")
    tok = lm.build_word_tokenizer(corpus.vocabulary())
    lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), lm.load_tokenizer(str(path))


def word_pairs(n, seed, users=4):
    """Every user prefers the response saying 'great' to the one saying 'awful'; group = user % 2."""
    rng = random.Random(seed)
    prompt, chosen, rejected = [], [], []
    for _ in range(n):
        noun = rng.choice(corpus.NOUNS)
        prompt.append(rng.choice(["the movie", "i watched it", "what a"]))
        chosen.append(f" the {noun} was great .")
        rejected.append(f" the {rng.choice(corpus.NOUNS)} was awful .")
    user = torch.arange(n) % users
    return PreferencePairs(prompt, chosen, rejected, user, users, torch.arange(users) % 2)


def test_pair_text_uses_eos_as_separator(base):
    _, tok = base
    text = pair_text(tok, "the movie", " was good .", " was bad .")
    assert text == "the movie was good .<eos> was bad .<eos>"
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


def test_antisymmetry_is_exact(base):
    path, tok = base
    pref = PairwisePreferenceModel.from_base(path, tok, seed=3)
    pairs = word_pairs(24, seed=1)
    x, a, b = pairs.prompt, pairs.chosen, pairs.rejected
    p_ab, p_ba = pref(x, a, b), pref(x, b, a)
    assert p_ab.shape == (24,)
    assert torch.equal(p_ab + p_ba, torch.ones(24, dtype=p_ab.dtype))
    assert torch.equal(pref(x, a, b, batch_size=5) + pref(x, b, a, batch_size=5), torch.ones(24, dtype=p_ab.dtype))
    assert torch.equal(pref(x, a, a), torch.full((24,), 0.5, dtype=p_ab.dtype))
    assert not torch.allclose(p_ab, torch.full_like(p_ab, 0.5))  # a random head is not indifferent
    # the differentiable log-odds agree with the probabilities
    torch.testing.assert_close(torch.sigmoid(pref.logit(x, a, b).detach()), p_ab, atol=1e-6, rtol=0)


def test_training_learns_the_preference(base):
    path, tok = base
    pref = PairwisePreferenceModel.from_base(path, tok, seed=0)
    train, test = word_pairs(256, seed=0), word_pairs(128, seed=1)
    assert preference_accuracy_by_group(pref, test)[0] < 0.8  # not solved before training
    losses = train_pairwise(pref, tok, train, epochs=3, lr=3e-3, batch_size=16, seed=0, progress=False)
    assert len(losses) == 48 and sum(losses[-8:]) < sum(losses[:8])
    assert min(preference_accuracy_by_group(pref, test)) > 0.8
    # seeded: two fresh fits give the same losses
    def fit():
        fresh = PairwisePreferenceModel.from_base(path, tok, seed=0)
        return train_pairwise(fresh, tok, train.subset(range(32)), epochs=1, lr=3e-3, batch_size=16, seed=0,
                              progress=False)

    assert fit() == fit()


def test_bt_preference_is_sigmoid_of_margin(base):
    path, tok = base
    reward = rm.load_reward_model(path, tok, seed=1)
    pairs = word_pairs(10, seed=2)
    p = BTPreference(reward, tok)(pairs.prompt, pairs.chosen, pairs.rejected)
    margin = rm.score(reward, tok, pairs.prompt, pairs.chosen) - rm.score(reward, tok, pairs.prompt, pairs.rejected)
    torch.testing.assert_close(p, torch.sigmoid(margin))
    q = BTPreference(reward, tok)(pairs.prompt, pairs.rejected, pairs.chosen)
    assert torch.equal(p + q, torch.ones_like(p))


def test_save_load_round_trip(base, tmp_path):
    path, tok = base
    pref = PairwisePreferenceModel.from_base(path, tok, seed=5)
    pairs = word_pairs(8, seed=3)
    pref.save_pretrained(tmp_path / "pref")
    back = PairwisePreferenceModel.from_pretrained(tmp_path / "pref")
    args = (pairs.prompt, pairs.chosen, pairs.rejected)
    assert torch.equal(pref(*args), back(*args))


class Fixed:
    """A preference with known answers: P(a ≻ b) read from a table keyed by a."""

    def __init__(self, table):
        self.table = table

    def __call__(self, prompts, a, b):
        return torch.tensor([self.table[x] for x in a])


def test_accuracy_by_group_hand_made():
    # users 0, 1 in group 0; user 2 in group 1
    pairs = PreferencePairs(["p"] * 5, ["w", "w", "l", "w", "l"], ["x"] * 5, torch.tensor([0, 1, 0, 2, 2]), 3,
                            torch.tensor([0, 0, 1]))
    acc = preference_accuracy_by_group(Fixed({"w": 0.9, "l": 0.2}), pairs)
    assert acc == pytest.approx([2 / 3, 1 / 2])


def test_bad_input_is_refused(base):
    path, tok = base
    pref = PairwisePreferenceModel.from_base(path, tok)
    with pytest.raises(ValueError, match="2 prompts, 1 responses a and 2 responses b"):
        pref(["x", "y"], [" a"], [" b", " c"])
    one_group = PreferencePairs(["p"] * 2, [" a"] * 2, [" b"] * 2, torch.tensor([0, 1]), 2, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"at least two groups; these hold group\(s\) \[1\] only"):
        preference_accuracy_by_group(pref, one_group)


def _fed_ids(pref, prompts, a, b):
    """The unpadded token ids PairwisePreferenceModel.f feeds its classifier."""
    seen = []
    hook = pref.model.register_forward_pre_hook(
        lambda m, args, kw: seen.extend(ids[mask.bool()].tolist() for ids, mask in
                                        zip(kw["input_ids"], kw["attention_mask"])), with_kwargs=True)
    try:
        pref.logit(prompts, a, b)
    finally:
        hook.remove()
    return seen


def test_pair_texts_get_the_tokenizer_s_special_tokens(base):
    """A Llama tokenizer puts <s> first, as the model saw in pretraining and as reward models read it;
    the cpu profile's word tokenizer adds nothing, so the GPT-2 stages' ids are unchanged."""
    import tiny
    from transformers import LlamaConfig, LlamaForSequenceClassification

    llama_tok = tiny.tiny_llama_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(llama_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=llama_tok.pad_token_id)
    pref = PairwisePreferenceModel(LlamaForSequenceClassification(config).float(), llama_tok)
    x, a, b = ["what a", "the movie"], [" good .", " was fine ."], [" bad .", " was awful ."]
    fed = _fed_ids(pref, x, a, b)
    texts = [pair_text(llama_tok, *t) for t in zip(x, a, b)] + [pair_text(llama_tok, *t) for t in zip(x, b, a)]
    assert fed == llama_tok(texts)["input_ids"]
    assert all(ids[0] == llama_tok.bos_token_id and ids[-1] == llama_tok.eos_token_id for ids in fed)

    path, tok = base
    gpt2 = PairwisePreferenceModel.from_base(path, tok, seed=0)
    texts = [pair_text(tok, *t) for t in zip(x, a, b)] + [pair_text(tok, *t) for t in zip(x, b, a)]
    assert _fed_ids(gpt2, x, a, b) == tok(texts, add_special_tokens=False)["input_ids"]


def test_from_base_docstring_and_pad_check(base, tmp_path):
    path, tok = base
    assert "new, seeded" not in PairwisePreferenceModel.from_base.__doc__
    same = lm.load_tokenizer(path)
    same.pad_token = same.eos_token
    with pytest.raises(ValueError, match=r"pad token .*must differ from eos") as err:
        PairwisePreferenceModel(rm.load_reward_model(path, same), same)
    assert "add_special_tokens" in str(err.value) and "to eos" not in str(err.value)


def test_preferences_of_ragged_pairs_equal_each_pair_scored_alone(base):
    """__call__ pads each batch of (token count, text)-sorted texts and runs it in length-sorted
    chunks: every P(a ≻ b) equals the one computed from each pair text scored alone, unpadded."""
    path, tok = base
    pref = PairwisePreferenceModel.from_base(path, tok, seed=3)
    pairs = word_pairs(40, seed=2)
    a = [c + " and the cast was great" * (i % 4) for i, c in enumerate(pairs.chosen)]  # 4 different lengths
    x, b = pairs.prompt, pairs.rejected
    with torch.no_grad():
        alone = torch.stack([pref.model(**rm.encode(tok, [t], return_tensors="pt")).logits[0, 0]
                             for t in [pair_text(tok, *r) for r in zip(x, a, b)] + [pair_text(tok, *r) for r in zip(x, b, a)]])
    want = torch.sigmoid((alone[:40] - alone[40:]) / 2)
    for batch_size in (256, 7):
        torch.testing.assert_close(pref(x, a, b, batch_size=batch_size), want, atol=1e-5, rtol=0)
