"""Random controls matched on damage: the random mask whose neutral-text KL equals a given mask's.

"Beats random" against a random mask of the same sparsity says little when that control is far more damaging
than the mask (a random 30 % of SmolLM2's weights costs KL ≈ 13 nats/token), so the damage-matched control asks
the sharper question: does the mask move the persona more than random weights removed at equal damage? It lives
here, not beside [`random_mask`][persona_interp.masks.builders.random_mask], because it measures damage
([`DamageReference`][persona_interp.evaluation.scoring.DamageReference]) under an ablation, which the mask builders, a
step earlier in the data flow, never do.

Examples:
    >>> control = damage_matched_random(model, mask, ref, seed=0)
    >>> control.converged, abs(control.kl - control.target) <= 0.1 * control.target + 1e-4, 0 < control.sparsity < 1
    (True, True, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from persona_interp.evaluation.rows import Row
from persona_interp.evaluation.scoring import DamageReference
from persona_interp.interventions.ablation import ablate
from persona_interp.masks.builders import random_mask
from persona_interp.masks.mask import Mask
from persona_interp.masks.registry import method_names, methods

MAX_SPARSITY = 0.999


@dataclass
class MatchedControlConfig:
    """Which mask methods' budget picks get a damage-matched random control, and the bisection's relative
    ``tolerance`` (|KL − target| ≤ tolerance·target + ``atol``) and its budget of KL measurements."""

    methods: list[str] = field(default_factory=lambda: [spec.name for spec in methods(poles=True)])
    tolerance: float = 0.1
    atol: float = 1e-4
    max_iter: int = 10

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in method_names()]
        if unknown:
            raise ValueError(f"unknown mask method(s) {unknown} for matched controls: use some of {method_names()}")
        if self.tolerance < 0 or self.atol < 0 or self.max_iter < 1:
            raise ValueError(f"tolerance and atol must be >= 0 and max_iter >= 1, got {self.tolerance}, {self.atol}, {self.max_iter}")


@dataclass
class MatchedControl:
    """The random mask found, its KL on the reference texts, the mask's (``target``), the random sparsity,
    whether it is within tolerance, and every (sparsity, KL) measured in order."""

    mask: Mask
    kl: float
    target: float
    sparsity: float
    converged: bool
    tried: list[tuple[float, float]]

    def record(self) -> MatchedControlRecord:
        """What the search found, as a run's results keep it (the mask aside)."""
        return MatchedControlRecord(target_kl=self.target, kl=self.kl, sparsity=self.sparsity, converged=self.converged,
                                    tried=self.tried)


class MatchedControlRecord(Row):
    """A damage-matched control's search as the results keep it: the target KL, the KL reached, the random
    sparsity, whether it is within tolerance and every (sparsity, KL) measured."""

    target_kl: float
    kl: float
    sparsity: float
    converged: bool
    tried: list[tuple[float, float]]


def damage_matched_random(model: Any, mask: Mask, reference: DamageReference, *, target: float | None = None,
                          seed: int = 0, tolerance: float = 0.1, atol: float = 1e-4, max_iter: int = 10) -> MatchedControl:
    """The random mask over ``mask``'s maps (each weight removed with probability ρ, seeded: a per-row count could
    not go below one weight per row, which on its own can cost more than a small mask) whose KL on
    ``reference``'s texts is within ``tolerance·target + atol`` of ``mask``'s (measured here unless ``target`` is
    given), by bisection on ρ in (0, 0.999) with at most ``max_iter`` KL measurements.

    One seed for every ρ makes the candidates nested (a larger ρ removes a superset), so KL mostly grows with ρ;
    it need not strictly (removing a weight can undo another's harm), so the bisection only steers by which side
    of the target each measurement falls, and the closest mask measured is returned whether or not it converged.

    Examples:
        >>> control = damage_matched_random(model, seek_mask, ref, tolerance=0.05)
        >>> abs(control.kl - control.target) <= 0.05 * control.target + 1e-4 or not control.converged
        True
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"damage_matched_random takes a Mask, got {type(mask).__name__}")
    if tolerance < 0 or atol < 0 or max_iter < 1:
        raise ValueError(f"tolerance and atol must be >= 0 and max_iter >= 1, got {tolerance}, {atol}, {max_iter}")
    if target is None:
        with ablate(model, mask):
            target = reference.measure(model).kl
    if target < 0:
        raise ValueError(f"the target KL must be >= 0, got {target}")
    maps = list(mask.keep)
    close = tolerance * target + atol
    tried: list[tuple[float, float]] = []
    closest: list[tuple[Mask, float, float]] = []          # the (mask, KL, sparsity) closest to the target so far

    def measure(rho: float) -> float:
        candidate = random_mask(model, rho, seed=seed, modules=maps, per_row=False)
        with ablate(model, candidate):
            kl = reference.measure(model).kl
        tried.append((rho, kl))
        if not closest or abs(kl - target) < abs(closest[0][1] - target):
            closest[:] = [(candidate, kl, rho)]
        return kl

    low, high = 0.0, min(max(mask.sparsity(), 1e-3), MAX_SPARSITY)     # no weight removed: KL 0 by definition
    kl = measure(high)
    while kl < target - close and high < MAX_SPARSITY and len(tried) < max_iter:   # widen until above the target
        low, high = high, min((1.0 + high) / 2.0, MAX_SPARSITY)
        kl = measure(high)
    while abs(kl - target) > close and len(tried) < max_iter and high - low > 1e-6:
        rho = (low + high) / 2.0
        kl = measure(rho)
        if kl < target:
            low = rho
        else:
            high = rho
    (control, kl, rho), = closest
    control.meta.update(matched_to=mask.meta.get("method"), target_kl=float(target))
    return MatchedControl(control, kl, float(target), rho, abs(kl - target) <= close, tried)
