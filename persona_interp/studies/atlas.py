"""Where a persona subnetwork sits, how opposing masks overlap, and whether its units are causal.

[`persona_atlas`][persona_interp.studies.atlas.persona_atlas] runs the whole analysis for one persona pair on
calibration data (fit split) and writes figures and circuitsvis pages: layer × map heatmaps, the top heads and
neurons, the layer-wise signature cosine, the overlap row of the paper's table, dose–response curves of top-k
against random heads / neurons (zero and mean ablation), and a steering vector at equal damage.
Units are ranked on calibration signatures; the causal curves are measured on held-out test items.
``AtlasConfig(causal=False)`` stops after the localisation (under a minute instead of an hour on 2 cores).

Examples:
    >>> atlas = persona_atlas(model, "power", AtlasConfig(n_calibration=8, n_neutral=2, causal=False), "figures/atlas",
    ...                       signatures=(sig_seek, sig_reject))
    >>> atlas.top_heads[0].layer >= 0, atlas.dose_response is None   # AtlasConfig(n_calibration=64, n_causal=24): with the causal curves
    (True, True)
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from persona_interp.analysis.causal import DoseRow, dose_response, equal_damage_multiplier, unit_mask
from persona_interp.analysis.diagnostics import OVERLAP_VARIANTS, GroupedOverlapRow, grouped_overlap, kind_sizes
from persona_interp.analysis.diagnostics import overlap_table
from persona_interp.analysis.localise import (
    head_divergence,
    layer_kind_grid,
    neuron_divergence,
    overlap_row,
    persona_specific_removal,
    signature_cosine_by_layer,
)
from persona_interp.data.personas import SIDES, calibration_split, load_neutral_texts, load_persona, persona_prompts
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.evaluation.stats import paired_difference
from persona_interp.interventions.steering import mean_difference_vector
from persona_interp.masks.builders import FamilyCache, contrastive_sparse_masks, contrastive_wanda_masks, magnitude_mask, wanda_mask
from persona_interp.masks.mask import fraction_differ_by, iou_by
from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import SystemPrompt, answer_ids, prompt_ids
from persona_interp.report.figures import plot_dose_response, plot_layer_curve, plot_layer_kind_heatmap, plot_overlap_bars, plot_unit_map
from persona_interp.report.results import Provenance
from persona_interp.report.study_results import AtlasStudy, EqualDamageComparison, Grid, RecordedAtlasConfig, SignatureData
from persona_interp.report.views import attention_heads_view, neuron_tokens_view
from persona_interp.signatures import Signature, collect_signatures
from persona_interp.studies.config import AtlasConfig


def persona_atlas(model: Any, persona: str, config: AtlasConfig, figures_dir: str | Path,
                  progress: bool = True, signatures: tuple[Signature, Signature] | None = None) -> AtlasStudy:
    """Run the analysis for ``persona`` and save figures (PNG + SVG) and circuitsvis HTML to
    ``figures_dir`` (existing files there are replaced: it is an output folder). Returns every
    number behind the figures. ``signatures`` (seek, reject) are reused if given (e.g. those the
    main job saved), otherwise collected on the fit split."""
    figures = Path(figures_dir)
    adapter = get_adapter(model)
    provenance = Provenance.collect(model, seed=config.seed)
    fit, _ = calibration_split(persona, fraction=config.validation_fraction, seed=config.seed, n_fit=config.n_calibration)
    if signatures is None:
        seek_sig, reject_sig = (collect_signatures(model, fit, side, batch_size=config.batch_size, progress=progress)
                                for side in SIDES)
    else:
        seek_sig, reject_sig = signatures
    rho = config.sparsity
    cw = contrastive_wanda_masks(model, seek_sig, reject_sig, rho, persona=persona)
    cs = contrastive_sparse_masks(model, seek_sig, reject_sig, rho, persona=persona)
    wanda_seek = wanda_mask(model, seek_sig, rho, persona=persona)
    magnitude = magnitude_mask(model, rho)
    overlap = [overlap_row(f"{persona} contrastive_wanda@{rho}", *cw), overlap_row(f"{persona} contrastive_sparse@{rho}", *cs),
               overlap_row(f"{persona} wanda seek vs magnitude@{rho}", wanda_seek, magnitude)]
    grids = {
        "differ_cw": (fraction_differ_by(*cw, "map"), "entries that differ (fraction)",
                      f"{persona}: opposing Contrastive-Wanda masks differ (ρ = {rho})"),
        "iou_removed_cw": (iou_by(*cw, "map", of="removed"), "IoU of removed weights",
                           f"{persona}: overlap of what the two poles remove (ρ = {rho})"),
        "persona_specific": (persona_specific_removal(wanda_seek, magnitude), "fraction of removals a magnitude mask keeps",
                             f"{persona}: persona-specific removals of the seek Wanda mask (ρ = {rho})"),
    }
    grid_values: dict[str, Grid] = {}
    for key, (per_map, label, title) in grids.items():
        grid, kinds = layer_kind_grid(per_map, adapter.n_layers)
        grid_values[key] = Grid(kinds=list(kinds), values=grid.tolist())
        plot_layer_kind_heatmap(grid, kinds, figures / f"{persona}_{key}", title=title, colorbar=label)
    cosine = signature_cosine_by_layer(seek_sig, reject_sig)
    plot_layer_curve(cosine, figures / f"{persona}_signature_cosine", ylabel="cosine(seek, reject) of mean input norms",
                     title=f"{persona}: how alike the two poles' signatures are, per layer")
    heads = head_divergence(model, seek_sig, reject_sig, *cw)
    neurons = neuron_divergence(model, seek_sig, reject_sig, *cw)
    atlas = AtlasStudy(persona=persona, config=RecordedAtlasConfig.model_validate(dataclasses.asdict(config)), fit_items=len(fit),
                       signature_data=[SignatureData.model_validate(dict(sig.meta, n_samples=sig.n_samples))
                                       for sig in (seek_sig, reject_sig)],
                       overlap=overlap, grids=grid_values, signature_cosine=cosine.tolist(), top_heads=heads[: config.n_top],
                       top_neurons=neurons[: config.n_top], provenance=provenance)
    plot_unit_map(heads, adapter.n_layers, adapter.n_heads, figures / f"{persona}_heads", unit_label="head",
                  title=f"{persona}: head divergence (mean |z| over the head's channels)")
    plot_unit_map(neurons, adapter.n_layers, adapter.d_mlp, figures / f"{persona}_neurons", unit_label="MLP neuron",
                  title=f"{persona}: neuron divergence (|z| of the activation)")

    test = load_persona(persona, "test").sample(min(config.n_causal, len(load_persona(persona, "test"))), seed=config.seed)
    example = test[0]
    texts = {side: prompt_ids(model.tokenizer, example.question) + answer_ids(model.tokenizer, example.answer(side))
             for side in SIDES}
    top_neurons = [(u.layer, u.unit) for u in neurons[:5]]
    top_heads = [(u.layer, u.unit) for u in heads[:4]]
    neuron_tokens_view(model, {f"{persona} — {side} answer": ids for side, ids in texts.items()}, top_neurons).save(
        figures / f"{persona}_top_neurons.html", force=True)
    attention_heads_view(model, texts["seek"], top_heads, title=f"{persona}: top persona heads on a seek answer").save(
        figures / f"{persona}_top_heads.html", force=True)
    if not config.causal:
        return atlas.model_copy(update={"provenance": provenance.done()})

    reference = DamageReference.build(model, load_neutral_texts()[: config.n_neutral], config.batch_size)
    systems: dict[str, SystemPrompt] = {"no prompt": None}
    if config.prompts:
        systems.update({f"{side} prompt": persona_prompts(persona, side)[0] for side in SIDES})
    dose: list[DoseRow] = []
    ranked_units = {"neuron": neurons, "head": heads}
    for kind in config.kinds:
        ranked = ranked_units[kind]
        ks = [k for k in config.ks if k <= len(ranked)]
        for mode in config.modes:
            rows = dose_response(model, list(test), ranked, kind, ks, mode=mode, signature=seek_sig if mode == "mean" else None,
                                 seeds=config.seeds, systems=systems, reference=reference, batch_size=config.batch_size,
                                 progress=progress)
            dose += rows
            plot_dose_response(rows, figures / f"{persona}_dose_{kind}_{mode}",
                               title=f"{persona}: ablating top-k persona {kind}s ({mode}) vs k random {kind}s, n = {len(test)} items")
    equal_damage = equal_damage_comparison(model, list(test), fit, neurons, max(config.ks), reference, config)
    return atlas.model_copy(update={"dose_response": dose, "equal_damage": equal_damage,
                                    "provenance": provenance.done()})


def overlap_study(model: Any, signatures: dict[str, tuple[Signature, Signature]], sparsities: list[float],
                  figures_dir: str | Path | None = None) -> list[GroupedOverlapRow]:
    """The overlap study: [`overlap_table`][persona_interp.analysis.diagnostics.overlap_table] like with like, for every
    persona pair and sparsity: per variant of
    [`OVERLAP_VARIANTS`][persona_interp.analysis.diagnostics.OVERLAP_VARIANTS] (per-pole Wanda, ReLU and softplus τ = 2
    Contrastive-Wanda, Contrastive-Sparse by the paper text's and code's rule) the share of entries the opposing
    masks differ in, overall / attention / MLP, ReLU rows with the range they differ in by construction. With
    ``figures_dir``, a bar chart per variant and sparsity and layer × map heatmaps of the ReLU Contrastive-Wanda
    difference per pair.

    Examples:
        >>> rows = overlap_study(model, {"power": (sig_seek, sig_reject)}, [0.3, 0.5])
        >>> len(rows), rows[0].variant                 # a pair × 2 sparsities × 5 variants
        (10, 'wanda (per pole)')
    """
    adapter = get_adapter(model)
    sizes = kind_sizes(adapter.maps)
    rows: list[GroupedOverlapRow] = []
    for persona, (seek, reject) in signatures.items():
        families = FamilyCache(model)                   # each variant ranked once for all sparsities
        for rho in sparsities:
            per_kind = overlap_table(model, seek, reject, rho, persona=persona, families=families)
            rows += grouped_overlap(per_kind, sizes, persona)
            if figures_dir is not None:
                cw = families.get(seek, reject, persona=persona, **OVERLAP_VARIANTS["contrastive_wanda relu"]).pair(rho)
                grid, kinds = layer_kind_grid(fraction_differ_by(*cw, "map"), adapter.n_layers)
                plot_layer_kind_heatmap(grid, kinds, Path(figures_dir) / f"overlap_{persona}_cw{rho}",
                                        colorbar="entries that differ (fraction)",
                                        title=f"{persona}: opposing ReLU Contrastive-Wanda masks (ρ = {rho})")
    if figures_dir is not None:
        for rho in sparsities:
            for variant in OVERLAP_VARIANTS:
                chosen = [r for r in rows if r.sparsity == rho and r.variant == variant]
                plot_overlap_bars(chosen, Path(figures_dir) / f"overlap_{variant_slug(variant)}_{rho}",
                                  title=f"{variant}, ρ = {rho}: opposing masks differ in")
    return rows


def variant_slug(variant: str) -> str:
    """A file-name form of an overlap variant's label: ``"contrastive_wanda softplus τ=2"`` → ``"contrastive_wanda_softplus_2"``."""
    return re.sub(r"[^0-9a-z_]+", "_", variant.lower()).strip("_")


def equal_damage_comparison(model: Any, test: list, fit: Any, neurons: list, k: int, reference: DamageReference,
                            config: AtlasConfig) -> EqualDamageComparison:
    """Zero-ablating the top-k persona neurons vs the mean-difference steering vector at the multiplier
    that costs the same KL on neutral text: paired margin shifts (seek − reject, nats/token) vs base."""
    adapter = get_adapter(model)
    layer = min(adapter.n_layers - 1, round(config.steering_layer * adapter.n_layers))
    base = score_ab(model, test, batch_size=config.batch_size, progress=False).margin_mean
    mask = unit_mask("neuron", [(u.layer, u.unit) for u in neurons[:k]])
    with mask.apply(model):
        ablated = score_ab(model, test, batch_size=config.batch_size, progress=False).margin_mean
        target_kl = reference.measure(model).kl
    vector = mean_difference_vector(model, fit, layer, batch_size=config.batch_size)
    alpha, kl = equal_damage_multiplier(model, vector, reference, target_kl)
    shifts = {}
    for name, sign in (("seek", 1.0), ("reject", -1.0)):
        with vector.apply(model, multiplier=sign * alpha):
            steered = score_ab(model, test, batch_size=config.batch_size, progress=False).margin_mean
        diff = paired_difference(steered, base)
        shifts[name] = [diff.value, diff.low, diff.high]
    diff = paired_difference(ablated, base)
    return EqualDamageComparison(k=k, ablation_kl=target_kl, steering_layer=layer, steering_multiplier=alpha, steering_kl=kl,
                                 steer_seek_shift=shifts["seek"], steer_reject_shift=shifts["reject"],
                                 ablation_shift=[diff.value, diff.low, diff.high], n=len(test))
