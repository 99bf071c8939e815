"""What a persona mask is made of, compared like with like: overlap of opposing masks per method, the
per-sample statistic (the paper's norm against the length-fair RMS), and stability over calibration halves.

* [`overlap_table`][persona_interp.analysis.diagnostics.overlap_table] — how much the seek and reject masks differ,
  per module kind, for per-pole Wanda, Contrastive-Wanda under ReLU (beside its 2ρ construction bound) and softplus (τ
  = 2, the paper code's option), and Contrastive-Sparse by the paper text's and the paper code's rule;
* [`statistic_table`][persona_interp.analysis.diagnostics.statistic_table] — per statistic, the share of channels with
  z > 0, the poles' mean covered tokens and which pole's ReLU Contrastive-Wanda mask breaks the model (perplexity on
  neutral text);
* [`stability`][persona_interp.analysis.diagnostics.stability] — masks from two disjoint halves of the calibration
  items, over several draws: how much a pole's mask differs between halves beside how much the poles differ, and the
  validation seek − reject effect over the halves.

Each returns typed rows ([`OverlapRow`][persona_interp.analysis.diagnostics.OverlapRow],
[`StatisticRow`][persona_interp.analysis.diagnostics.StatisticRow],
[`Stability`][persona_interp.analysis.diagnostics.Stability]), as a run's results keep them.

Examples:
    >>> rows = overlap_table(model, sig_seek, sig_reject, 0.3)
    >>> [row.variant for row in rows if row.kind == "all"][:2]
    ['wanda (per pole)', 'contrastive_wanda relu']
    >>> summary = stability(model, sig_seek, sig_reject, 0.3, validation, draws=2).summary
    >>> summary.n_halves, summary.within_pole < summary.between_poles     # 2 draws × 2 halves
    (4, True)
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from persona_interp.data.personas import SIDES, PersonaItem, Side
from persona_interp.evaluation.rows import Record, Row
from persona_interp.evaluation.scoring import DamageReference, Measured, score_ab
from persona_interp.evaluation.stats import mean_ci
from persona_interp.interventions.ablation import ablate
from persona_interp.masks.builders import (
    FamilyCache,
    MaskFamily,
    abs_weight,
    contrast,
    kept_count,
    mask_family,
    relu_differ_range,
    removed_zero_share,
)
from persona_interp.masks.mask import fraction_differ, fraction_differ_by
from persona_interp.masks.registry import MethodInputs, method_spec, methods
from persona_interp.progress import stage
from persona_interp.signatures import Signature

OVERLAP_VARIANTS: dict[str, dict[str, Any]] = {      # label -> mask_family options, from the registry's variants
    label: {**spec.fixed, **options} for spec in methods(poles=True, available={"signatures"}) if spec.fixed
    for label, options in spec.variants.items()}


ATTENTION_KINDS, MLP_KINDS = ("q", "k", "v", "o"), ("gate", "up", "down")


class OverlapRow(Row):
    """How much opposing masks of one variant differ in one kind of map (or ``all``); ReLU rows carry the range
    they differ in by construction and the share ``p`` of channels with z > 0
    ([`overlap_table`][persona_interp.analysis.diagnostics.overlap_table])."""

    variant: str
    kind: str
    sparsity: float
    differ: float
    bound_low: float | None = None
    bound_high: float | None = None
    p: float | None = None


class GroupedOverlapRow(Row):
    """How much the opposing masks of one variant differ for a persona ``pair`` at one sparsity, overall and in
    the attention and MLP maps (each kind weighted by its entries); ReLU rows carry the overall range they differ
    in by construction ([`grouped_overlap`][persona_interp.analysis.diagnostics.grouped_overlap])."""

    pair: str
    variant: str
    sparsity: float
    overall: float
    attn: float
    mlp: float
    bound_low: float | None = None
    bound_high: float | None = None


class StatisticRow(Row):
    """One per-sample statistic ([`statistic_table`][persona_interp.analysis.diagnostics.statistic_table])."""

    statistic: str
    sparsity: float
    positive_share: float
    seek_tokens: float
    reject_tokens: float
    seek_perplexity_ratio: float
    seek_kl: float
    reject_perplexity_ratio: float
    reject_kl: float
    breaks: Side


class StabilityDraw(Row):
    """One draw of two disjoint calibration halves ([`stability`][persona_interp.analysis.diagnostics.stability])."""

    draw: int
    half_a: list[int]
    half_b: list[int]
    seek_between_halves: float
    reject_between_halves: float
    seek_vs_reject_in_half: float
    separation_a: float
    separation_b: float


class StabilitySummary(Row):
    """Stability over the draws: within a pole against between the poles, and the halves' validation separation."""

    method: str
    sparsity: float
    draws: int
    half_size: int
    within_pole: float
    between_poles: float
    between_poles_full: float
    noise: bool
    separation: float
    separation_low: float
    separation_high: float
    n_halves: int


class Stability(Record):
    """[`stability`][persona_interp.analysis.diagnostics.stability]'s draws and their summary."""

    draws: list[StabilityDraw]
    summary: StabilitySummary


def kind_sizes(maps: Sequence[Any]) -> dict[str, int]:
    """Weight entries per module kind over ``maps`` (e.g. ``get_adapter(model).maps``)."""
    sizes: dict[str, int] = {}
    for m in maps:
        sizes[m.kind] = sizes.get(m.kind, 0) + m.n_in * m.n_out
    return sizes


def grouped_overlap(rows: Sequence[OverlapRow], sizes: dict[str, int], pair: str) -> list[GroupedOverlapRow]:
    """The per-kind rows of [`overlap_table`][persona_interp.analysis.diagnostics.overlap_table] (of the persona
    ``pair``) folded into one row per variant and sparsity: ``overall``, ``attn`` and ``mlp`` shares of entries that
    differ (each kind weighted by its entries, ``sizes`` from
    [`kind_sizes`][persona_interp.analysis.diagnostics.kind_sizes]), and for ReLU rows the overall construction range
    ``bound_low`` / ``bound_high``. A variant and sparsity without an ``all`` row, or without attention or MLP maps, is an error
    naming it.

    Examples:
        >>> rows = grouped_overlap(overlap_table(model, sig_seek, sig_reject, 0.3), kind_sizes(adapter.maps), "power")
        >>> rows[0].variant, rows[0].bound_low is None, rows[1].bound_low is None     # per-pole Wanda has no bound
        ('wanda (per pole)', True, False)
    """
    overall: dict[tuple[str, float], OverlapRow] = {}
    weighted: dict[tuple[str, float], dict[str, list[float]]] = {}
    for r in rows:
        key = (r.variant, r.sparsity)
        totals = weighted.setdefault(key, {})
        if r.kind == "all":
            overall[key] = r
        for group, kinds in (("attn", ATTENTION_KINDS), ("mlp", MLP_KINDS)):
            if r.kind in kinds:
                total = totals.setdefault(group, [0.0, 0.0])
                total[0] += r.differ * sizes[r.kind]
                total[1] += sizes[r.kind]
    grouped = []
    for key, totals in weighted.items():
        missing = [name for name, there in (("all", key in overall), ("attention", "attn" in totals), ("MLP", "mlp" in totals))
                   if not there]
        if missing:
            raise ValueError(f"grouped_overlap: variant {key[0]!r} at sparsity {key[1]} has no {' or '.join(missing)} rows")
        row = GroupedOverlapRow(pair=pair, variant=key[0], sparsity=key[1], overall=overall[key].differ,
                                attn=totals["attn"][0] / totals["attn"][1], mlp=totals["mlp"][0] / totals["mlp"][1])
        if overall[key].bound_low is not None:
            row = row.replace(bound_low=overall[key].bound_low, bound_high=overall[key].bound_high)
        grouped.append(row)
    return grouped


def positive_share(seek: Signature, reject: Signature, maps: Sequence[Any]) -> dict[str, float]:
    """Share of input channels with z > 0 (seek's statistic above reject's), per module kind and ``all``."""
    counts: dict[str, list[int]] = {}
    for m in maps:
        z = contrast(seek, reject, m.name)
        for key in (m.kind, "all"):
            entry = counts.setdefault(key, [0, 0])
            entry[0] += int((z > 0).sum())
            entry[1] += z.numel()
    return {key: num / den for key, (num, den) in counts.items()}


def _family(model: Any, families: FamilyCache | None, seek: Signature, reject: Signature, **options: Any) -> MaskFamily:
    """The family from ``families`` when given (ranked once per study), else ranked anew."""
    return families.get(seek, reject, **options) if families is not None else mask_family(model, seek=seek, reject=reject, **options)


def overlap_table(model: Any, seek: Signature, reject: Signature, sparsity: float, *,
                  persona: str | None = None, families: FamilyCache | None = None) -> list[OverlapRow]:
    """One row per method variant of [`OVERLAP_VARIANTS`][persona_interp.analysis.diagnostics.OVERLAP_VARIANTS] and
    module kind (and ``all``): the fraction of entries in which the seek and reject masks differ; ReLU rows also carry
    ``bound_low`` / ``bound_high`` (the range they must differ in by construction,
    [`relu_differ_range`][persona_interp.masks.builders.relu_differ_range], weighted by map size: equal, 2ρ, where
    every map has ρ ≤ p ≤ 1−ρ) and ``p``.

    Examples:
        >>> [row.variant for row in overlap_table(model, sig_seek, sig_reject, 0.3) if row.kind == "all"]
        ['wanda (per pole)', 'contrastive_wanda relu', 'contrastive_wanda softplus τ=2', 'contrastive_sparse (text: disjoint)',
         'contrastive_sparse (code: sequential)']
    """
    rows = []
    for label, options in OVERLAP_VARIANTS.items():
        family = _family(model, families, seek, reject, persona=persona, **options)
        a, b = family.pair(sparsity)
        differ = fraction_differ_by(a, b, "kind")
        differ["all"] = fraction_differ(a, b)
        bound: dict[str, list[float]] = {}
        if options.get("phi") == "relu":
            for m in family.maps:
                z = contrast(seek, reject, m.name)
                removed = 1 - kept_count(m.n_in, sparsity) / m.n_in          # ρ after the floor of k
                zeros = removed_zero_share(abs_weight(model, m.name), sparsity)    # removed by both poles
                low, high = relu_differ_range(removed, float((z > 0).double().mean()), min(zeros, removed))
                for key in (m.kind, "all"):
                    entry = bound.setdefault(key, [0.0, 0.0, 0.0])
                    entry[0] += low * m.n_in * m.n_out
                    entry[1] += high * m.n_in * m.n_out
                    entry[2] += m.n_in * m.n_out
        share = positive_share(seek, reject, family.maps) if bound else {}
        for kind, value in differ.items():
            row = OverlapRow(variant=label, kind=kind, sparsity=sparsity, differ=value)
            if bound:
                row = row.replace(bound_low=bound[kind][0] / bound[kind][2], bound_high=bound[kind][1] / bound[kind][2],
                                  p=share[kind])
            rows.append(row)
    return rows


def statistic_table(model: Any, seek: Signature, reject: Signature, sparsity: float, reference: DamageReference, *,
                    persona: str | None = None, families: FamilyCache | None = None) -> list[StatisticRow]:
    """Per per-sample statistic (``norm``, the paper's; ``rms``, length-fair): the share of channels with
    z > 0, each pole's mean covered tokens per sample, and the damage (perplexity ratio to the base model, KL)
    of the ReLU Contrastive-Wanda seek and reject masks at ``sparsity``; ``breaks`` names the pole whose mask
    raises perplexity more.

    Examples:
        >>> rows = statistic_table(model, sig_seek, sig_reject, 0.3, DamageReference.build(model, load_neutral_texts()[:2]))
        >>> [(row.statistic, row.breaks in ("seek", "reject")) for row in rows]
        [('norm', True), ('rms', True)]
    """
    base = reference.measure(model).perplexity
    rows = []
    for statistic in ("norm", "rms"):
        s, r = seek.with_statistic(statistic), reject.with_statistic(statistic)
        family = _family(model, families, s, r, persona=persona, **method_spec("contrastive_wanda").fixed)
        damage: dict[Side, Measured] = {}
        for side, mask in zip(SIDES, family.pair(sparsity)):
            with ablate(model, mask):
                damage[side] = reference.measure(model)
        ratio = {side: damage[side].perplexity / base for side in SIDES}
        rows.append(StatisticRow(statistic=statistic, sparsity=sparsity, positive_share=positive_share(s, r, family.maps)["all"],
                                 seek_tokens=seek.n_tokens / seek.n_samples, reject_tokens=reject.n_tokens / reject.n_samples,
                                 seek_perplexity_ratio=ratio["seek"], seek_kl=damage["seek"].kl,
                                 reject_perplexity_ratio=ratio["reject"], reject_kl=damage["reject"].kl,
                                 breaks="seek" if ratio["seek"] > ratio["reject"] else "reject"))
    return rows


def stability(model: Any, seek: Signature, reject: Signature, sparsity: float, validation: Sequence[PersonaItem], *,
              draws: int = 3, seed: int = 0, method: str = "contrastive_wanda", batch_size: int = 8,
              persona: str | None = None, families: FamilyCache | None = None, progress: bool = False) -> Stability:
    """Split the calibration items into two disjoint halves ``draws`` times (seeded; both poles' signatures
    come from the same items, so they share the split) and build ``method``'s masks from each half
    ([`Signature.subset`][persona_interp.signatures.Signature.subset], so signatures need ``per_sample=True``). Per
    draw: how much the seek masks of the two halves differ, the same for reject, and how much seek differs from reject
    within a half; and each half's seek − reject separation on ``validation``. The summary puts the within-pole
    difference beside the between-pole one (``noise`` when a pole differs between halves of its own data at least as
    much as from the other pole) and the separation's mean and t interval over all halves.

    Examples:
        >>> stability(model, sig_seek, sig_reject, 0.3, validation, draws=2).summary.half_size   # of the 8 items
        4
    """
    n = seek.n_samples
    if reject.n_samples != n or n < 4:
        raise ValueError(f"stability needs both poles' signatures over the same items, at least 4 (got {n}, {reject.n_samples})")
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    validation = list(validation)
    spec = method_spec(method)
    full = spec.family(model, MethodInputs(seek, reject, persona=persona), families=families).pair(sparsity)
    rows: list[StabilityDraw] = []
    separations: list[float] = []
    with stage("stability", total=draws, progress=progress) as bar:
        for draw in range(draws):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + draw)).tolist()
            halves = (sorted(order[: n // 2]), sorted(order[n // 2: 2 * (n // 2)]))
            pairs = [spec.family(model, MethodInputs(seek.subset(h), reject.subset(h), persona=persona)).pair(sparsity)
                     for h in halves]
            for pair in pairs:
                margins = []
                for mask in pair:
                    with ablate(model, mask):
                        margins.append(score_ab(model, validation, batch_size=batch_size).margin_mean)
                separations.append(float((margins[0] - margins[1]).mean()))
            rows.append(StabilityDraw(draw=draw, half_a=halves[0], half_b=halves[1],
                                      seek_between_halves=fraction_differ(pairs[0][0], pairs[1][0]),
                                      reject_between_halves=fraction_differ(pairs[0][1], pairs[1][1]),
                                      seek_vs_reject_in_half=(fraction_differ(*pairs[0]) + fraction_differ(*pairs[1])) / 2,
                                      separation_a=separations[-2], separation_b=separations[-1]))
            bar.update()
    within = sum(r.seek_between_halves + r.reject_between_halves for r in rows) / (2 * draws)
    between = sum(r.seek_vs_reject_in_half for r in rows) / draws
    effect = mean_ci(torch.tensor(separations, dtype=torch.float64))
    summary = StabilitySummary(method=method, sparsity=sparsity, draws=draws, half_size=n // 2, within_pole=within,
                               between_poles=between, between_poles_full=fraction_differ(*full), noise=within >= between,
                               separation=effect.value, separation_low=effect.low, separation_high=effect.high,
                               n_halves=len(separations))
    return Stability(draws=rows, summary=summary)
