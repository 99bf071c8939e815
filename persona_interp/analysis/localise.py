"""Where persona subnetworks sit: per layer × map kind, per attention head and per MLP neuron.

All functions work on masks and signatures only (no forward passes).

Examples:
    >>> grid, kinds = layer_kind_grid(fraction_differ_by(seek_mask, reject_mask, "map"))
    >>> grid.shape, kinds                      # [layers, kinds]
    (torch.Size([2, 7]), ('q', 'k', 'v', 'o', 'gate', 'up', 'down'))
    >>> heads = head_divergence(model, sig_seek, sig_reject, seek_mask, reject_mask)[:3]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from pydantic import ConfigDict
from torch import Tensor

from persona_interp.evaluation.rows import Row
from persona_interp.masks.builders import contrast
from persona_interp.masks.mask import Mask, fraction_differ, fraction_differ_by
from persona_interp.model.adapter import ATTN_KINDS, MLP_KINDS, get_adapter, map_name, parse_map_name
from persona_interp.signatures import Signature

KINDS = (*ATTN_KINDS, *MLP_KINDS)


def layer_kind_grid(per_map: dict[str, float], n_layers: int | None = None) -> tuple[Float[Tensor, "layers kinds"], tuple[str, ...]]:
    """A per-map measure (e.g. ``fraction_differ_by(a, b, "map")``) as a ``[layer, kind]`` grid
    (NaN where a map is absent), with the kind labels."""
    layers = [parse_map_name(name)[0] for name in per_map]
    n_layers = n_layers if n_layers is not None else (max(layers) + 1 if layers else 0)
    grid = torch.full((n_layers, len(KINDS)), float("nan"), dtype=torch.float64)
    for name, value in per_map.items():
        layer, _, kind = parse_map_name(name)
        grid[layer, KINDS.index(kind)] = value
    return grid, KINDS


class PairOverlap(Row):
    """How much two masks (named by ``pair``) differ: the share of entries overall, in attention and in MLP weights
    (NaN where the masks cover none of them) ([`overlap_row`][persona_interp.analysis.localise.overlap_row])."""

    pair: str
    overall: float
    attn: float
    mlp: float


def overlap_row(pair: str, seek: Mask, reject: Mask) -> PairOverlap:
    """The paper's overlap table row: fraction of entries that differ between two opposing masks,
    overall, in attention and in MLP weights.

    Examples:
        >>> row = overlap_row("power", seek_mask, reject_mask)
        >>> row.pair, row.overall <= 0.6               # at most 2ρ for a ρ = 0.3 Contrastive-Wanda pair
        ('power', True)
    """
    by_module = fraction_differ_by(seek, reject, "module")
    return PairOverlap(pair=pair, overall=fraction_differ(seek, reject), attn=by_module.get("attn", float("nan")),
                       mlp=by_module.get("mlp", float("nan")))


def persona_specific_removal(persona: Mask, reference: Mask) -> dict[str, float]:
    """Per map: of the weights the persona mask removes, the fraction that the reference mask (a
    plain magnitude mask at the same sparsity) keeps, i.e. removals owed to the persona's activations."""
    out = {}
    for name, keep in persona.keep.items():
        removed = ~keep
        n_removed = int(removed.sum())
        out[name] = float((removed & reference.keep[name]).sum()) / n_removed if n_removed else float("nan")
    return out


def signature_cosine_by_layer(seek: Signature, reject: Signature, statistic: str = "norm_mean") -> Float[Tensor, " layers"]:
    """Per layer, the cosine similarity of the two poles' signatures (all input sites of the layer
    concatenated). The paper reports near-identical deep layers."""
    layers = sorted({parse_map_name(name)[0] for name in seek.map_sites})
    out = torch.zeros(len(layers), dtype=torch.float64)
    for i, layer in enumerate(layers):
        maps = sorted({seek.map_sites[n]: n for n in seek.map_sites if parse_map_name(n)[0] == layer}.values())
        a = torch.cat([getattr(seek, statistic)(n) for n in maps])
        b = torch.cat([getattr(reject, statistic)(n) for n in maps])
        out[i] = torch.nn.functional.cosine_similarity(a, b, dim=0)
    return out


@dataclass(frozen=True)
class UnitDivergence:
    """One head or neuron: the mean |z| over its channels and the share of its weights that two
    masks assign differently. An atlas file's ``top_heads`` / ``top_neurons`` read back into it (a key it lacks is
    an error naming it)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    layer: int
    unit: int
    divergence: float
    weights_differ: float


def _rank(units: list[UnitDivergence]) -> list[UnitDivergence]:
    return sorted(units, key=lambda u: (-u.divergence, u.layer, u.unit))


def _differ_counts(a: Mask | None, b: Mask | None, name: str, axis: int, groups: int) -> tuple[Tensor, Tensor]:
    """Per unit (``groups`` equal slices along ``axis`` of the [out, in] mask): entries that differ, entries."""
    if a is None or b is None or name not in a.keep or name not in b.keep:
        return torch.zeros(groups), torch.zeros(groups)
    differ = (a.keep[name] != b.keep[name]).sum(1 - axis).reshape(groups, -1).sum(1)
    size = a.keep[name].shape[1 - axis] * a.keep[name].shape[axis] // groups
    return differ.double(), torch.full((groups,), float(size), dtype=torch.float64)


def _units(layer: int, z: Tensor, parts: list[tuple[Tensor, Tensor]]) -> list[UnitDivergence]:
    differ = torch.stack([p[0] for p in parts]).sum(0)
    total = torch.stack([p[1] for p in parts]).sum(0)
    share = torch.where(total > 0, differ / total.clamp_min(1), torch.full_like(total, float("nan")))
    return [UnitDivergence(layer, unit, float(z[unit]), float(share[unit])) for unit in range(len(z))]


def head_divergence(model: Any, seek: Signature, reject: Signature, mask_a: Mask | None = None,
                    mask_b: Mask | None = None, eps: float = 1e-8) -> list[UnitDivergence]:
    """Heads ranked by mean |z| over their ``z`` channels (the input of ``o``); the weight share
    counts the head's columns of ``o`` and its rows of ``q`` (where both masks cover them)."""
    adapter = get_adapter(model)
    units = []
    for layer in range(adapter.n_layers):
        z = contrast(seek, reject, map_name(layer, "o"), eps).abs().reshape(adapter.n_heads, adapter.d_head).mean(1)
        parts = [_differ_counts(mask_a, mask_b, map_name(layer, "o"), 1, adapter.n_heads),
                 _differ_counts(mask_a, mask_b, map_name(layer, "q"), 0, adapter.n_heads)]
        units += _units(layer, z, parts)
    return _rank(units)


def neuron_divergence(model: Any, seek: Signature, reject: Signature, mask_a: Mask | None = None,
                      mask_b: Mask | None = None, eps: float = 1e-8) -> list[UnitDivergence]:
    """MLP neurons ranked by |z| of their activation (the input channel of ``down``); the weight share
    counts the neuron's column of ``down`` and its rows of ``up`` and ``gate``."""
    adapter = get_adapter(model)
    units = []
    for layer in range(adapter.n_layers):
        z = contrast(seek, reject, map_name(layer, "down"), eps).abs()
        parts = [_differ_counts(mask_a, mask_b, map_name(layer, "down"), 1, adapter.d_mlp),
                 _differ_counts(mask_a, mask_b, map_name(layer, "up"), 0, adapter.d_mlp),
                 _differ_counts(mask_a, mask_b, map_name(layer, "gate"), 0, adapter.d_mlp)]
        units += _units(layer, z, parts)
    return _rank(units)
