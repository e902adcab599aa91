import pytest
import torch

from pluralign import simulate as sim


@pytest.mark.parametrize("shares", [[0.5, 0.6], [0.7, 0.3, -0.0], [1.2, -0.2], []])
def test_bad_shares_name_the_value(shares):
    with pytest.raises(ValueError, match="shares"):
        sim.check_shares(shares)


def test_group_sizes_follow_shares_and_keep_every_group():
    assert sim.group_sizes(100, [0.8, 0.15, 0.05]).tolist() == [80, 15, 5]
    assert sim.group_sizes(10, [0.98, 0.02]).tolist() == [9, 1]
    assert int(sim.group_sizes(37, [0.5, 0.3, 0.2]).sum()) == 37


def test_separation_controls_how_different_groups_are(gen):
    same = sim.group_rewards(3, 5, 0.0, 2.0, gen)
    assert torch.allclose(same, same[0].expand_as(same))
    apart = sim.group_rewards(3, 5, 1.0, 2.0, gen)
    assert torch.allclose(apart.norm(dim=1), torch.full((3,), 2.0))
    assert not torch.allclose(apart[0], apart[1])
    with pytest.raises(ValueError, match="separation"):
        sim.group_rewards(2, 3, 1.5, 1.0, gen)


def test_simulated_labels_follow_the_group_reward(gen):
    psi = sim.random_features(10, 3, gen)
    theta = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0]])
    data = sim.simulate_comparisons(psi, theta, [0.5, 0.5], 40, 200, gen)
    r = theta @ psi.T
    g = data.group[data.user]
    agree = (r[g, data.chosen] > r[g, data.rejected]).double().mean()
    assert agree > 0.75  # BT noise, but mostly the better item wins
    assert bool((data.chosen != data.rejected).all())
    with pytest.raises(ValueError, match="per_user"):
        sim.simulate_comparisons(psi, theta, [0.5, 0.5], 4, 0, gen)
