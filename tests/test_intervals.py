"""Win-rate intervals: known answers, nominal coverage, pairing, matched-KL interpolation."""
import pytest
import torch

from pluralign import intervals


def test_outcomes_count_a_tie_as_half_and_strict_on_request():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 1.0])
    assert intervals.outcomes(a, b).tolist() == [0.0, 0.5, 1.0]
    assert intervals.outcomes(a, b, ties=0.0).tolist() == [0.0, 0.0, 1.0]
    # P(A > B) + P(B > A) = 1 with ties at 1/2
    assert (intervals.outcomes(a, b) + intervals.outcomes(b, a)).tolist() == [1.0, 1.0, 1.0]


def _coverage(S, N, seed_sd, prompt_sd, trials=300, p=0.5):
    """Share of seeded draws whose 95% interval covers the true mean p, for outcome tables with a
    seed effect and a prompt effect (probit-free: probabilities clamped into [0, 1])."""
    covered = 0
    for t in range(trials):
        g = torch.Generator().manual_seed(t)
        prob = (p + seed_sd * torch.randn(S, 1, generator=g, dtype=torch.float64)
                + prompt_sd * torch.randn(1, N, generator=g, dtype=torch.float64)).clamp(0, 1)
        y = torch.bernoulli(prob, generator=g)
        iv = intervals.interval(y, n_boot=400, seed=t)
        covered += iv["lo"] <= p <= iv["hi"]
    return covered / trials


def test_fair_coin_interval_covers_half_at_the_nominal_rate():
    # pure noise: the plain crossed bootstrap would cover ~99.9%; the corrected one 95-98% (the t
    # widening for 5 seeds is a little generous when there is no seed effect at all)
    cov = _coverage(S=5, N=60, seed_sd=0.0, prompt_sd=0.0)
    assert 0.93 <= cov <= 0.995, cov
    iv = intervals.interval(torch.bernoulli(torch.full((5, 60), 0.5, dtype=torch.float64),
                                            generator=torch.Generator().manual_seed(0)), n_boot=400)
    plain = 1.96 * (0.25 / 300) ** 0.5  # the binomial half-width for 300 independent coin flips
    assert plain < (iv["hi"] - iv["lo"]) / 2 < 1.6 * plain


def test_coverage_with_seed_and_prompt_effects():
    # the true mean of clamped probabilities is ~p when the effects are small and symmetric
    cov = _coverage(S=5, N=60, seed_sd=0.08, prompt_sd=0.15)
    assert 0.92 <= cov <= 0.99, cov
    assert 0.92 <= _coverage(S=3, N=60, seed_sd=0.1, prompt_sd=0.0) <= 0.995


def test_crossed_variance_matches_the_sampling_variance():
    S, N, sd_s, sd_p = 4, 50, 0.1, 0.2
    means, estimates = [], []
    for t in range(400):
        g = torch.Generator().manual_seed(10_000 + t)
        y = (sd_s * torch.randn(S, 1, generator=g, dtype=torch.float64)
             + sd_p * torch.randn(1, N, generator=g, dtype=torch.float64)
             + torch.randn(S, N, generator=g, dtype=torch.float64))
        means.append(float(y.mean()))
        estimates.append(intervals.crossed_variance(y))
    true = sd_s ** 2 / S + sd_p ** 2 / N + 1 / (S * N)
    assert torch.tensor(means).var().item() == pytest.approx(true, rel=0.2)
    assert sum(estimates) / len(estimates) == pytest.approx(true, rel=0.1)


def test_a_sure_win_has_a_degenerate_interval_and_a_clear_loss_excludes_half():
    iv = intervals.win_interval(torch.ones(3, 20), torch.zeros(20))
    assert (iv["mean"], iv["lo"], iv["hi"]) == (1.0, 1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    y = torch.bernoulli(torch.full((5, 200), 0.3, dtype=torch.float64), generator=g)
    iv = intervals.interval(y)
    assert iv["hi"] < 0.5 and iv["lo"] < iv["mean"] < iv["hi"] and iv["seeds"] == 5 and iv["prompts"] == 200


def test_paired_difference_is_narrower_than_unpaired_when_prompts_dominate():
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 300, generator=g, dtype=torch.float64) * 2  # shared prompt difficulty
    a = prompt + 0.1 + 0.3 * torch.randn(4, 300, generator=g, dtype=torch.float64)
    b = prompt + 0.3 * torch.randn(4, 300, generator=g, dtype=torch.float64)
    paired = intervals.difference_interval(a, b)
    assert paired["lo"] > 0  # the 0.1 shift is found once the shared difficulty cancels
    unpaired_half_width = 1.96 * (intervals.crossed_variance(a) + intervals.crossed_variance(b)) ** 0.5
    assert paired["hi"] - paired["lo"] < unpaired_half_width


def test_intervals_are_deterministic_given_the_seed():
    y = torch.bernoulli(torch.full((3, 40), 0.6, dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    assert intervals.interval(y, seed=7) == intervals.interval(y, seed=7)


@pytest.mark.parametrize("shape", [(1, 50), (50,)])
def test_fewer_than_two_seeds_is_refused(shape):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        intervals.interval(torch.zeros(shape))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_boot"):
        intervals.interval(torch.zeros(2, 5), n_boot=10)
    with pytest.raises(ValueError, match="one shape"):
        intervals.difference_interval(torch.zeros(2, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="nominal|align.seeds"):
        intervals.check_seeds(1, "align.seeds")


def test_at_kl_interpolates_between_the_bracketing_checkpoints():
    kls = torch.tensor([0.0, 2.0, 4.0])
    y = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert intervals.at_kl(kls, y, 1.0).tolist() == [0.75, 0.25]
    assert intervals.at_kl(kls, y, 3.0).tolist() == [0.5, 0.5]
    assert intervals.at_kl(kls, y, 0.0).tolist() == [0.5, 0.5]
    assert intervals.at_kl(kls, y, 4.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="beyond"):
        intervals.at_kl(kls, y, 5.0)
