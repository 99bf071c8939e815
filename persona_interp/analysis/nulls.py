"""Null references for the notebooks' comparisons: what a quantity looks like when there is nothing to find.

* [`random_cosine_band`][persona_interp.analysis.nulls.random_cosine_band] — the band of cosines between independent
  random directions in ``d`` dimensions (about ±1/√d; the reference for 07's regime cosines).
* [`percentile_band`][persona_interp.analysis.nulls.percentile_band] — a percentile band over random draws (06's
  random-unit controls over seeds).
* [`split_halves`][persona_interp.analysis.nulls.split_halves] and
  [`swapped_poles`][persona_interp.analysis.nulls.swapped_poles] — pairs of signatures with nothing between them to
  find: two disjoint halves of one pole's items, or the two poles on the same items with each item's seek and reject
  answers exchanged at random (the paired permutation null: it keeps the questions shared, as seek vs reject does).
* [`split_half_signature_cosine`][persona_interp.analysis.nulls.split_half_signature_cosine] /
  [`null_signature_cosine`][persona_interp.analysis.nulls.null_signature_cosine] — per layer, the cosine between such
  a pair (the references for 04's seek-vs-reject signature cosine).
* [`split_half_differ`][persona_interp.analysis.nulls.split_half_differ] — how much one pole's per-pole Wanda masks
  differ between two disjoint halves of its own items, overall, attention and MLP (the null for 05's "more in the MLP
  than in attention").
* [`null_units`][persona_interp.analysis.nulls.null_units] — the heads and neurons that differ most within such pairs,
  and [`above_null`][persona_interp.analysis.nulls.above_null], the units of a seek-vs-reject ranking above all of
  them (the null for 04's top units).

[`persona_interp.report.null_figures`][persona_interp.report.null_figures] draws each null on the figure it qualifies.

Examples:
    >>> [round(x, 2) for x in random_cosine_band(576)]        # ≈ ±2/√576 at the 95 % level
    [-0.08, 0.08]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.analysis.localise import UnitDivergence, head_divergence, neuron_divergence, signature_cosine_by_layer
from persona_interp.masks.builders import wanda_mask
from persona_interp.masks.mask import fraction_differ, fraction_differ_by
from persona_interp.signatures import Signature


def random_cosines(d: int, n: int = 20000, seed: int = 0) -> Float[Tensor, " n"]:
    """Cosines between ``n`` pairs of independent isotropic Gaussian directions in ``d`` dimensions (seeded).

    Examples:
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

    Examples:
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

    Examples:
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


NullPairs = list[tuple[Signature, Signature]]     # per draw, two signatures with nothing between them to find


def split_halves(signature: Signature, draws: int = 3, seed: int = 0) -> NullPairs:
    """Per draw, the signatures of two disjoint random halves of one pole's samples (needs
    ``collect_signatures(..., per_sample=True)``).

    Examples:
        >>> [(a.n_samples, b.n_samples) for a, b in split_halves(sig_seek, draws=2)]      # of 8 samples
        [(4, 4), (4, 4)]
    """
    return [(signature.subset(a), signature.subset(b)) for a, b in _halves(signature.n_samples, draws, seed)]


def _mixed(seek: Signature, reject: Signature, items: Tensor, take_reject: Tensor) -> Signature:
    """The signature of ``items``, each item's rows taken from ``reject`` where ``take_reject`` else from ``seek``."""
    rows = {site: {key: torch.where(take_reject[:, None] if value.dim() == 2 else take_reject, reject.rows[site][key][items], value[items])
                   for key, value in stats.items()} for site, stats in seek.rows.items()}
    whole = Signature({}, seek.map_sites, {}, {}, {**seek.meta, "n_samples": len(items), "side": "mixed"}, rows)
    return whole.subset(range(len(items)))


def swapped_poles(seek: Signature, reject: Signature, draws: int = 3, seed: int = 0, n: int | None = None) -> NullPairs:
    """Per draw, two signatures of the same ``n`` random items (all by default) in which each item's seek and reject
    answers are exchanged with probability ½: the paired permutation null of a seek-vs-reject comparison, where
    both poles answer the same questions (needs both poles' per-sample rows, collected on the same items in the
    same order).

    Examples:
        >>> [(a.n_samples, b.n_samples) for a, b in swapped_poles(sig_seek, sig_reject, draws=2, n=8)]
        [(8, 8), (8, 8)]
    """
    if not seek.rows or not reject.rows:
        raise ValueError("swapped_poles needs both poles' per-sample rows: collect them with per_sample=True")
    total = seek.n_samples
    if reject.n_samples != total or seek.meta.get("dataset") != reject.meta.get("dataset"):
        raise ValueError(f"the poles must be collected on the same items: seek has {total} samples of "
                         f"{seek.meta.get('dataset')!r}, reject {reject.n_samples} of {reject.meta.get('dataset')!r}")
    n = total if n is None else n
    if not 2 <= n <= total or draws < 1:
        raise ValueError(f"swapped poles need 2 ≤ n ≤ {total} items and 1 draw, got n={n}, {draws} draws")
    out = []
    for draw in range(draws):
        g = torch.Generator().manual_seed(seed + draw)
        items = torch.randperm(total, generator=g)[:n].sort().values
        flip = torch.rand(n, generator=g) < 0.5
        out.append((_mixed(seek, reject, items, flip), _mixed(seek, reject, items, ~flip)))
    return out


def null_signature_cosine(pairs: NullPairs, statistic: str = "norm_mean") -> Float[Tensor, "draws layers"]:
    """Per draw and layer, the cosine between the two signatures of a null pair
    ([`split_halves`][persona_interp.analysis.nulls.split_halves],
    [`swapped_poles`][persona_interp.analysis.nulls.swapped_poles]): how close two signatures are when nothing
    separates them, the reference a seek-vs-reject cosine must fall below to show a difference between the poles.

    Examples:
        >>> cosine = null_signature_cosine(swapped_poles(sig_seek, sig_reject, draws=2))      # [draw, layer]
        >>> cosine.shape[0], bool((cosine <= 1 + 1e-5).all())
        (2, True)
    """
    return torch.stack([signature_cosine_by_layer(a, b, statistic) for a, b in pairs])


def split_half_signature_cosine(signature: Signature, draws: int = 3, seed: int = 0,
                                statistic: str = "norm_mean") -> Float[Tensor, "draws layers"]:
    """[`null_signature_cosine`][persona_interp.analysis.nulls.null_signature_cosine] of
    [`split_halves`][persona_interp.analysis.nulls.split_halves]: the cosine between two disjoint halves of one pole.

    Examples:
        >>> split_half_signature_cosine(sig_seek, draws=3).min(dim=0).values.shape     # per layer, the lowest over draws
        torch.Size([2])
    """
    return null_signature_cosine(split_halves(signature, draws, seed), statistic)


@dataclass(frozen=True)
class MaskDiffer:
    """The shares of entries in which two masks differ: overall, in attention and in the MLP weights (each share
    weighted by entries).

    Examples:
        >>> round(MaskDiffer(overall=0.011, attn=0.010, mlp=0.0115).mlp_minus_attn, 4)
        0.0015
    """

    overall: float
    attn: float
    mlp: float

    @property
    def mlp_minus_attn(self) -> float:
        return self.mlp - self.attn


def split_half_differ(model: Any, signature: Signature, sparsity: float, draws: int = 3,
                      seed: int = 0) -> list[MaskDiffer]:
    """Per draw, how much one pole's per-pole Wanda masks from two disjoint halves of its own samples differ
    (needs ``collect_signatures(..., per_sample=True)``). Differences between the poles' masks (and between their
    attention and MLP shares) inside these are within the noise of the calibration sample.

    Examples:
        >>> null = split_half_differ(model, sig_seek, 0.3, draws=3)
        >>> len(null), all(0 <= d.overall <= 1 for d in null)
        (3, True)
    """
    out = []
    for a, b in _halves(signature.n_samples, draws, seed):
        first, second = (wanda_mask(model, signature.subset(half), sparsity) for half in (a, b))
        by_module = fraction_differ_by(first, second, "module")
        out.append(MaskDiffer(fraction_differ(first, second), by_module["attn"], by_module["mlp"]))
    return out


@dataclass(frozen=True)
class NullUnits:
    """Per draw of a null pair ([`null_units`][persona_interp.analysis.nulls.null_units]), the top heads and neurons
    ranked by their divergence: what the top of a ranking looks like when nothing separates the two sides."""

    heads: tuple[tuple[UnitDivergence, ...], ...]
    neurons: tuple[tuple[UnitDivergence, ...], ...]
    n_per_side: int

    def of(self, kind: str) -> tuple[tuple[UnitDivergence, ...], ...]:
        """The draws of ``kind`` ("head" or "neuron")."""
        if kind not in ("head", "neuron"):
            raise ValueError(f"kind must be 'head' or 'neuron', got {kind!r}")
        return self.heads if kind == "head" else self.neurons

    def ceiling(self, kind: str) -> float:
        """The largest divergence of any ``kind`` unit in any draw."""
        return max(draw[0].divergence for draw in self.of(kind))


def null_units(model: Any, pairs: NullPairs, top: int = 100) -> NullUnits:
    """The ``top`` heads and neurons by divergence (mean |z|, as the atlas ranks seek against reject) within each
    null pair ([`split_halves`][persona_interp.analysis.nulls.split_halves],
    [`swapped_poles`][persona_interp.analysis.nulls.swapped_poles]). A seek-vs-reject unit whose divergence does not
    exceed these is not told apart from sampling noise; compare at the same number of samples per side.

    Examples:
        >>> null = null_units(model, swapped_poles(sig_seek, sig_reject, draws=2), top=5)
        >>> len(null.neurons), len(null.neurons[0]), null.ceiling("neuron") > 0
        (2, 5, True)
    """
    heads = tuple(tuple(head_divergence(model, a, b)[:top]) for a, b in pairs)
    neurons = tuple(tuple(neuron_divergence(model, a, b)[:top]) for a, b in pairs)
    return NullUnits(heads, neurons, min(min(a.n_samples, b.n_samples) for a, b in pairs))


def above_null(units: Sequence[UnitDivergence], null: NullUnits, kind: str) -> list[UnitDivergence]:
    """The units (of a seek-vs-reject ranking) whose divergence exceeds every ``kind`` unit of every null draw.

    Examples:
        >>> null = null_units(model, split_halves(sig_seek, draws=2), top=5)
        >>> ranked = neuron_divergence(model, sig_seek, sig_reject)
        >>> all(u.divergence > null.ceiling("neuron") for u in above_null(ranked, null, "neuron"))
        True
    """
    ceiling = null.ceiling(kind)
    return [u for u in units if u.divergence > ceiling]
