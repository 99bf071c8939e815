"""Hyper-parameter searches on a validation split of the calibration data (never on test items).

Example:
    >>> fit, val = load_persona("power").split(0.2, seed=0)
    >>> choice = select_steering(model, mean_difference_vectors(model, fit, range(4, 28, 4)), val, [2, 4, 8])
    >>> choice.layer, choice.multiplier
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .data import PersonaItem
from .scoring import score_ab
from .steering import SteeringVector


@dataclass
class SteeringChoice:
    """The chosen layer and multiplier, and the whole search table."""

    layer: int
    multiplier: float
    vector: SteeringVector
    table: list[dict[str, float]]


def select_steering(model: Any, vectors: dict[int, SteeringVector], validation: Sequence[PersonaItem],
                    multipliers: Sequence[float], *, batch_size: int = 8, progress: bool = False) -> SteeringChoice:
    """For each layer and multiplier α, score the validation items with +α and −α; choose the pair
    with the largest mean seek-minus-reject difference of the per-token margin."""
    if not vectors or not multipliers:
        raise ValueError("select_steering needs at least one vector and one multiplier")
    if any(m <= 0 for m in multipliers):
        raise ValueError(f"multipliers must be positive (the reject side uses −α), got {list(multipliers)}")
    validation = list(validation)
    table = []
    for layer, vector in vectors.items():
        for alpha in multipliers:
            margins = {}
            for sign in (1, -1):
                with vector.apply(model, sign * alpha):
                    margins[sign] = score_ab(model, validation, batch_size=batch_size, progress=progress).margin_mean
            table.append({"layer": layer, "multiplier": alpha, "separation": float((margins[1] - margins[-1]).mean()),
                          "seek_margin": float(margins[1].mean()), "reject_margin": float(margins[-1].mean())})
    best = max(table, key=lambda row: row["separation"])
    return SteeringChoice(int(best["layer"]), float(best["multiplier"]), vectors[int(best["layer"])], table)
