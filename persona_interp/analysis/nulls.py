"""Null references for the notebooks' comparisons: what a quantity looks like when there is nothing to find.

* :func:`random_cosine_band` — the band of cosines between independent random directions in ``d`` dimensions
  (about ±1/√d; the reference for 07's regime cosines).
* :func:`percentile_band` — a percentile band over random draws (06's random-unit controls over seeds).
* :func:`split_half_signature_cosine` — per layer, the cosine between the signatures of two disjoint halves of
  one pole's items (the reference for 04's seek-vs-reject signature cosine).
* :func:`split_half_differ` — how much one pole's per-pole Wanda masks differ between two disjoint halves of its
  own items, overall, attention and MLP (the null for 05's "more in the MLP than in attention").

Example:
    >>> [round(x, 2) for x in random_cosine_band(576)]        # ≈ ±2/√576 at the 95 % level
    [-0.08, 0.08]
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.analysis.localise import signature_cosine_by_layer
from persona_interp.masks.builders import wanda_mask
from persona_interp.masks.mask import fraction_differ, fraction_differ_by
from persona_interp.signatures import Signature


def random_cosines(d: int, n: int = 20000, seed: int = 0) -> Float[Tensor, " n"]:
    """Cosines between ``n`` pairs of independent isotropic Gaussian directions in ``d`` dimensions (seeded).

    Example:
        >>> round(float(random_cosines(576).std()), 3)           # ≈ 1/√576 ≈ 0.042
        0.041
    """
    if d < 2 or n < 2:
        raise ValueError(f"random_cosines needs d ≥ 2 and n ≥ 2, got d={d}, n={n}")
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def percentile_band(values: Sequence[float] | Tensor, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` band (e.g. 5th and 95th percentiles at 0.9) of draws under a null.

    Example:
        >>> percentile_band([0.0, 1.0, 2.0, 3.0, 4.0], level=0.5)
        (1.0, 3.0)
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() < 2:
        raise ValueError(f"a percentile band needs at least 2 draws, got {x.numel()}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    tail = (1 - level) / 2
    return float(torch.quantile(x, tail)), float(torch.quantile(x, 1 - tail))


def random_cosine_band(d: int, level: float = 0.95, n: int = 20000, seed: int = 0) -> tuple[float, float]:
    """The central ``level`` band of cosines between random directions in ``d`` dimensions, computed (not
    assumed): a regime cosine inside it is not distinguishable from unrelated directions.

    Example:
        >>> low, high = random_cosine_band(576, level=0.68)      # ≈ ±0.042, one standard deviation
        >>> round(low, 2), round(high, 2)
        (-0.04, 0.04)
    """
    return percentile_band(random_cosines(d, n, seed), level)


def _halves(n: int, draws: int, seed: int) -> list[tuple[list[int], list[int]]]:
    if n < 4 or draws < 1:
        raise ValueError(f"split halves need at least 4 samples and 1 draw, got {n} samples, {draws} draws")
    out = []
    for draw in range(draws):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + draw)).tolist()
        out.append((sorted(order[: n // 2]), sorted(order[n // 2: 2 * (n // 2)])))
    return out


def split_half_signature_cosine(signature: Signature, draws: int = 3, seed: int = 0,
                                statistic: str = "norm_mean") -> Float[Tensor, "draws layers"]:
    """Per draw and layer, the cosine between the signatures of two disjoint halves of one pole's samples
    (needs ``collect_signatures(..., per_sample=True)``): how close two signatures of the same pole are, the
    reference a seek-vs-reject cosine must fall below to show a difference between the poles.

    Example:
        >>> split_half_signature_cosine(sig_seek, draws=3).min(dim=0).values.shape     # per layer, the lowest over draws
        torch.Size([2])
    """
    return torch.stack([signature_cosine_by_layer(signature.subset(a), signature.subset(b), statistic)
                        for a, b in _halves(signature.n_samples, draws, seed)])


def split_half_differ(model: Any, signature: Signature, sparsity: float, draws: int = 3,
                      seed: int = 0) -> list[dict[str, float]]:
    """Per draw, the share of entries in which one pole's per-pole Wanda masks from two disjoint halves of its own
    samples differ: ``overall``, ``attn`` and ``mlp`` (entries-weighted), and ``mlp_minus_attn``. Differences
    between the poles' masks (and between their attention and MLP shares) smaller than these are within the
    noise of the calibration sample.

    Example:
        >>> rows = split_half_differ(model, sig_seek, 0.3, draws=3)
        >>> len(rows), sorted(rows[0])
        (3, ['attn', 'mlp', 'mlp_minus_attn', 'overall'])
    """
    rows = []
    for a, b in _halves(signature.n_samples, draws, seed):
        first, second = (wanda_mask(model, signature.subset(half), sparsity) for half in (a, b))
        by_module = fraction_differ_by(first, second, "module")
        rows.append({"overall": fraction_differ(first, second), "attn": by_module["attn"], "mlp": by_module["mlp"],
                     "mlp_minus_attn": by_module["mlp"] - by_module["attn"]})
    return rows
