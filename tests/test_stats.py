import math

import pytest
import torch
from conftest import unchecked

from persona_interp.evaluation.stats import Estimate, flips, mean_ci, paired_difference, proportion_ci


def test_mean_ci_hand_computed():
    est = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5, sd = sqrt(5/3), t(0.975, 3) = 3.182446
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (est.value, est.n) == (2.5, 4)
    assert est.low == pytest.approx(2.5 - half) and est.high == pytest.approx(2.5 + half)
    one = mean_ci(torch.tensor([0.5]))                         # one item: no interval, no verdict
    assert one.value == 0.5 and math.isnan(one.low) and math.isnan(one.high) and one.above_zero() is None
    assert mean_ci(torch.tensor([0.5, 0.6, 0.7])).above_zero() is True and mean_ci(torch.tensor([-0.5, 0.7])).above_zero() is False


def test_paired_difference_and_flips():
    before = torch.tensor([0.0, 1.0, 2.0, 3.0])
    after = torch.tensor([1.0, 1.5, 3.0, 3.5])
    est = paired_difference(after, before)
    half = 3.182446305284263 * math.sqrt(1 / 12) / 2     # diffs 1, .5, 1, .5: sd = sqrt(1/12)
    assert est.value == pytest.approx(0.75) and est.high - est.value == pytest.approx(half)
    assert flips(torch.tensor([True, True, False]), torch.tensor([False, True, True])) == (1, 1)
    with unchecked(), pytest.raises(ValueError, match="differ in shape"):
        paired_difference(after, before[:2])


def test_wilson_interval():
    est = proportion_ci(torch.tensor([True] * 8 + [False] * 2))
    assert est.value == 0.8 and est.low == pytest.approx(0.4902, abs=1e-3) and est.high == pytest.approx(0.9433, abs=1e-3)
    with pytest.raises(ValueError):
        proportion_ci(torch.tensor([], dtype=torch.bool))


@pytest.mark.parametrize("n", [1, 3, 24, 65, 100])
def test_wilson_interval_always_holds_the_observed_proportion(n):
    # at 0 / n the textbook formula leaves the lower bound a rounding error above 0 (3.5e-18 at n = 100),
    # which made the accuracy figure's error bars negative
    for k in range(n + 1):
        est = proportion_ci(torch.tensor([True] * k + [False] * (n - k)))
        assert est.low <= est.value <= est.high, (k, n, est)
    assert proportion_ci(torch.zeros(n, dtype=torch.bool)).low == 0.0
    assert proportion_ci(torch.ones(n, dtype=torch.bool)).high == 1.0


def test_trend_hand_computed():
    from persona_interp.evaluation.stats import trend

    x = torch.tensor([0.0, 0.5, 1.0])
    y = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 3.0], [2.0, 3.0, 4.0]])          # 3 settings × 3 items
    t = trend(x, y)
    # per-item slopes: Σ xc·y / Σ xc² with xc = (-.5, 0, .5), Σ xc² = .5 → (2, 2, 2)
    assert (t.slope.value, t.slope.low, t.slope.high, t.slope.n) == (2.0, 2.0, 2.0, 3)
    assert (t.reversals, t.significant_reversals, t.spearman) == (0, 0, 1.0)
    assert t.monotonic and t.increasing
    down = trend(x, torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.1, 1.9], [1.0, 1.1, 0.9]]))
    assert down.reversals == 1 and down.significant_reversals == 1 and not down.monotonic and not down.increasing
    noisy = trend(torch.tensor([0.0, 1.0]), torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
    assert noisy.reversals == 0 and noisy.significant_reversals == 0 and not noisy.increasing   # slope CI spans 0


def test_trend_rejects_bad_input():
    from persona_interp.evaluation.stats import trend

    with pytest.raises(ValueError, match="strictly increasing"):
        trend(torch.tensor([0.0, 0.0]), torch.zeros(2, 3))
    with unchecked(), pytest.raises(ValueError, match="k ≥ 2"):
        trend(torch.tensor([0.0, 1.0]), torch.zeros(3, 3))


def test_estimate_signed_from_row_and_excludes_zero():
    row = {"advantage": 0.8335, "advantage_low": 0.3801, "advantage_high": 1.2869, "n": 100}
    estimate = Estimate.from_row(row, "advantage")
    assert estimate == Estimate(0.8335, 0.3801, 1.2869, 100)
    assert estimate.signed() == "+0.83 [+0.38, +1.29]" and estimate.signed(3) == "+0.834 [+0.380, +1.287]"
    assert estimate.excludes_zero and Estimate(-0.5, -0.9, -0.1, 3).excludes_zero
    assert not Estimate(0.24, -0.11, 0.59, 64).excludes_zero
