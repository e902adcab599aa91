import pytest
import torch

from pluralign import bradley_terry as bt
from pluralign import simulate as sim
from pluralign.tabular import fit_bt_from_preferences, preference_matrix


def test_log_likelihood_is_log_sigmoid_of_difference():
    rc, rr = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 3.0, 0.0])
    expected = torch.log(1 / (1 + torch.exp(-(rc - rr))))
    assert torch.allclose(bt.bt_log_likelihood(rc, rr), expected)
    assert torch.allclose(bt.bt_probability(rc, rr) + bt.bt_probability(rr, rc), torch.ones(3))
    # stable far in the tails
    assert torch.isfinite(bt.bt_log_likelihood(torch.tensor(-800.0), torch.tensor(800.0)))


def test_linear_fit_recovers_reward_from_many_comparisons(gen):
    psi = sim.random_features(30, 4, gen)
    theta = torch.tensor([[1.5, -1.0, 0.5, 2.0]])
    data = sim.simulate_comparisons(psi, theta, [1.0], 200, 200, gen)
    model = bt.LinearRewardMixture(1, 4, l2=1e-6)
    model.fit(data, torch.ones(data.n_users, 1))
    assert torch.allclose(model.theta[0], theta[0], atol=0.12)


def test_newton_solution_is_stationary_and_batched_fits_are_independent(gen):
    X = torch.randn(500, 3, generator=gen)
    w = torch.rand(2, 500, generator=gen)
    th = bt.fit_bt_linear(X, w, l2=0.1)
    for k in range(2):
        t = th[k].clone().requires_grad_(True)
        loss = -(w[k] * torch.nn.functional.logsigmoid(X @ t)).sum() + 0.05 * (t * t).sum()
        (g,) = torch.autograd.grad(loss, t)
        assert g.abs().max() < 1e-8
        alone = bt.fit_bt_linear(X, w[k : k + 1], l2=0.1)
        assert torch.allclose(alone[0], th[k], atol=1e-9)


def test_population_fit_recovers_tabular_bt_reward():
    r = torch.tensor([0.0, 1.0, -0.5, 2.0, 0.3])
    r_hat = fit_bt_from_preferences(preference_matrix(r))
    assert torch.allclose(r_hat, r - r.mean(), atol=1e-5)


def test_comparisons_reject_users_without_comparisons():
    with pytest.raises(ValueError, match="user 2 has no comparisons"):
        bt.Comparisons(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0, 1]), torch.eye(2), n_users=3)


def test_comparisons_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        bt.Comparisons(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0, 1]), torch.eye(2), n_users=2)


def test_bad_fit_inputs():
    with pytest.raises(ValueError, match="l2"):
        bt.fit_bt_linear(torch.zeros(3, 2), torch.ones(1, 3), l2=-1)
    with pytest.raises(ValueError, match="K must be"):
        bt.LinearRewardMixture(0, 2)


def test_mixture_feature_cache_never_mixes_up_fresh_datasets():
    """Regression: the pair-feature cache was keyed on id(data); CPython reuses the ids of freed
    objects, so a fresh dataset could be scored with the previous one's features."""
    model = bt.LinearRewardMixture(1, 3)
    model.theta = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    for i in range(50):
        g = torch.Generator().manual_seed(i)
        n = 20  # same shape every time, so a stale cache would not fail on shapes
        data = bt.Comparisons(torch.randint(0, 5, (n,), generator=g), torch.randint(0, 5, (n,), generator=g),
                              torch.zeros(n, dtype=torch.long), torch.randn(5, 3, generator=g), 1)
        expected = torch.nn.functional.logsigmoid(model.theta @ data.pair_features().to(torch.float64).T)
        assert torch.equal(model.pair_log_likelihood(data), expected), f"dataset {i} got stale features"
        del data  # frees the object, so the next one may get its id


def test_mixture_feature_cache_sees_in_place_edits():
    model = bt.LinearRewardMixture(1, 2)
    model.theta = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    data = bt.Comparisons(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0, 0]), torch.eye(2), 1)
    before = model.pair_log_likelihood(data).clone()
    data.features.mul_(3.0)
    after = model.pair_log_likelihood(data)
    assert not torch.equal(before, after)
    assert torch.equal(after, torch.nn.functional.logsigmoid(model.theta @ data.pair_features().double().T))
