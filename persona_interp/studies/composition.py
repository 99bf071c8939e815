"""The composition study: fractional blends and MBTI type masks against type prompts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from persona_interp.data.personas import MBTI_AXES, PersonaItem, load_persona, persona_prompts
from persona_interp.evaluation.evaluate import evaluate
from persona_interp.evaluation.stats import mean_ci, paired_difference, proportion_ci, trend
from persona_interp.interventions.conditions import Condition, MaskCondition, Prompt
from persona_interp.masks.builders import random_mask
from persona_interp.masks.composition import TYPE_LETTERS, fractional_mask, intersection_type_mask, type_mask, type_poles
from persona_interp.report.results import Provenance
from persona_interp.report.study_results import CompositionStudy, FractionCurve, FractionRow, Trend, TypeRow
from persona_interp.signatures import Signature


# ---------------------------------------------------------------------- experiments
def type_prompt(type_code: str) -> str:
    """A system prompt describing a full MBTI type: the default prompt of each chosen pole, joined.

    Examples:
        >>> type_prompt("INTJ").startswith("Your personality type is INTJ.")
        True
    """
    poles = type_poles(type_code)
    return " ".join([f"Your personality type is {type_code.upper()}."] + [persona_prompts(axis, pole)[0] for axis, pole in poles.items()])


def fractional_curve(model: Any, seek: Signature, reject: Signature, items: Sequence[PersonaItem],
                     fractions: Sequence[float], sparsity: float, *, seed: int = 0, batch_size: int = 8,
                     progress: bool = True, **kwargs: Any) -> FractionCurve:
    """Score the test ``items`` under [`fractional_mask`][persona_interp.masks.composition.fractional_mask] at each
    fraction (same items, paired), beside the base model and a random mask at the same sparsity. Returns one row per
    fraction (per-token margin toward seek with its interval, paired shift against base, seek accuracy) and the
    [`trend`][persona_interp.evaluation.stats.trend] of the per-item margins along the fractions.

    Examples:
        >>> curve = fractional_curve(model, sig_seek, sig_reject, test, [0, .5, 1], sparsity=0.3, progress=False)
        >>> [row.fraction for row in curve.rows], curve.trend.slope.n, curve.trend.increasing in (True, False)
        ([0.0, 0.5, 1.0, None], 4, True)
    """
    fractions = sorted(float(f) for f in fractions)
    masks = [fractional_mask(model, seek, reject, f, sparsity, **kwargs) for f in fractions]
    masks.append(random_mask(model, sparsity, seed=seed, like=masks[0]))
    conditions: list[Condition] = [Condition()]
    conditions += [MaskCondition(f"fraction={f:g}", mask=mask, regime="fractional") for f, mask in zip(fractions, masks)]
    conditions.append(MaskCondition(f"random@{sparsity}", regime="random", mask=masks[-1]))
    ev = evaluate(model, items, conditions, persona=str(seek.meta.get("dataset")), batch_size=batch_size, progress=progress)
    base = ev.scores["base"].margin_mean
    rows = []
    for cond, mask in zip(conditions[1:], masks):
        s = ev.scores[cond.name]
        margin, shift, acc = mean_ci(s.margin_mean), paired_difference(s.margin_mean, base), proportion_ci(s.seek_wins)
        rows.append(FractionRow(condition=cond.name, fraction=mask.meta.get("fraction"), n=margin.n,
                                margin=margin.value, margin_low=margin.low, margin_high=margin.high,
                                shift=shift.value, shift_low=shift.low, shift_high=shift.high,
                                accuracy_seek=acc.value, accuracy_low=acc.low, accuracy_high=acc.high))
    margins = torch.stack([ev.scores[c.name].margin_mean for c in conditions[1:-1]])
    t = trend(torch.tensor(fractions), margins)
    return FractionCurve(sparsity=sparsity, seed=seed, rows=rows, base_margin=mean_ci(base),
                         trend=Trend(spearman=t.spearman, reversals=t.reversals, significant_reversals=t.significant_reversals,
                                     slope=t.slope, monotonic=t.monotonic, increasing=t.increasing))


def type_comparison(model: Any, axes: Mapping[str, tuple[Signature, Signature]], type_code: str, sparsity: float,
                    tests: Mapping[str, Sequence[PersonaItem]], *, seed: int = 0, batch_size: int = 8,
                    progress: bool = True, **kwargs: Any) -> list[TypeRow]:
    """Composed type mask vs the intersection of axis masks vs a type prompt, each with a random
    mask of the same sparsity, on every axis's test items. Each row gives, for one condition and
    axis, the accuracy toward the type's pole and the paired shift of the margin toward that pole
    against the base model, both with 95 % intervals.

    Examples:
        >>> axes = dict.fromkeys(TYPE_LETTERS, (sig_seek, sig_reject))      # each axis' signatures; one pair here
        >>> rows = type_comparison(model, axes, "INTJ", 0.3, {a: load_persona(a, "test")[:2] for a in axes}, progress=False)
        >>> len(rows), rows[0].condition, rows[0].pole         # 6 conditions × 4 axes
        (24, 'base', 'introversion')
    """
    poles = type_poles(type_code)
    composed = type_mask(model, axes, type_code, sparsity, **kwargs)
    intersection = intersection_type_mask(model, axes, type_code, sparsity, **kwargs)
    conditions: list[Condition] = [
        Condition(), Prompt("type-prompt", system=type_prompt(type_code)),
        MaskCondition("type-mask", mask=composed, regime="type"),
        MaskCondition("random@type", mask=random_mask(model, composed.sparsity(), seed=seed, like=composed), regime="random"),
        MaskCondition("intersection", mask=intersection, regime="type_intersection"),
        MaskCondition("random@intersection", regime="random",
                      mask=random_mask(model, round(intersection.sparsity(), 4), seed=seed, like=intersection))]
    rows = []
    for axis, pole in poles.items():
        if axis not in tests or not len(tests[axis]):
            raise ValueError(f"type_comparison needs test items for the axis {axis!r}")
        ev = evaluate(model, list(tests[axis]), conditions, persona=axis, batch_size=batch_size, progress=progress)
        sign = 1.0 if pole == "seek" else -1.0
        base = ev.scores["base"]
        for cond in conditions:
            s = ev.scores[cond.name]
            wins = s.seek_wins if pole == "seek" else ~s.seek_wins
            acc, shift = proportion_ci(wins), paired_difference(sign * s.margin_mean, sign * base.margin_mean)
            sparsity_of = cond.mask.sparsity() if isinstance(cond, MaskCondition) and cond.mask is not None else 0.0
            rows.append(TypeRow(type=type_code.upper(), axis=axis, pole=MBTI_AXES[axis][0 if pole == "seek" else 1],
                                condition=cond.name, sparsity=sparsity_of, n=acc.n, accuracy=acc.value,
                                accuracy_low=acc.low, accuracy_high=acc.high, shift=shift.value,
                                shift_low=shift.low, shift_high=shift.high))
    return rows


def run_composition(model: Any, axes: Mapping[str, tuple[Signature, Signature]], *, type_code: str = "INTJ",
                    sparsity: float = 0.3, axis: str = "introversion_extraversion",
                    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), n_test: int | None = None, seed: int = 0,
                    figures_dir: str | Path | None = None, progress: bool = True) -> CompositionStudy:
    """The composition study on the MBTI axes' held-out test items:
    [`type_comparison`][persona_interp.studies.composition.type_comparison] for ``type_code`` and the
    [`fractional_curve`][persona_interp.studies.composition.fractional_curve] of ``axis``; figures go to
    ``figures_dir``.

    Examples:
        >>> axes = dict.fromkeys(TYPE_LETTERS, (sig_seek, sig_reject))      # each axis' signatures; one pair here
        >>> study = run_composition(model, axes, type_code="INTJ", n_test=2, fractions=(0.0, 1.0), progress=False)
        >>> study.type, len(study.type_rows)
        ('INTJ', 24)
    """
    provenance = Provenance.collect(model, seed=seed)
    tests = {}
    for name in TYPE_LETTERS:
        test = load_persona(name, "test")
        tests[name] = list(test.sample(n_test, seed=seed) if n_test else test)
    rows = type_comparison(model, axes, type_code, sparsity, tests, seed=seed, progress=progress)
    curve = fractional_curve(model, *axes[axis], tests[axis], fractions, sparsity, seed=seed, progress=progress)
    study = CompositionStudy(type=type_code.upper(), sparsity=sparsity, axis=axis, seed=seed,
                             n_test={name: len(items) for name, items in tests.items()}, type_rows=rows, curve=curve,
                             provenance=provenance.done())
    if figures_dir:
        from persona_interp.report.figures import plot_fraction_curve, plot_type_comparison

        plot_type_comparison(rows, f"{figures_dir}/type_{type_code.upper()}_{sparsity}",
                             title=f"{type_code.upper()}: composed mask vs intersection vs prompt")
        poles = MBTI_AXES[axis]
        plot_fraction_curve(curve, f"{figures_dir}/fraction_{axis}_{sparsity}",
                            title=f"{axis}: fraction of '{poles[0]}' (1) vs '{poles[1]}' (0)")
    return study
