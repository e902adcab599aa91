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
