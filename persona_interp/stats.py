"""Interval estimates: proportions (Wilson), means and paired differences (t intervals).

Example:
    >>> mean_ci(torch.tensor([0.1, 0.3, -0.2]))
    Estimate(value=0.0667, low=..., high=..., n=3)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Float
from scipy import stats as _scipy_stats
from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % interval and sample count."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def proportion_ci(successes: Bool[Tensor, " n"], level: float = 0.95) -> Estimate:
    """Wilson score interval of a proportion."""
    n = int(successes.numel())
    if n == 0:
        raise ValueError("proportion_ci needs at least one observation")
    p = float(successes.double().mean())
    zq = _scipy_stats.norm.ppf(0.5 + level / 2)
    centre = (p + zq ** 2 / (2 * n)) / (1 + zq ** 2 / n)
    half = zq * math.sqrt(p * (1 - p) / n + zq ** 2 / (4 * n ** 2)) / (1 + zq ** 2 / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_ci(values: Float[Tensor, " n"], level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval (a point interval when n = 1)."""
    x = values.double().flatten()
    n = int(x.numel())
    if n == 0:
        raise ValueError("mean_ci needs at least one observation")
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
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
