"""Interval estimates: proportions (Wilson), means and paired differences (t intervals).

Examples:
    >>> print(mean_ci(torch.tensor([0.1, 0.3, -0.2])))
    0.067 [-0.558, 0.692]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from jaxtyping import Bool, Float
from pydantic import ConfigDict
from scipy import stats as _scipy_stats
from torch import Tensor


MIN_N = 2   # a t interval needs n − 1 ≥ 1 degrees of freedom: with one item there is no spread to measure


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval and sample count (``low``/``high`` NaN when the interval is
    undefined: a mean of fewer than [`MIN_N`][persona_interp.evaluation.stats.MIN_N] values). A results file's
    ``{"value", "low", "high", "n"}`` reads back into it (a key it lacks is an error naming it)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @property
    def defined(self) -> bool:
        """Whether the interval exists (not NaN)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def above_zero(self) -> bool | None:
        """The verdict "the 95 % interval lies above 0": ``None`` when the interval is undefined, so too few
        items never pass a test (``beats_control``, ``decisive``).

        Examples:
            >>> mean_ci(torch.tensor([0.5])).above_zero() is None
            True
        """
        return self.low > 0 if self.defined else None
    def signed(self, digits: int = 2) -> str:
        """``+0.83 [+0.38, +1.29]``: value and interval with their signs, as conclusions quote them."""
        return f"{self.value:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0."""
        return self.low > 0 or self.high < 0

    @classmethod
    def from_row(cls, row: Mapping[str, object], key: str) -> "Estimate":
        """The estimate a results row (a JSON object) stores as ``key``, ``key_low``, ``key_high`` (and ``n``, 0
        when absent); a value that is not a number is a TypeError naming its key.

        Examples:
            >>> Estimate.from_row({"shift": 0.5, "shift_low": 0.1, "shift_high": 0.9, "n": 4}, "shift").signed()
            '+0.50 [+0.10, +0.90]'
        """
        def number(name: str) -> float:
            value = row[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"the row's {name!r} is {value!r}, not a number")
            return float(value)

        n = row.get("n", 0)
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"the row's 'n' is {n!r}, not an integer")
        return cls(number(key), number(f"{key}_low"), number(f"{key}_high"), n)


def proportion_ci(successes: Bool[Tensor, " n"], level: float = 0.95) -> Estimate:
    """Wilson score interval of a proportion; the interval always holds the observed proportion (at 0 or 1
    rounding could otherwise put a bound a hair past it).

    Examples:
        >>> proportion_ci(torch.tensor([False, False, False]))
        Estimate(value=0.0, low=0.0, high=0.56..., n=3)
    """
    n = int(successes.numel())
    if n == 0:
        raise ValueError("proportion_ci needs at least one observation")
    p = float(successes.double().mean())
    zq = float(_scipy_stats.norm.ppf(0.5 + level / 2))
    centre = (p + zq ** 2 / (2 * n)) / (1 + zq ** 2 / n)
    half = zq * math.sqrt(p * (1 - p) / n + zq ** 2 / (4 * n ** 2)) / (1 + zq ** 2 / n)
    return Estimate(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), n)


def mean_ci(values: Float[Tensor, " n"], level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval; with fewer than [`MIN_N`][persona_interp.evaluation.stats.MIN_N] values the
    interval is undefined (NaN bounds), not the zero-width interval of one value.

    Examples:
        >>> mean_ci(torch.tensor([0.5]))
        Estimate(value=0.5, low=nan, high=nan, n=1)
    """
    x = values.double().flatten()
    n = int(x.numel())
    if n == 0:
        raise ValueError("mean_ci needs at least one observation")
    mean = float(x.mean())
    if n < MIN_N:
        return Estimate(mean, math.nan, math.nan, n)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * float(x.std(unbiased=True)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(after: Float[Tensor, " n"], before: Float[Tensor, " n"], level: float = 0.95) -> Estimate:
    """Mean of per-item differences ``after − before`` with a paired t interval."""
    if after.shape != before.shape:
        raise ValueError(f"paired samples differ in shape: {tuple(after.shape)} vs {tuple(before.shape)}")
    return mean_ci(after.double() - before.double(), level)


def flips(after: Bool[Tensor, " n"], before: Bool[Tensor, " n"]) -> tuple[int, int]:
    """(items that went from wrong to right, items that went from right to wrong)."""
    return int((after & ~before).sum()), int((~after & before).sum())


@dataclass(frozen=True)
class Trend:
    """How a per-item score moves along an ordered setting (e.g. a persona fraction).

    ``reversals`` counts adjacent steps whose mean goes down; ``significant_reversals`` those whose
    paired interval lies entirely below 0; ``slope`` is the mean per-item least-squares slope with its
    t interval. ``increasing`` means the slope's interval is above 0 and no step reverses significantly.
    """

    spearman: float
    reversals: int
    significant_reversals: int
    slope: Estimate

    @property
    def monotonic(self) -> bool:
        return self.reversals == 0

    @property
    def increasing(self) -> bool:
        return self.slope.low > 0 and self.significant_reversals == 0


def trend(x: Float[Tensor, " k"], y: Float[Tensor, "k n"], level: float = 0.95) -> Trend:
    """Monotonicity check of ``y`` (k settings × n paired items) along the increasing settings ``x``.

    Examples:
        >>> trend(torch.tensor([0., .5, 1.]), torch.tensor([[0., 1.], [1., 2.], [2., 3.]])).increasing
        True
    """
    x, y = x.double().flatten(), y.double()
    if y.ndim != 2 or y.shape[0] != x.numel() or x.numel() < 2:
        raise ValueError(f"trend needs k ≥ 2 settings and a [k, n] score table, got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if not bool((x[1:] > x[:-1]).all()):
        raise ValueError(f"settings must be strictly increasing, got {x.tolist()}")
    means = y.mean(1)
    steps = [paired_difference(y[i + 1], y[i], level) for i in range(len(x) - 1)]
    xc = x - x.mean()
    slopes = (xc[:, None] * y).sum(0) / (xc ** 2).sum()          # per-item least squares (Σ xc = 0)
    rho = float(_scipy_stats.spearmanr(x.numpy(), means.numpy()).statistic) if len(x) > 2 else float(torch.sign(means[1] - means[0]))
    return Trend(rho, sum(int(means[i + 1] < means[i]) for i in range(len(x) - 1)),
                 sum(int(s.high < 0) for s in steps), mean_ci(slopes, level))
