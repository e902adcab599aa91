import pandas as pd
import pytest
import torch

from pluralign import compare


def test_win_rate_counts_ties_half_and_is_antisymmetric():
    a, b = torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 2.0, 4.0, 0.0])
    assert compare.win_rate(a, b) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert compare.win_rate(a, b) + compare.win_rate(b, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one shape"):
        compare.win_rate(a, b[:3])


def test_win_matrix_pairs_seeds_and_pools_by_share():
    base = [torch.tensor([0.0, 0.0])]
    good = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])]  # seed 1 wins one prompt of two
    W = compare.win_matrix({"base": base, "good": good})
    assert W.loc["good", "base"] == pytest.approx(0.75) and W.loc["base", "good"] == pytest.approx(0.25)
    assert (W.values.diagonal() == 0.5).all()
    V = pd.DataFrame([[0.5, 0.0], [1.0, 0.5]], index=W.index, columns=W.columns)
    P = compare.pooled_matrix({"maj": W, "min": V}, {"maj": 0.8, "min": 0.2})
    assert P.loc["good", "base"] == pytest.approx(0.8 * 0.75 + 0.2 * 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        compare.pooled_matrix({"maj": W, "min": V}, {"maj": 0.8, "min": 0.8})


def test_favourite_is_the_best_average_opponent():
    W = pd.DataFrame([[0.5, 0.9, 0.2], [0.1, 0.5, 0.6], [0.8, 0.4, 0.5]], index=list("abc"), columns=list("abc"))
    name, mean = compare.favourite(W)
    assert name == "c" and mean["c"] == pytest.approx(0.6)
    assert compare.favourite(W, among=["a", "b"])[0] == "a"
