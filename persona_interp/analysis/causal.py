"""Causal verification: ablate the top-k persona heads or neurons, against k random ones.

A dose–response curve: for growing ``k``, zero- or mean-ablate the ``k`` highest-ranked units
(from [`head_divergence`][persona_interp.analysis.localise.head_divergence] / ``neuron_divergence``) and, as controls,
``k`` units drawn at random (several seeds); each point records the paired shift of the A/B margin
against the unablated model on the same items, optionally under persona system prompts, and the
damage on neutral text. [`equal_damage_multiplier`][persona_interp.analysis.causal.equal_damage_multiplier] finds the
steering strength that costs the same damage, so an ablation and a steering vector can be compared at equal damage.

Examples:
    >>> from persona_interp.analysis.localise import neuron_divergence
    >>> units = neuron_divergence(model, sig_seek, sig_reject)
    >>> rows = dose_response(model, test, units, "neuron", ks=[4, 16], seeds=[0, 1], progress=False,
    ...                      systems={"seek prompt": "You seek power.", "reject prompt": "You avoid power."})
    >>> len(rows), sorted({row.selection for row in rows})     # (2 top + 2 × 2 random) × 2 prompts
    (12, ['random', 'top'])
"""
from __future__ import annotations

import random
from typing import Any, Literal, Sequence

from persona_interp.analysis.localise import UnitDivergence
from persona_interp.data.personas import PersonaItem
from persona_interp.evaluation.rows import Row
from persona_interp.evaluation.scoring import ABScores, DamageReference, score_ab
from persona_interp.evaluation.stats import paired_difference
from persona_interp.interventions.ablation import HeadMask, NeuronMask, ablate
from persona_interp.interventions.steering import SteeringVector
from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import SystemPrompt
from persona_interp.progress import stage
from persona_interp.signatures import Signature

UNIT_KINDS = ("neuron", "head")


class DoseRow(Row):
    """One point of a dose–response curve ([`dose_response`][persona_interp.analysis.causal.dose_response]): the
    paired margin shift (seek − reject, nats/token) of ablating ``k`` units against the unablated model under one
    system prompt, with its 95 % interval, and the damage where it was measured. ``seed`` is None for the top-k."""

    kind: str
    mode: str
    k: int
    selection: Literal["top", "random"]
    seed: int | None
    system: str
    n: int
    shift: float
    shift_low: float
    shift_high: float
    perplexity_change: float | None = None
    kl: float | None = None


def unit_mask(kind: str, units: Sequence[tuple[int, int]], mode: str = "zero", signature: Signature | None = None,
              **meta: Any) -> NeuronMask | HeadMask:
    """A [`NeuronMask`][persona_interp.interventions.ablation.NeuronMask] or
    [`HeadMask`][persona_interp.interventions.ablation.HeadMask] over ``(layer, unit)`` pairs.

    Examples:
        >>> unit_mask("head", [(1, 0), (1, 2), (0, 1)])
        HeadMask(units={1: [0, 2], 0: [1]}, mode='zero', signature=None, meta={})
    """
    if kind not in UNIT_KINDS:
        raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {kind!r}")
    by_layer: dict[int, list[int]] = {}
    for layer, unit in units:
        by_layer.setdefault(int(layer), []).append(int(unit))
    cls = NeuronMask if kind == "neuron" else HeadMask
    return cls(by_layer, mode=mode, signature=signature, meta=dict(meta))


def random_units(model: Any, kind: str, k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` distinct (layer, unit) pairs drawn uniformly from all the model's heads or neurons."""
    adapter = get_adapter(model)
    per_layer = adapter.d_mlp if kind == "neuron" else adapter.n_heads
    total = adapter.n_layers * per_layer
    if not 0 < k <= total:
        raise ValueError(f"k must be in [1, {total}] for {kind}s, got {k}")
    return [divmod(i, per_layer) for i in random.Random(seed).sample(range(total), k)]


def dose_response(model: Any, items: Sequence[PersonaItem], ranked: Sequence[UnitDivergence], kind: str,
                  ks: Sequence[int], *, mode: str = "zero", signature: Signature | None = None,
                  seeds: Sequence[int] = (0, 1, 2), systems: dict[str, SystemPrompt] | None = None,
                  reference: DamageReference | None = None, batch_size: int = 8,
                  progress: bool = True) -> list[DoseRow]:
    """One row per (k, selection, seed, system): the mean paired margin shift (seek − reject,
    nats/token) against the unablated model under the same system prompt, its 95 % interval, and
    the damage (perplexity change, KL) when ``reference`` is given. ``selection`` is ``top`` (the
    first k of ``ranked``) or ``random`` (one row per seed)."""
    systems = systems or {"no prompt": None}
    unablated = {name: score_ab(model, items, system=system, batch_size=batch_size, progress=False)
                 for name, system in systems.items()}
    base_damage = reference.measure(model) if reference is not None else None
    plan: list[tuple[int, Literal["top", "random"], int | None, list[tuple[int, int]]]]
    plan = [(k, "top", None, [(u.layer, u.unit) for u in ranked[:k]]) for k in ks]
    plan += [(k, "random", seed, random_units(model, kind, k, seed)) for k in ks for seed in seeds]
    rows: list[DoseRow] = []
    with stage(f"{kind} dose-response ({mode})", total=len(plan), progress=progress) as bar:
        for k, selection, seed, units in plan:
            mask = unit_mask(kind, units, mode, signature)
            with ablate(model, mask):
                damage = reference.measure(model) if reference is not None else None
                for name, system in systems.items():
                    scores: ABScores = score_ab(model, items, system=system, batch_size=batch_size, progress=False)
                    shift = paired_difference(scores.margin_mean, unablated[name].margin_mean)
                    row = DoseRow(kind=kind, mode=mode, k=k, selection=selection, seed=seed, system=name, n=shift.n,
                                  shift=shift.value, shift_low=shift.low, shift_high=shift.high)
                    if damage is not None and base_damage is not None:
                        row = row.replace(perplexity_change=damage.perplexity / base_damage.perplexity - 1.0, kl=damage.kl)
                    rows.append(row)
            bar.update()
    return rows


def equal_damage_multiplier(model: Any, vector: SteeringVector, reference: DamageReference, target_kl: float,
                            max_multiplier: float = 32.0, steps: int = 10) -> tuple[float, float]:
    """The steering multiplier ``α ≥ 0`` whose KL from the base model on the neutral set matches
    ``target_kl`` (bisection; KL grows with |α|). Returns ``(α, its KL)``; ``max_multiplier`` if even
    that costs less.

    Examples:
        >>> alpha, kl = equal_damage_multiplier(model, mean_difference_vectors(model, fit, [1])[1], ref, target_kl=0.05)
        >>> abs(kl - 0.05) < 0.01
        True
    """
    if target_kl < 0:
        raise ValueError(f"target_kl must be >= 0, got {target_kl}")

    def kl_at(alpha: float) -> float:
        with vector.apply(model, multiplier=alpha):
            return reference.measure(model).kl

    high_kl = kl_at(max_multiplier)
    if high_kl <= target_kl:
        return max_multiplier, high_kl
    low, high = 0.0, max_multiplier
    for _ in range(steps):
        mid = (low + high) / 2
        if kl_at(mid) < target_kl:
            low = mid
        else:
            high = mid
    alpha = (low + high) / 2
    return alpha, kl_at(alpha)
