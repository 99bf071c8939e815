"""Composed and fractional personas: combine per-pole contrastive scores per weight, then rank per row.

A full MBTI type (say INTJ) is one pole on each of the four axes. Intersecting four axis masks
keeps only weights every axis keeps, so the result is sparser than asked and its sparsity depends
on how much the axes agree. [`type_mask`][persona_interp.masks.composition.type_mask] instead adds the row-normalised
contrastive scores of the chosen poles and keeps the top ``(1−ρ)`` of each row: one ranking, exactly the sparsity
asked for. [`fractional_mask`][persona_interp.masks.composition.fractional_mask] interpolates between the two poles of
one pair (``fraction=0.7`` is "70 % seek"); at ``fraction`` 1 and 0 it is the Contrastive-Wanda seek and reject mask.
[`compose`][persona_interp.masks.composition.compose] is the same idea for finished masks: a weighted vote per weight.

Examples:
    >>> axes = dict.fromkeys(TYPE_LETTERS, (sig_seek, sig_reject))   # each axis' (seek, reject); one pair for all here
    >>> intj = type_mask(model, axes, "INTJ", sparsity=0.3)
    >>> mostly_introvert = fractional_mask(model, *axes["introversion_extraversion"], fraction=0.7, sparsity=0.3)
    >>> either = compose([intj, mostly_introvert], weights=[0.7, 0.3])
    >>> round(intj.sparsity(), 2), fraction_differ(either, intj)      # the heavier vote wins every weight
    (0.31, 0.0)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.personas import MBTI_AXES, Side, check_side
from persona_interp.masks.builders import (
    Phi,
    _by_channel,
    abs_weight,
    check_contrast,
    check_phi,
    check_pole,
    check_sparsity,
    contrast,
    contrastive_wanda_masks,
    keep_top_per_row,
    mask_meta,
    phi_fn,
    row_normalise,
    selected_maps,
)
from persona_interp.masks.mask import Mask
from persona_interp.model.adapter import ModelMismatchError
from persona_interp.signatures import Signature

# The letter of each pole in a type code; the first pole of every axis is its "seek" side.
TYPE_LETTERS = {"introversion_extraversion": ("I", "E"), "intuition_sensing": ("N", "S"),
                "thinking_feeling": ("T", "F"), "judging_perceiving": ("J", "P")}


def type_poles(type_code: str) -> dict[str, Side]:
    """Which side of each MBTI axis a four-letter type takes.

    Examples:
        >>> type_poles("INTJ")["judging_perceiving"]
        'seek'
    """
    code = type_code.strip().upper()
    if len(code) != len(TYPE_LETTERS):
        raise ValueError(f"type code {type_code!r} must have four letters, one per axis (e.g. INTJ)")
    poles: dict[str, Side] = {}
    for axis, (seek_letter, reject_letter) in TYPE_LETTERS.items():
        found = [c for c in code if c in (seek_letter, reject_letter)]
        if len(found) != 1:
            raise ValueError(f"type code {type_code!r} must name exactly one of {seek_letter}/{reject_letter} "
                             f"({' / '.join(MBTI_AXES[axis])})")
        poles[axis] = "seek" if found[0] == seek_letter else "reject"
    return poles


ScoreFn = Callable[[str], "tuple[Float[Tensor, 'out in'], Float[Tensor, 'out in']]"]


@dataclass
class PoleScores:
    """Row-normalised contrastive scores of one pole (``|W|·φ(±z)`` divided by its row sum) and the
    row-normalised plain Wanda score ``|W|·μ`` that breaks ties, or a weighted sum of several poles.
    Scores add and scale, so poles of different axes combine before ranking; they are computed one
    map at a time when a mask is built (all maps at once would take gigabytes in float64).

    Examples:
        >>> blended = 0.7 * pole_scores(model, sig_seek, sig_reject, "seek") + 0.3 * pole_scores(model, sig_seek, sig_reject, "reject")
        >>> [pole["weight"] for pole in blended.mask(0.3).meta["poles"]]
        [0.7, 0.3]
    """

    terms: list[tuple[float, ScoreFn]]
    names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fixed(cls, score: dict[str, Tensor], tiebreak: dict[str, Tensor], meta: dict[str, Any] | None = None) -> "PoleScores":
        """Scores given per map (e.g. hand-built or from another method)."""
        return cls([(1.0, lambda name: (score[name], tiebreak[name]))], list(score),
                   meta or {"poles": [{"pole": "fixed", "weight": 1.0}]})

    def map_scores(self, name: str) -> tuple[Float[Tensor, "out in"], Float[Tensor, "out in"]]:
        """The combined (score, tiebreak) of one map."""
        score = tiebreak = None
        for weight, fn in self.terms:
            s, t = fn(name)
            score = weight * s if score is None else score + weight * s
            tiebreak = weight * t if tiebreak is None else tiebreak + weight * t
        if score is None or tiebreak is None:
            raise ValueError("these pole scores have no terms: build them with pole_scores() or PoleScores.fixed()")
        return score, tiebreak

    def __add__(self, other: "PoleScores") -> "PoleScores":
        if set(self.names) != set(other.names):
            raise ModelMismatchError("pole scores cover different linear maps; build them with the same modules/layers")
        if self.meta.get("fingerprint") != other.meta.get("fingerprint"):
            raise ModelMismatchError("pole scores were built for different models")
        return PoleScores(self.terms + other.terms, self.names,
                          {**self.meta, "poles": [*self.meta.get("poles", []), *other.meta.get("poles", [])]})

    def __rmul__(self, weight: float) -> "PoleScores":
        if weight < 0:
            raise ValueError(f"pole weights must be non-negative, got {weight}")
        return PoleScores([(weight * w, fn) for w, fn in self.terms], self.names,
                          {**self.meta, "poles": [{**p, "weight": weight * p["weight"]} for p in self.meta.get("poles", [])]})

    def mask(self, sparsity: float, method: str = "composed", **meta: Any) -> Mask:
        """Keep the top ``(1−ρ)`` of each row by the combined score (ties by the combined Wanda score)."""
        check_sparsity(sparsity)
        keep = {}
        for name in self.names:
            score, tiebreak = self.map_scores(name)
            keep[name] = keep_top_per_row(score, sparsity, tiebreak)
        return Mask(keep, {**self.meta, "method": method, "sparsity": sparsity, **meta})


def pole_scores(model: Any, seek: Signature, reject: Signature, pole: Side = "seek", *, phi: Phi = "relu",
                tau: float = 1.0, eps: float = 1e-8, modules: Iterable[str] | None = None,
                layers: Iterable[int] | None = None) -> PoleScores:
    """Contrastive-Wanda scores of one pole of a pair, row-normalised so different pairs are comparable.

    Examples:
        >>> s = pole_scores(model, sig_seek, sig_reject, "seek", modules=["mlp"])
        >>> score, tiebreak = s.map_scores("blocks.0.mlp.down")
        >>> score.shape, torch.allclose(score.sum(1), torch.ones(32, dtype=score.dtype))   # [out, in], rows sum to 1
        (torch.Size([32, 48]), True)
    """
    check_side(pole, "pole")
    check_phi(phi)
    check_pole(seek, "seek")
    check_pole(reject, "reject")
    check_contrast(seek, reject, eps)
    maps = selected_maps(model, modules, layers, [seek, reject])
    act, sign = phi_fn(phi, tau), (1.0 if pole == "seek" else -1.0)
    chosen = seek if pole == "seek" else reject

    def scores(name: str) -> tuple[Tensor, Tensor]:
        w = abs_weight(model, name)
        return (row_normalise(_by_channel(w, act(sign * contrast(seek, reject, name, eps)))),
                row_normalise(_by_channel(w, chosen.norm_mean(name))))

    meta = mask_meta(model, "pole_scores", 0.0, maps, modules, layers, phi=phi, tau=tau, eps=eps,
                 poles=[{"dataset": seek.meta.get("dataset"), "pole": pole, "weight": 1.0}])
    return PoleScores([(1.0, scores)], [m.name for m in maps], meta)


def _checked_weights(parts: Sequence[Any], weights: Sequence[float] | None, caller: str, what: str) -> list[float]:
    """Equal weights by default; otherwise one non-negative weight per part, with a positive sum."""
    if not parts:
        raise ValueError(f"{caller} needs at least one of its {what}")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts):
        raise ValueError(f"got {len(weights)} weights for {len(parts)} {what}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return weights


def blend(parts: Sequence[PoleScores], weights: Sequence[float] | None = None) -> PoleScores:
    """Weighted sum of pole scores (equal weights by default)."""
    weights = _checked_weights(parts, weights, "blend", "pole scores")
    total = weights[0] * parts[0]
    for w, part in zip(weights[1:], parts[1:]):
        total = total + w * part
    return total


def fractional_mask(model: Any, seek: Signature, reject: Signature, fraction: float, sparsity: float,
                    **kwargs: Any) -> Mask:
    """A persona ``fraction`` of the way from the reject pole (0) to the seek pole (1): ranks
    ``fraction·S⁺ + (1−fraction)·S⁻`` per row (row-normalised Contrastive-Wanda scores).

    Examples:
        >>> m70 = fractional_mask(model, sig_seek, sig_reject, fraction=0.7, sparsity=0.3)
        >>> fraction_differ(fractional_mask(model, sig_seek, sig_reject, fraction=1.0, sparsity=0.3), seek_mask)
        0.0
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1] (share of the seek pole), got {fraction}")
    scores = blend([pole_scores(model, seek, reject, "seek", **kwargs), pole_scores(model, seek, reject, "reject", **kwargs)],
                   [fraction, 1.0 - fraction])
    return scores.mask(sparsity, method="fractional", fraction=fraction, side="seek" if fraction >= 0.5 else "reject",
                       persona=seek.meta.get("dataset"))


def type_mask(model: Any, axes: Mapping[str, tuple[Signature, Signature]], type_code: str, sparsity: float,
              weights: Mapping[str, float] | None = None, **kwargs: Any) -> Mask:
    """Mask for a full MBTI type from the four axes' (seek, reject) signatures: the chosen poles'
    row-normalised contrastive scores are added per weight (optionally weighted per axis) and ranked
    once per row.

    Examples:
        >>> intj = type_mask(model, dict.fromkeys(TYPE_LETTERS, (sig_seek, sig_reject)), "INTJ", sparsity=0.3)
        >>> poles = intj.meta["poles"]
        >>> intj.meta["type"], poles["introversion_extraversion"]
        ('INTJ', 'seek')
    """
    poles = type_poles(type_code)
    missing = [axis for axis in poles if axis not in axes]
    if missing:
        raise ValueError(f"type {type_code!r} needs signatures for the axes {missing}")
    parts = [pole_scores(model, *axes[axis], pole, **kwargs) for axis, pole in poles.items()]
    axis_weights = None if weights is None else [weights.get(axis, 1.0) for axis in poles]
    return blend(parts, axis_weights).mask(sparsity, method="type", type=type_code.upper(), poles=poles)


def intersection_type_mask(model: Any, axes: Mapping[str, tuple[Signature, Signature]], type_code: str,
                           sparsity: float, **kwargs: Any) -> Mask:
    """The naive alternative to [`type_mask`][persona_interp.masks.composition.type_mask]: the intersection of the
    four axes' Contrastive-Wanda masks of the chosen poles, each at ``sparsity`` (so the result removes more than
    ``sparsity``)."""
    poles = type_poles(type_code)
    result = None
    for axis, pole in poles.items():
        seek_mask, reject_mask = contrastive_wanda_masks(model, *axes[axis], sparsity, **kwargs)
        part = seek_mask if pole == "seek" else reject_mask
        result = part if result is None else result & part
    assert result is not None   # type_poles gives all four axes
    result.meta.update({"method": "type_intersection", "type": type_code.upper(), "sparsity": result.sparsity(),
                        "per_axis_sparsity": sparsity, "poles": poles})
    return result


def compose(masks: Sequence[Mask], weights: Sequence[float] | None = None, *, sparsity: float | None = None,
            threshold: float = 0.5) -> Mask:
    """Weighted vote of several masks: ``v = Σ w_k·keep_k / Σ w_k`` per weight. With ``sparsity`` the
    top ``(1−ρ)`` of each row by ``v`` is kept (ties by column index); otherwise weights with
    ``v > threshold`` are kept (equal weights, threshold 0.5: a strict majority).

    Examples:
        >>> fraction_differ(compose([seek_mask, seek_mask, reject_mask]), seek_mask)     # kept by at least two of three
        0.0
        >>> compose([seek_mask, reject_mask], weights=[0.7, 0.3], sparsity=0.5).sparsity()
        0.5
    """
    weights = _checked_weights(masks, weights, "compose", "masks")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    fingerprints = {m.meta.get("fingerprint") for m in masks} - {None}
    if len(fingerprints) > 1:
        raise ModelMismatchError("cannot compose masks built for different models")
    names = list(dict.fromkeys(n for m in masks for n in m.keep))
    keep = {}
    for name in names:
        shape = next(m.keep[name].shape for m in masks if name in m.keep)
        device = next(m.keep[name].device for m in masks if name in m.keep)
        vote = torch.zeros(shape, dtype=torch.float64, device=device)
        for w, m in zip(weights, masks):
            part = m.keep.get(name, torch.ones(shape, dtype=torch.bool, device=device)).to(device)
            if part.shape != shape:
                raise ModelMismatchError(f"masks disagree on the shape of {name}: {tuple(part.shape)} vs {tuple(shape)}")
            vote += w * part.double()
        vote /= sum(weights)
        keep[name] = keep_top_per_row(vote, sparsity) if sparsity is not None else vote > threshold
    meta = {"method": "compose", "parts": [m.meta.get("method") for m in masks], "weights": weights,
            "fingerprint": next(iter(fingerprints), None), "sparsity": sparsity, "threshold": threshold}
    return Mask(keep, meta)
