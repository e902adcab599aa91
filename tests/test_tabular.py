import math

import pytest
import torch

from pluralign import experiments as ex
from pluralign import tabular as tb


@pytest.fixture
def world():
    features, mu = ex.linear_world(10, seed=1)
    return features, mu


def test_rlhf_policy_is_the_kl_regularised_optimum(gen):
    r, mu, beta = torch.randn(7, generator=gen), torch.softmax(torch.randn(7, generator=gen), 0), 0.3
    pi = tb.rlhf_policy(r, mu, beta)
    best = float(tb.group_objective(pi, r[None], mu, beta))
    assert math.isclose(best, float(tb.optimal_objective(r[None], mu, beta)), rel_tol=1e-10)
    for _ in range(20):  # no random policy does better
        other = torch.softmax(torch.randn(7, generator=gen), 0)
        assert float(tb.group_objective(other, r[None], mu, beta)) <= best + 1e-12


def test_alignment_gap_is_nonnegative_and_zero_at_own_optimum(gen):
    r, mu = torch.randn(2, 6, generator=gen), torch.full((6,), 1 / 6)
    gap_own = tb.alignment_gap(tb.rlhf_policy(r[0], mu, 0.5), r, mu, 0.5)
    assert abs(float(gap_own[0])) < 1e-12 and float(gap_own[1]) > 0
    assert bool((tb.alignment_gap(mu, r, mu, 0.5) >= 0).all())


def test_pooled_reward_of_identical_groups_is_their_reward(world):
    features, mu = world
    r = ex.two_group_rewards(features, mu, 0.0, 2.0)
    r_hat = tb.pooled_bt_reward(r, [0.7, 0.3], features)
    assert torch.allclose(r_hat - r_hat.mean(), r[0] - r[0].mean(), atol=1e-4)
    assert tb.diversity(r)[0] < 1e-12


def test_pooled_reward_depends_on_which_pairs_are_compared():
    # the NLHF paper's point: a non-BT pooled preference gives a BT fit that moves with ρ
    r = torch.tensor([[2.0, 0.0, -1.0], [-2.0, 1.0, 0.0]])
    uniform = tb.pooled_bt_reward(r, [0.5, 0.5])
    rho = torch.tensor([[0, 5.0, 1.0], [5.0, 0, 1.0], [1.0, 1.0, 0]])
    skewed = tb.pooled_bt_reward(r, [0.5, 0.5], pair_weights=rho)
    assert (uniform - skewed).abs().max() > 1e-2


def test_maxmin_exact_matches_dual_and_beats_every_mixture(world, gen):
    features, mu = world
    r = ex.two_group_rewards(features, mu, 120.0, 2.0, n_groups=3)
    pi, w, duality_gap = tb.maxmin_exact(r, mu, 0.5)
    assert abs(duality_gap) < 1e-7 and abs(float(w.sum()) - 1) < 1e-9
    value = float(tb.group_objective(pi, r, mu, 0.5).min())
    for _ in range(30):  # every scalarised RLHF policy is feasible, none has a better worst group
        v = torch.distributions.Dirichlet(torch.ones(3)).sample()
        other = tb.rlhf_policy(v @ r, mu, 0.5)
        assert float(tb.group_objective(other, r, mu, 0.5).min()) <= value + 1e-9


def test_iterative_maxmin_converges_to_exact(world):
    features, mu = world
    r = ex.two_group_rewards(features, mu, 150.0, 2.0)
    pi, _, _ = tb.maxmin_exact(r, mu, 0.5)
    exact = float(tb.group_objective(pi, r, mu, 0.5).min())
    last, avg, groups, obj_last, obj_avg = tb.maxmin_iterative(r, mu, 0.5, 1500)
    # a subgradient method on a non-smooth min: the average iterate converges, the last one
    # keeps a small oscillation that shrinks with the step size
    assert exact - float(obj_avg[-1]) < 5e-3 and exact - float(obj_last[-1]) < 3e-2
    assert exact - float(obj_avg[-1]) < 0.2 * (exact - float(obj_avg[99]))
    assert float((exact - obj_last).min()) >= -1e-9  # never above the optimum
    assert set(groups.tolist()) == {0, 1}  # both groups get picked once they balance
    assert tb.maxmin_group(mu, r) == int((r @ mu).argmin())


def test_impossibility_gap_grows_with_diversity_and_shrinking_minority(world):
    features, mu = world
    angles = [0, 30, 60, 90, 120, 150, 180]
    sweep = ex.impossibility_sweep(features, mu, 0.5, 2.0, [0.5, 0.2, 0.05], angles)
    for eta, d in sweep.groupby("minority_share"):
        d = d.sort_values("angle_deg")
        assert bool((d.epsilon.diff().dropna() > 0).all())  # angle ↔ diversity
        assert bool((d.rlhf_gap_minority.diff().dropna() > 0).all()), eta  # gap grows with ε
    far = sweep[sweep.angle_deg == 180].sort_values("minority_share")
    assert bool((far.rlhf_gap_minority.diff().dropna() < 0).all())  # smaller minority → larger gap
    assert bool((sweep.rlhf_gap_minority >= sweep.bound - 1e-12).all())  # Theorem-1 floor holds
    assert bool((sweep.maxmin_worst_objective >= sweep.rlhf_worst_objective - 1e-9).all())
    opposed = sweep[(sweep.angle_deg >= 90)]
    assert bool((opposed.maxmin_gap_minority <= opposed.rlhf_gap_minority + 1e-9).all())
    small = opposed[opposed.minority_share < 0.5]  # a real minority is strictly better off
    assert bool((small.maxmin_gap_minority < small.rlhf_gap_minority - 0.1).all())


def test_bound_is_linear_in_eps_and_one_minus_share(world):
    features, _ = world
    b = lambda e, s: tb.impossibility_bound(features, e, s, 0.5)
    assert math.isclose(b(0.4, 0.1), 2 * b(0.2, 0.1)) and math.isclose(b(0.4, 0.1) / b(0.4, 0.55), 0.9 / 0.45)


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf")])
def test_bad_beta_is_named(beta):
    with pytest.raises(ValueError, match="beta must be"):
        tb.rlhf_policy(torch.zeros(3), torch.full((3,), 1 / 3), beta)
