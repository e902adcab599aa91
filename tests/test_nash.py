import pytest
import torch

from pluralign import games, nash, tabular


def random_mu(n, gen):
    return torch.softmax(torch.randn(n, generator=gen), 0)


def test_dice_equilibrium_is_uniform_and_bt_is_flat():
    P = games.dice_preference()
    assert torch.allclose(P[0, 1], torch.tensor(5 / 9)) and torch.allclose(P[1, 2], torch.tensor(5 / 9))
    assert torch.allclose(P[2, 0], torch.tensor(5 / 9))
    assert torch.allclose(nash.nash_equilibrium(P), torch.full((3,), 1 / 3), atol=1e-9)
    mu = torch.full((3,), 1 / 3)
    assert torch.allclose(nash.regularised_nash(P, mu, 0.1), mu, atol=1e-9)
    assert tabular.fit_bt_from_preferences(P).abs().max() < 1e-9


@pytest.mark.parametrize("eps", [-0.6, -0.5, -0.3, -0.1, 0.0, 0.05, 0.2, 0.3])
def test_three_annotators_nash_matches_closed_form(eps):
    P = games.three_annotators(eps)
    assert torch.allclose(P[1, 0], torch.tensor(2 / 3 - eps / 2))
    assert torch.allclose(nash.nash_equilibrium(P), games.three_annotators_nash(eps), atol=1e-8)


def test_three_annotators_bt_reward_jumps_at_zero():
    top = lambda e: int(tabular.fit_bt_from_preferences(games.three_annotators(e)).argmax())
    assert top(0.01) == 0 and top(-0.01) == 1


def test_constrained_example_gives_50_over_99():
    P, R, V = games.constrained_example()
    pi_P = nash.nash_equilibrium(P, V)
    pi_R = V[(V @ R).argmax()]
    assert torch.allclose(pi_P, torch.tensor([0.0, 0.0, 1.0]), atol=1e-9)
    assert torch.allclose(pi_R, torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert abs(float(pi_P @ P @ pi_R) - 50 / 99) < 1e-12


def test_regularised_nash_is_unexploitable_fixed_point(gen):
    for P in (games.random_preference(8, gen), games.cyclic_preference(9)):
        mu = random_mu(P.shape[0], gen)
        star = nash.regularised_nash(P, mu, 0.1)
        assert abs(float(nash.exploitability(star, P, mu, 0.1))) < 1e-10
        fixed = torch.softmax(torch.log(mu) + P @ star / 0.1, 0)
        assert torch.allclose(fixed, star, atol=1e-8)


def test_exploitability_is_nonnegative(gen):
    P, mu = games.random_preference(6, gen), random_mu(6, gen)
    pis = torch.distributions.Dirichlet(torch.ones(6)).sample((50,))
    assert bool((nash.exploitability(pis, P, mu, 0.2) >= -1e-12).all())


@pytest.mark.parametrize("tau", [0.05, 0.3, 1.0])
def test_nash_md_kl_bound_holds_along_the_trajectory(gen, tau):
    P = games.random_preference(12, gen)
    mu = random_mu(12, gen)
    star = nash.regularised_nash(P, mu, tau)
    traj, _ = nash.run_dynamics("nash_md", P, mu, tau, 400)
    kl = tabular.kl(star.expand_as(traj), traj)
    t = torch.arange(401)
    assert bool((kl[1:] <= nash.kl_bound(tau, t[1:]) + 1e-12).all())
    assert float(kl[-1]) < 1e-4


def test_nash_md_step_is_the_papers_update(gen):
    P, mu, pi = games.random_preference(5, gen), random_mu(5, gen), random_mu(5, gen)
    eta, tau = 0.3, 0.5
    mix = pi ** (1 - eta * tau) * mu ** (eta * tau)
    mix = mix / mix.sum()
    expected = mix * torch.exp(eta * (P @ mix))
    assert torch.allclose(nash.nash_md_step(pi, mu, P, eta, tau), expected / expected.sum())
    assert torch.allclose(nash.geometric_mixture(pi, mu, 0.0), pi) and torch.allclose(nash.geometric_mixture(pi, mu, 1.0), mu)


def test_best_response_converges_to_reply_to_mu_and_self_play_cycles(gen):
    P, mu, tau = games.cyclic_preference(5), random_mu(5, gen), 0.2
    traj, _ = nash.run_dynamics("best_response", P, mu, tau, 300)
    reply = torch.softmax(torch.log(mu) + P @ mu / tau, 0)
    assert torch.allclose(traj[-1], reply, atol=1e-3)
    sp, avg = nash.run_dynamics("self_play", P, torch.full((5,), 0.2) + 0.01 * torch.arange(5) - 0.02, tau, 500, schedule=0.5)
    uniform = torch.full((5,), 0.2)
    assert float(tabular.kl(uniform, sp[-1])) > 0.05  # the last iterate does not settle
    assert float(tabular.kl(uniform, avg[-1])) < float(tabular.kl(uniform, sp[-1]))  # the average is closer


def test_condorcet_groups_pool_into_a_cycle():
    P = games.condorcet_preference()
    assert torch.allclose(P[0, 1], torch.tensor(2 / 3)) and torch.allclose(P[2, 0], torch.tensor(2 / 3))
    assert torch.allclose(nash.nash_equilibrium(P), torch.full((3,), 1 / 3), atol=1e-9)


def test_condorcet_users_rlhf_sees_nothing_at_equal_shares_and_maxmin_protects_the_worst():
    from pluralign import experiments as ex

    w = ex.condorcet_policies([1 / 3] * 3, scale=4.0, beta=0.5)
    P = w["P"]
    assert P[0, 1] > 0.5 and P[1, 2] > 0.5 and P[2, 0] > 0.5  # BT groups pooled: a cycle
    for pi in w["policies"].values():  # the BT fit is flat, MaxMin and Nash are symmetric
        assert torch.allclose(pi, torch.full((3,), 1 / 3, dtype=pi.dtype), atol=1e-6)
    d = ex.condorcet_sweep([0.6], scale=4.0, beta=0.5)
    worst = d.groupby("method").win_vs_mu.min()
    assert worst["maxmin"] > worst["nash"] > worst["rlhf"]  # egalitarian ≥ game-theoretic ≥ utilitarian
    best = d.groupby("method").win_vs_mu.max()
    assert best["rlhf"] > best["nash"] > 0.5  # the majority gets most from RLHF
    assert (d[d.method == "nash"].exploitability.abs() < 1e-6).all()
    assert bool(d.condorcet_winner.iloc[0])  # with a 60% group, y0 beats both others


def test_bad_inputs_are_named():
    P, mu = games.dice_preference(), torch.full((3,), 1 / 3)
    with pytest.raises(ValueError, match="tau must be"):
        nash.run_dynamics("nash_md", P, mu, 0.0, 5)
    with pytest.raises(ValueError, match="method must be"):
        nash.run_dynamics("fictitious", P, mu, 0.1, 5)
    with pytest.raises(ValueError, match="P \\+ Pᵀ = 1"):
        nash.check_preference(torch.ones(3, 3))
    with pytest.raises(ValueError, match="eta\\*tau"):
        nash.run_dynamics("omd", P, mu, 1.0, 5, schedule=2.0)
    for bad in (0.5, 0.34, -0.7):  # a share 1/3 - eps or 1/3 + eps/2 would be negative
        with pytest.raises(ValueError, match="eps must lie"):
            games.three_annotators(bad)


@pytest.mark.parametrize("eps", [-2 / 3, -0.5, 0.0, 1 / 3])
def test_three_annotators_accepts_every_eps_with_non_negative_shares(eps):
    P = games.three_annotators(eps)
    shares = torch.tensor([1 / 3 - eps, 1 / 3 + eps / 2, 1 / 3 + eps / 2])
    assert (shares >= -1e-12).all() and abs(float(shares.sum()) - 1) < 1e-12
    assert torch.allclose(P + P.T, torch.ones(3, 3, dtype=P.dtype))
