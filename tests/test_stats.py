import math

import pytest
import torch

from persona_interp.stats import flips, mean_ci, paired_difference, proportion_ci


def test_mean_ci_hand_computed():
    est = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5, sd = sqrt(5/3), t(0.975, 3) = 3.182446
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (est.value, est.n) == (2.5, 4)
    assert est.low == pytest.approx(2.5 - half) and est.high == pytest.approx(2.5 + half)
    assert mean_ci(torch.tensor([0.5])).low == 0.5


def test_paired_difference_and_flips():
    before = torch.tensor([0.0, 1.0, 2.0, 3.0])
    after = torch.tensor([1.0, 1.5, 3.0, 3.5])
    est = paired_difference(after, before)
    half = 3.182446305284263 * math.sqrt(1 / 12) / 2     # diffs 1, .5, 1, .5: sd = sqrt(1/12)
    assert est.value == pytest.approx(0.75) and est.high - est.value == pytest.approx(half)
    assert flips(torch.tensor([True, True, False]), torch.tensor([False, True, True])) == (1, 1)
    with pytest.raises(ValueError, match="differ in shape"):
        paired_difference(after, before[:2])


def test_wilson_interval():
    est = proportion_ci(torch.tensor([True] * 8 + [False] * 2))
    assert est.value == 0.8 and est.low == pytest.approx(0.4902, abs=1e-3) and est.high == pytest.approx(0.9433, abs=1e-3)
    with pytest.raises(ValueError):
        proportion_ci(torch.tensor([], dtype=torch.bool))
