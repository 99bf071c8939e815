"""Composed and fractional personas: combine per-pole contrastive scores per weight, then rank per row.

A full MBTI type (say INTJ) is one pole on each of the four axes. Intersecting four axis masks
keeps only weights every axis keeps, so the result is sparser than asked and its sparsity depends
on how much the axes agree. :func:`type_mask` instead adds the row-normalised contrastive scores
of the chosen poles and keeps the top ``(1−ρ)`` of each row: one ranking, exactly the sparsity
asked for. :func:`fractional_mask` interpolates between the two poles of one pair (``fraction=0.7``
is "70 % seek"); at ``fraction`` 1 and 0 it is the Contrastive-Wanda seek and reject mask.
:func:`compose` is the same idea for finished masks: a weighted vote per weight.

Example:
    >>> axes = {axis: (sig_seek, sig_reject) for axis, (sig_seek, sig_reject) in signatures.items()}
    >>> intj = type_mask(model, axes, "INTJ", sparsity=0.3)
    >>> mostly_introvert = fractional_mask(model, *axes["introversion_extraversion"], fraction=0.7, sparsity=0.3)
    >>> either = compose([mask_a, mask_b], weights=[0.7, 0.3])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .conditions import Condition, MaskCondition, Prompt
from .data import MBTI_AXES, PersonaItem, load_persona, persona_prompts
from .evaluation import evaluate, markdown_table
from .masks import (Mask, _abs_weight, _by_channel, _meta, _row_normalise, _selected, check_contrast, check_sparsity, contrast,
                    contrastive_wanda_masks,
                    keep_top_per_row, phi_fn, random_mask)
from .adapter import ModelMismatchError
from .signatures import Signature
from .stats import mean_ci, paired_difference, proportion_ci, trend

# The letter of each pole in a type code; the first pole of every axis is its "seek" side.
TYPE_LETTERS = {"introversion_extraversion": ("I", "E"), "intuition_sensing": ("N", "S"),
                "thinking_feeling": ("T", "F"), "judging_perceiving": ("J", "P")}


def type_poles(type_code: str) -> dict[str, str]:
    """Which side of each MBTI axis a four-letter type takes.

    Example:
        >>> type_poles("INTJ")["judging_perceiving"]
        'seek'
    """
    code = type_code.strip().upper()
    if len(code) != len(TYPE_LETTERS):
        raise ValueError(f"type code {type_code!r} must have four letters, one per axis (e.g. INTJ)")
    poles = {}
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

    Example:
        >>> blended = 0.7 * pole_scores(model, seek, reject, "seek") + 0.3 * pole_scores(model, seek, reject, "reject")
        >>> blended.mask(0.3)
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


def pole_scores(model: Any, seek: Signature, reject: Signature, pole: str = "seek", *, phi: str = "relu",
                tau: float = 1.0, eps: float = 1e-8, modules: Iterable[str] | None = None,
                layers: Iterable[int] | None = None) -> PoleScores:
    """Contrastive-Wanda scores of one pole of a pair, row-normalised so different pairs are comparable.

    Example:
        >>> s = pole_scores(model, sig_introvert, sig_extravert, "seek", modules=["mlp"])
    """
    if pole not in ("seek", "reject"):
        raise ValueError(f"pole must be 'seek' or 'reject', got {pole!r}")
    check_contrast(seek, reject, eps)
    maps = _selected(model, modules, layers, [seek, reject])
    act, sign = phi_fn(phi, tau), (1.0 if pole == "seek" else -1.0)
    chosen = seek if pole == "seek" else reject

    def scores(name: str) -> tuple[Tensor, Tensor]:
        w = _abs_weight(model, name)
        return (_row_normalise(_by_channel(w, act(sign * contrast(seek, reject, name, eps)))),
                _row_normalise(_by_channel(w, chosen.norm_mean(name))))

    meta = _meta(model, "pole_scores", 0.0, maps, modules, layers, phi=phi, tau=tau, eps=eps,
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

    Example:
        >>> m70 = fractional_mask(model, sig_introvert, sig_extravert, fraction=0.7, sparsity=0.3)
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

    Example:
        >>> intj = type_mask(model, axis_signatures, "INTJ", sparsity=0.3)
    """
    poles = type_poles(type_code)
    missing = [axis for axis in poles if axis not in axes]
    if missing:
        raise ValueError(f"type {type_code!r} needs signatures for the axes {missing}")
    parts = [pole_scores(model, *axes[axis], pole, **kwargs) for axis, pole in poles.items()]
    weights = None if weights is None else [weights.get(axis, 1.0) for axis in poles]
    return blend(parts, weights).mask(sparsity, method="type", type=type_code.upper(), poles=poles)


def intersection_type_mask(model: Any, axes: Mapping[str, tuple[Signature, Signature]], type_code: str,
                           sparsity: float, **kwargs: Any) -> Mask:
    """The naive alternative to :func:`type_mask`: the intersection of the four axes' Contrastive-Wanda
    masks of the chosen poles, each at ``sparsity`` (so the result removes more than ``sparsity``)."""
    poles = type_poles(type_code)
    result = None
    for axis, pole in poles.items():
        seek_mask, reject_mask = contrastive_wanda_masks(model, *axes[axis], sparsity, **kwargs)
        part = seek_mask if pole == "seek" else reject_mask
        result = part if result is None else result & part
    result.meta.update({"method": "type_intersection", "type": type_code.upper(), "sparsity": result.sparsity(),
                        "per_axis_sparsity": sparsity, "poles": poles})
    return result


def compose(masks: Sequence[Mask], weights: Sequence[float] | None = None, *, sparsity: float | None = None,
            threshold: float = 0.5) -> Mask:
    """Weighted vote of several masks: ``v = Σ w_k·keep_k / Σ w_k`` per weight. With ``sparsity`` the
    top ``(1−ρ)`` of each row by ``v`` is kept (ties by column index); otherwise weights with
    ``v > threshold`` are kept (equal weights, threshold 0.5: a strict majority).

    Example:
        >>> compose([a, b, c])                      # kept by at least two of three
        >>> compose([a, b], weights=[0.7, 0.3], sparsity=0.3)
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


# ---------------------------------------------------------------------- experiments
def type_prompt(type_code: str) -> str:
    """A system prompt describing a full MBTI type: the default prompt of each chosen pole, joined.

    Example:
        >>> type_prompt("INTJ").startswith("Your personality type is INTJ.")
        True
    """
    poles = type_poles(type_code)
    return " ".join([f"Your personality type is {type_code.upper()}."] + [persona_prompts(axis, pole)[0] for axis, pole in poles.items()])


def fractional_curve(model: Any, seek: Signature, reject: Signature, items: Sequence[PersonaItem],
                     fractions: Sequence[float], sparsity: float, *, seed: int = 0, batch_size: int = 8,
                     progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Score the test ``items`` under :func:`fractional_mask` at each fraction (same items, paired),
    beside the base model and a random mask at the same sparsity. Returns one row per fraction (per-token
    margin toward seek with its interval, paired shift against base, seek accuracy) and the
    :func:`~persona_interp.stats.trend` of the per-item margins along the fractions.

    Example:
        >>> curve = fractional_curve(model, seek, reject, test, [0, .25, .5, .75, 1], sparsity=0.3)
        >>> curve["trend"]["increasing"]
    """
    fractions = sorted(float(f) for f in fractions)
    conditions: list[Condition] = [Condition()]
    conditions += [MaskCondition(f"fraction={f:g}", mask=fractional_mask(model, seek, reject, f, sparsity, **kwargs),
                                 regime="fractional") for f in fractions]
    conditions.append(MaskCondition(f"random@{sparsity}", regime="random",
                                    mask=random_mask(model, sparsity, seed=seed, like=conditions[1].mask)))
    ev = evaluate(model, items, conditions, persona=str(seek.meta.get("dataset")), batch_size=batch_size, progress=progress)
    base = ev.scores["base"].margin_mean
    rows = []
    for cond in conditions[1:]:
        s = ev.scores[cond.name]
        margin, shift, acc = mean_ci(s.margin_mean), paired_difference(s.margin_mean, base), proportion_ci(s.seek_wins)
        rows.append({"condition": cond.name, "fraction": cond.mask.meta.get("fraction"), "n": margin.n,
                     "margin": margin.value, "margin_low": margin.low, "margin_high": margin.high,
                     "shift": shift.value, "shift_low": shift.low, "shift_high": shift.high,
                     "accuracy_seek": acc.value, "accuracy_low": acc.low, "accuracy_high": acc.high})
    margins = torch.stack([ev.scores[c.name].margin_mean for c in conditions[1:-1]])
    t = trend(torch.tensor(fractions), margins)
    return {"sparsity": sparsity, "seed": seed, "rows": rows, "base_margin": mean_ci(base).to_dict(),
            "trend": {"spearman": t.spearman, "reversals": t.reversals, "significant_reversals": t.significant_reversals,
                      "slope": t.slope.to_dict(), "monotonic": t.monotonic, "increasing": t.increasing}}


def type_comparison(model: Any, axes: Mapping[str, tuple[Signature, Signature]], type_code: str, sparsity: float,
                    tests: Mapping[str, Sequence[PersonaItem]], *, seed: int = 0, batch_size: int = 8,
                    progress: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
    """Composed type mask vs the intersection of axis masks vs a type prompt, each with a random
    mask of the same sparsity, on every axis's test items. Each row gives, for one condition and
    axis, the accuracy toward the type's pole and the paired shift of the margin toward that pole
    against the base model, both with 95 % intervals.

    Example:
        >>> rows = type_comparison(model, axis_signatures, "INTJ", 0.3, {a: load_persona(a, "test") for a in axes})
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
            sparsity_of = cond.mask.sparsity() if isinstance(cond, MaskCondition) else 0.0
            rows.append({"type": type_code.upper(), "axis": axis, "pole": MBTI_AXES[axis][0 if pole == "seek" else 1],
                         "condition": cond.name, "sparsity": sparsity_of, "n": acc.n, "accuracy": acc.value,
                         "accuracy_low": acc.low, "accuracy_high": acc.high, "shift": shift.value,
                         "shift_low": shift.low, "shift_high": shift.high})
    return rows


def run_composition(model: Any, axes: Mapping[str, tuple[Signature, Signature]], *, type_code: str = "INTJ",
                    sparsity: float = 0.3, axis: str = "introversion_extraversion",
                    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), n_test: int | None = None, seed: int = 0,
                    figures_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The composition study on the MBTI axes' held-out test items: :func:`type_comparison` for
    ``type_code`` and the :func:`fractional_curve` of ``axis``; figures go to ``figures_dir``.

    Example:
        >>> study = run_composition(model, axis_signatures, type_code="INTJ", figures_dir="figures/composition")
    """
    tests = {}
    for name in TYPE_LETTERS:
        test = load_persona(name, "test")
        tests[name] = list(test.sample(n_test, seed=seed) if n_test else test)
    rows = type_comparison(model, axes, type_code, sparsity, tests, seed=seed, progress=progress)
    curve = fractional_curve(model, *axes[axis], tests[axis], fractions, sparsity, seed=seed, progress=progress)
    study = {"type": type_code.upper(), "sparsity": sparsity, "axis": axis, "seed": seed,
             "n_test": {name: len(items) for name, items in tests.items()}, "type_rows": rows, "curve": curve}
    if figures_dir:
        from .figures import plot_fraction_curve, plot_type_comparison      # matplotlib only when figures are asked for

        plot_type_comparison(rows, f"{figures_dir}/type_{type_code.upper()}_{sparsity}",
                             title=f"{type_code.upper()}: composed mask vs intersection vs prompt")
        poles = MBTI_AXES[axis]
        plot_fraction_curve(curve, f"{figures_dir}/fraction_{axis}_{sparsity}",
                            title=f"{axis}: fraction of '{poles[0]}' (1) vs '{poles[1]}' (0)")
    return study


def composition_markdown(study: dict[str, Any]) -> str:
    """The composition study's numbers as markdown tables."""
    t = study["curve"]["trend"]
    return "\n".join([
        f"## Composed type {study['type']} (ρ = {study['sparsity']}, seed {study['seed']})\n",
        "Shift = paired margin shift toward the type's pole against the base model (nats/token, t 95 % CI); "
        "accuracy toward the pole with a Wilson 95 % CI.\n",
        markdown_table(study["type_rows"], ["axis", "pole", "condition", "sparsity", "n", "accuracy", "shift"]),
        f"\n## Fractional persona: {study['axis']}\n",
        markdown_table(study["curve"]["rows"], ["condition", "n", "margin", "shift", "accuracy_seek"]),
        f"\nTrend of the per-item margin along the fraction: slope {t['slope']['value']:+.4f} "
        f"[{t['slope']['low']:+.4f}, {t['slope']['high']:+.4f}] nats/token per unit fraction (n = {t['slope']['n']}), "
        f"Spearman {t['spearman']:+.2f}, {t['reversals']} reversal(s) of the mean ({t['significant_reversals']} significant); "
        f"increasing: {t['increasing']}.\n"])
