"""Markdown: the generic table and each study's report text."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, Union, runtime_checkable

from pydantic import BaseModel

from persona_interp.analysis.diagnostics import GroupedOverlapRow
from persona_interp.analysis.localise import UnitDivergence
from persona_interp.analysis.regimes import RegimeComparison
from persona_interp.data.files import write_text
from persona_interp.evaluation.rows import (
    BudgetWinner,
    BudgetWinnerRow,
    ControlRow,
    EqualDamage,
    EqualDamageRow,
    NoPick,
    SearchRow,
)
from persona_interp.evaluation.stats import MIN_N
from persona_interp.report.results import NOT_RECORDED, Diagnostics, PersonaResult, Provenance, RunResults, Used, now, parse_results
from persona_interp.report.study_results import AtlasStudy, CompositionStudy, RegimesStudy
from persona_interp.report.summary import diagnostics_by_persona, summary_tables

Tabular = Union[Mapping[str, Any], BaseModel, UnitDivergence]     # a row of a table: a typed row, a unit or a plain mapping


def overlap_markdown(rows: Sequence[GroupedOverlapRow]) -> str:
    """The like-for-like overlap table as markdown (ReLU rows with the range they differ in by construction)."""
    lines = ["| persona pair | variant | ρ | differ overall | attention | MLP | by construction |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.pair} | {r.variant} | {r.sparsity} | {100 * r.overall:.2f} % | {100 * r.attn:.2f} % | "
              f"{100 * r.mlp:.2f} % | " + (f"{100 * r.bound_low:.1f}–{100 * r.bound_high:.1f} % |"
                                           if r.bound_low is not None and r.bound_high is not None else "|")
              for r in rows]
    return "\n".join(lines) + "\n"


def made_by(provenance: Provenance | None) -> str:
    """A study report's line on what computed it: the model, weights, dtype, device and CPU, the revision and when.

    Examples:
        >>> made_by(None)
        'Model, dtype, CPU and revision: not recorded (a file from before they were).'
    """
    if provenance is None:
        return f"Model, dtype, CPU and revision: {NOT_RECORDED} (a file from before they were)."
    return (f"{provenance.header()} Revision `{provenance.revision}`, seed {provenance.seed}, "
            f"{provenance.started} to {provenance.finished or 'unfinished'}.")


def atlas_markdown(atlas: AtlasStudy) -> str:
    """A short markdown summary of one atlas run (tables of the numbers behind the figures)."""
    sizes = " / ".join(f"{d.side} {d.n_samples}" for d in atlas.signature_data)
    lines = [f"## {atlas.persona}: where the persona sits (signatures of {sizes} calibration items)\n",
             made_by(atlas.provenance) + "\n",
             "| masks | differ overall | differ attention | differ MLP |", "|---|---|---|---|"]
    lines += [f"| {r.pair} | {100 * r.overall:.2f} % | {100 * r.attn:.2f} % | {100 * r.mlp:.2f} % |" for r in atlas.overlap]
    cos = atlas.signature_cosine
    lines += ["", f"Signature cosine (seek vs reject) per layer: min {min(cos):.4f}, first layer {cos[0]:.4f}, last layer {cos[-1]:.4f}.", "",
              "| top heads (layer, head) | divergence | CW weights differ |", "|---|---|---|"]
    lines += [f"| L{u.layer}H{u.unit} | {u.divergence:.3f} | {100 * u.weights_differ:.2f} % |" for u in atlas.top_heads]
    lines += ["", "| top neurons (layer, neuron) | divergence | CW weights differ |", "|---|---|---|"]
    lines += [f"| L{u.layer}N{u.unit} | {u.divergence:.3f} | {100 * u.weights_differ:.2f} % |" for u in atlas.top_neurons]
    if atlas.dose_response is None or atlas.equal_damage is None:
        return "\n".join(lines + ["", "Localisation only: no causal ablations in this run (`AtlasConfig(causal=False)`).", ""])
    lines += ["", "Dose–response (paired margin shift vs unablated, nats/token, 95 % CI; random = mean over seeds):", "",
              "| kind | mode | system | k | top-k shift | random shift (mean [min, max] over seeds) | top-k ppl change |",
              "|---|---|---|---|---|---|---|"]
    rows = atlas.dose_response
    for r in (r for r in rows if r.selection == "top"):
        key = (r.kind, r.mode, r.system, r.k)
        rand = [x.shift for x in rows if x.selection == "random" and (x.kind, x.mode, x.system, x.k) == key]
        rand_text = f"{sum(rand) / len(rand):+.3f} [{min(rand):+.3f}, {max(rand):+.3f}]" if rand else "—"
        change = r.perplexity_change if r.perplexity_change is not None else float("nan")
        lines.append(f"| {r.kind} | {r.mode} | {r.system} | {r.k} | {r.estimate('shift').signed(3)} | {rand_text} | {100 * change:+.1f} % |")
    e = atlas.equal_damage
    lines += ["", f"Equal damage: zero-ablating the top {e.k} neurons costs KL {e.ablation_kl:.4f} and shifts the margin by "
              f"{e.shift('ablation').signed(3)}; the mean-difference vector at layer {e.steering_layer} with the same KL "
              f"({e.steering_kl:.4f}, α = {e.steering_multiplier:.2f}) shifts it by {e.shift('steer_seek').signed(3)} (+α) and "
              f"{e.shift('steer_reject').signed(3)} (−α), n = {e.n} items (vector fit on {atlas.fit_items} calibration items).", ""]
    return "\n".join(lines)


def atlas_summary_markdown(atlases: Sequence[AtlasStudy], n_units: int = 3) -> str:
    """One row per persona pair: how alike the poles' signatures are, how much the opposing
    Contrastive-Wanda masks differ, the top ``n_units`` heads and neurons, the layers of all ranked neurons
    and, where the atlas measured it, the margin shift of zero-ablating the top-k neurons beside k random ones.

    Examples:
        >>> from persona_interp.report.study_results import load_atlas
        >>> print(atlas_summary_markdown([load_atlas(p) for p in sorted(Path("reports/atlas").glob("*.json"))]))
        | persona pair | min signature cosine (layer) | CW masks differ (attn / MLP) | top heads | top neurons | ...
        |---|---|---|---|---|---|---|
        | hallucination | ...
        | introversion_extraversion | ...
    """
    lines = ["| persona pair | min signature cosine (layer) | CW masks differ (attn / MLP) | top heads | top neurons | layers of the top neurons "
             "| zero-ablating the top-k neurons: shift (random) |", "|---|---|---|---|---|---|---|"]
    for atlas in atlases:
        cosine = atlas.signature_cosine
        low = min(range(len(cosine)), key=cosine.__getitem__)
        cw = atlas.overlap[0]
        heads = ", ".join(f"L{u.layer}H{u.unit} ({u.divergence:.2f})" for u in atlas.top_heads[:n_units])
        neurons = ", ".join(f"L{u.layer}N{u.unit} ({u.divergence:.2f})" for u in atlas.top_neurons[:n_units])
        layers = sorted(u.layer for u in atlas.top_neurons)
        lines.append(f"| {atlas.persona} | {cosine[low]:.4f} (L{low}) | "
                     f"{100 * cw.overall:.1f} % ({100 * cw.attn:.1f} / {100 * cw.mlp:.1f}) "
                     f"| {heads} | {neurons} | {layers[0]}–{layers[-1]} (median {layers[len(layers) // 2]}) | {_largest_k_neurons(atlas)} |")
    return "\n".join(lines) + "\n"


def _largest_k_neurons(atlas: AtlasStudy) -> str:
    """``k = 64: +0.43 [+0.24, +0.61] (random +0.03)`` for the largest k of the zero-ablation, no-prompt neuron curve."""
    rows = [r for r in atlas.dose_response or [] if (r.kind, r.mode, r.system) == ("neuron", "zero", "no prompt")]
    if not rows:
        return "not measured"
    k = max(r.k for r in rows)
    top = next(r for r in rows if r.k == k and r.selection == "top")
    random = [r.shift for r in rows if r.k == k and r.selection == "random"]
    return f"k = {k}: {top.estimate('shift').signed()} (random {sum(random) / len(random):+.2f})"


def composition_markdown(study: CompositionStudy) -> str:
    """The composition study's numbers as markdown tables.

    Examples:
        >>> from persona_interp.report.study_results import load_composition
        >>> text = composition_markdown(load_composition("reports/composition.json"))
        >>> text.startswith("## Composed type INTJ (ρ = 0.3, seed 0)"), "slope +1.0042 [+0.5443, +1.4641]" in text
        (True, True)
    """
    t = study.curve.trend
    return "\n".join([
        f"## Composed type {study.type} (ρ = {study.sparsity}, seed {study.seed})\n",
        made_by(study.provenance) + "\n",
        "Shift = paired margin shift toward the type's pole against the base model (nats/token, t 95 % CI); "
        "accuracy toward the pole with a Wilson 95 % CI.\n",
        markdown_table(study.type_rows, ["axis", "pole", "condition", "sparsity", "n", "accuracy", "shift"]),
        f"\n## Fractional persona: {study.axis}\n",
        markdown_table(study.curve.rows, ["condition", "n", "margin", "shift", "accuracy_seek"]),
        f"\nTrend of the per-item margin along the fraction: slope {t.slope.signed(4)} nats/token per unit fraction "
        f"(n = {t.slope.n}), Spearman {t.spearman:+.2f}, {t.reversals} reversal(s) of the mean ({t.significant_reversals} "
        f"significant); increasing: {t.increasing}.\n"])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", "<br>")     # a cell stays one cell (generated text)


def markdown_table(rows: Sequence[Tabular], columns: Sequence[str] | None = None) -> str:
    """Rows (typed rows, [`rows`][persona_interp.evaluation.rows], units or mappings) as a GitHub markdown table; ``x``
    with ``x_low``/``x_high`` columns prints as ``x [low, high]``; a field a row lacks is an empty cell.

    Examples:
        >>> print(markdown_table([{"pair": "prompt", "difference": 0.5, "difference_low": 0.25, "difference_high": 0.75}]))
        | pair | difference |
        |---|---|
        | prompt | 0.500 [0.250, 0.750] |
        <BLANKLINE>
    """
    if not rows:
        return "(no rows)\n"
    plain = [row.model_dump() if isinstance(row, BaseModel) else dataclasses.asdict(row) if isinstance(row, UnitDivergence) else row
             for row in rows]
    columns = list(columns or [c for c in plain[0] if not c.endswith(("_low", "_high"))])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in plain:
        cells = []
        for c in columns:
            cell = _fmt(row.get(c, ""))
            if f"{c}_low" in row:
                cell += f" [{_fmt(row[c + '_low'])}, {_fmt(row[c + '_high'])}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_word(verdict: bool | None) -> str:
    """A verdict as printed: ``True`` / ``False``, or ``undefined (n < 2)`` when its interval is (``None``)."""
    return f"undefined (n < {MIN_N})" if verdict is None else str(verdict)


def control_rows(controls: Sequence[ControlRow]) -> list[dict[str, Any]]:
    """[`control_comparison`][persona_interp.evaluation.evaluate.control_comparison] rows as printed: the verdicts in
    words."""
    return [{**c.model_dump(), "beats_control": verdict_word(c.beats_control),
             **({"beats_matched": verdict_word(c.beats_matched)} if c.matched_control is not None else {})}
            for c in controls]


TABLE_COLUMNS = ["condition", "side", "n", "accuracy", "margin", "shift", "flips_gained", "flips_lost", "perplexity_change", "kl"]


@runtime_checkable
class RunConfig(Protocol):
    """What the report needs of a run's configuration (a
    [`ReproduceConfig`][persona_interp.studies.config.ReproduceConfig]: the report sits below the studies and does not
    import them)."""

    @property
    def personas(self) -> Sequence[str]: ...


def write_report(out_dir: Path, figures_dir: Path, config: RunConfig, results: RunResults) -> Path:
    """Stamp ``results`` finished now (and complete when every persona of ``config`` is), write ``results.json``
    and render ``report.md`` ([`render_report`][persona_interp.report.markdown.render_report])."""
    results.finished = now()
    results.provenance = results.provenance.model_copy(update={"finished": results.finished})
    done = [p for p in config.personas if p in results.personas]
    results.complete = done == list(config.personas)
    results.save(out_dir / "results.json")
    return render_report(results, out_dir / "report.md", figures_dir)


def render_report(results: RunResults | dict[str, Any], report: Path, figures_dir: Path) -> Path:
    """Write the report of a main-job run (its results, or their dict, validated) to ``report``: header, the
    summary across personas, then one section per persona (figures linked from ``figures_dir``).

    Examples:
        >>> render_report(load_results("reports/results.json"), Path("report.md"), Path("figures"))
        PosixPath('report.md')
    """
    typed = results if isinstance(results, RunResults) else parse_results(results)
    config = typed.config
    done = [p for p in config.personas if p in typed.personas]
    status = "" if typed.complete else (f"**Partial run**: {len(done)} of {len(config.personas)} personas "
                                        f"finished ({', '.join(done) or 'none yet'}).\n\n")
    revisions = sorted({typed.personas[p].revision for p in done} or {typed.revision})
    header = (f"# persona_interp results\n\n{status}{_provenance_lines(typed, done)}Revision "
              f"{', '.join(f'`{r}`' for r in revisions)}, seed {config.seed}, this run {typed.started} → {typed.finished}.\n\n"
              f"Config: `{json.dumps(config.model_dump())}`\n\n" + REPORT_LEGEND)
    sections = [summary_markdown(typed)] if done else []
    if diagnostics_by_persona(typed):
        sections.append(f"\n![stability across personas]({os.path.relpath(figures_dir / 'stability.png', report.parent)})\n")
    for persona in done:
        sections.append(_persona_section(persona, typed.personas[persona], figures_dir / f"{persona}_accuracy.png",
                                         report.parent))
    write_text(report, header + "\n".join(sections))
    return report


def _provenance_lines(results: RunResults, done: list[str]) -> str:
    """The model, weights, dtype, device and machine that computed the personas: one line when they share them
    (the usual case), else one line per persona (a run resumed with ``allow_mixed``)."""
    by_persona = {p: results.personas[p].provenance.header() for p in done}
    lines = list(dict.fromkeys(by_persona.values())) or [results.provenance.header()]
    if len(lines) == 1:
        return lines[0] + " "
    return ("**Mixed set-ups** (resumed with `--allow-mixed`):\n\n" +
            "".join(f"- {p}: {line}\n" for p, line in by_persona.items()) + "\n")


SUMMARY_TEXTS = {
    "winners": "Which regime wins at each damage budget (each regime's validation pick within the budget on the selection "
               "texts, test seek − reject in nats/token; `KL`: its damage on the reported neutral texts, `over` where that "
               "exceeds the budget; `lead`: paired difference to the runner-up; `by reported-text KL`: the winner when the "
               "budget is enforced on the reported texts instead), and the best mask within the same budget:",
    "paper": "The paper's mask rows (ρ from the config, Contrastive-Wanda): seek − reject of the mask alone and with the "
             "same pole's prompt (the paper's protocol), what the mask adds to the prompt, whether each pole's mask beats a "
             "random mask of the same sparsity (alone; with the prompt){matched}, and each pole's damage:",
    "overlap": "Opposing masks, like with like: share of entries where seek and reject differ over all maps:",
    "statistic": "The per-sample statistic: share of channels with z > 0, mean covered tokens, and which pole's ReLU "
                 "Contrastive-Wanda mask breaks the model:",
    "stability": "Stability: a pole's Contrastive-Wanda mask between two disjoint halves of its calibration data, against "
                 "the two poles; validation seek − reject over the halves:",
}


def across_personas_markdown(results: RunResults) -> str:
    """The across-persona tables of [`summary_tables`][persona_interp.report.summary.summary_tables] as markdown, each
    after its text: the body of the report's "Across personas" section (empty when no table has rows).

    Examples:
        >>> print(across_personas_markdown(load_results("reports/results.json")).splitlines()[3])
        | persona | budget | winner | effect | KL | lead | by reported-text KL | best mask | best mask + prompt |
    """
    parts = []
    for name, rows in summary_tables(results).items():
        if rows:
            matched = any("beats damage-matched random" in row for row in rows)
            text = SUMMARY_TEXTS[name].format(matched=" and the random mask of equal damage on the selection texts (alone)"
                                              if matched else "")
            parts += [f"\n{text}\n", markdown_table(rows)]
    return "\n".join(parts)


def summary_markdown(results: RunResults) -> str:
    """The report's "Across personas" section: its heading and
    [`across_personas_markdown`][persona_interp.report.markdown.across_personas_markdown]."""
    tables = across_personas_markdown(results)
    return "\n## Across personas\n" + ("\n" + tables if tables else "")


REPORT_LEGEND = (
    "Accuracy: the paper's A/B protocol (summed answer log-prob decides), Wilson 95 % interval. "
    "Margin: mean per-token log-prob of the row's side minus the other side (nats/token), t 95 % interval. "
    "Shift: paired difference of that margin against the base model on the same items. "
    "Flips: items whose decision moved to (gained) / away from (lost) the row's side vs base. "
    "Damage on the neutral set: relative perplexity change and mean KL(base ‖ condition) per token (nats); "
    "prompt and RAG conditions leave the weights unchanged, so their damage on the (prompt-free) neutral set is 0 by construction.\n")


def _best(table: Sequence[SearchRow]) -> str:
    """What a search's reported best is: unbudgeted when every candidate was scored, else the best of those
    within the largest budget (the search does not score a candidate over every budget)."""
    unscored = sum(1 for row in table if row.scored is False)
    if unscored == len(table):
        return "none within the largest budget (none scored); least damaging"
    return "unbudgeted best" if not unscored else f"best within the largest budget ({unscored} over it, not scored)"


def _tuning_lines(used: Used) -> list[str]:
    """What each regime's search on the validation split tried and picked."""
    lines = [f"\nTuned on {used.validation_items} validation items (never a test item), damage during the searches on "
             f"{used.selection_neutral_texts or 0} neutral texts apart from the reported ones; signatures and fitting on "
             f"{used.fit_items} calibration items"
             + (f" and {used.fit_neutral_texts} further neutral texts (the damage-aware masks' retain terms, never a "
                "selection or reported text)" if used.fit_neutral_texts else "")
             + (f"; a second damage measure on {used.other_texts} of the other personas' questions and answers "
                "(`KL other personas` in the winners table), which no search or method sees" if used.other_texts else "")
             + ". Each regime's pick per damage budget is the candidate with the largest validation separation whose "
             "validation KL is within the budget (`@klB` rows). "
             f"Calibration items whose question is in the test set: {used.test_leaks_dropped or 0} dropped; "
             f"questions that occur more than once: {used.duplicate_questions or 0} (kept on one side of the split).\n"]
    for method, s in (used.steering_search or {}).items():
        lines.append(f"- steering {method}: {len(s.table)} (layer, multiplier) candidates; {_best(s.table)}: layer {s.layer}, "
                     f"multiplier {s.multiplier:g}")
    if used.lora_search is not None:
        lora = used.lora_search
        lines.append(f"- LoRA: epochs 1–{lora.config.epochs} (rank {lora.config.rank}, "
                     f"lr {lora.config.learning_rate:g}); {_best(lora.table)}: {lora.epochs}")
    if used.prompt_search is not None:
        lines.append(f"- prompts: the phrasings in results.json (`prompt_search`), {len(used.prompt_search)} candidates")
    for method, m in (used.mask_search or {}).items():
        c = m.chosen
        lines.append(f"- {method}: {len(m.table)} candidates; {_best(m.table)}: sparsity {c.sparsity}, modules {c.modules}, "
                     f"layers {c.layers}, {c.token_scope} tokens, statistic {c.statistic}, φ {c.phi}")
    return lines


def _budget_line(row: EqualDamageRow | BudgetWinnerRow, damage: str, counted: str) -> str:
    """One budget's chosen pair: its seek − reject difference with interval, n, its damage and how many competed."""
    return (f"- KL ≤ {row.budget:g}: **{row.pair}** ({row.difference:+.4f} [{row.difference_low:+.4f}, "
            f"{row.difference_high:+.4f}] nats/token, n = {row.n}, {damage}; {row.n_eligible} {counted})")


def _equal_damage_lines(equal_damage: Sequence[EqualDamage]) -> list[str]:
    lines = ["\nWhich regime separates the poles most at equal damage (largest seek − reject difference among the "
             "pairs whose more damaging pole stays within the KL budget):\n"]
    for row in equal_damage:
        if isinstance(row, NoPick):
            lines.append(f"- KL ≤ {row.budget:g}: no pair is within the budget")
        else:
            lines.append(_budget_line(row, f"its KL {row.damage:.4f}", "pairs eligible"))
    return lines


def _winner_lines(winners: Sequence[BudgetWinner]) -> list[str]:
    lines = ["\nWhich regime wins at each damage budget (each regime's pick for the budget, test seek − reject; "
             "`lead`: paired difference to the runner-up, decisive when its interval is above 0):\n"]
    for row in winners:
        if isinstance(row, NoPick):
            lines.append(f"- KL ≤ {row.budget:g}: no regime has a pick within the budget")
            continue
        lead = (f"; lead over {row.runner_up} {row.lead:+.4f} [{row.lead_low:+.4f}, {row.lead_high:+.4f}]"
                f" ({'decisive' if row.decisive else 'not decisive' if row.decisive is False else f'no verdict: n < {MIN_N}'})"
                if row.lead is not None else "")
        lines.append(_budget_line(row, f"test KL {row.test_kl:.4f}", "picks") + lead)
    return lines


def _diagnostic_lines(diag: Diagnostics) -> list[str]:
    rho = diag.sparsity
    overlap = [{**r.model_dump(), "by construction": f"{r.bound_low:.3f}–{r.bound_high:.3f}" if r.bound_low is not None else "",
                "p (z>0)": r.p if r.p is not None else ""} for r in diag.overlap]
    stab = diag.stability.summary
    lines = [f"\nOpposing masks compared like with like (ρ = {rho}; fraction of entries where seek and reject differ; "
             "under ReLU each pole removes ρ of a row, so they differ in at most 2ρ, exactly 2ρ in a map whose share p of "
             "channels with z > 0 lies in [ρ, 1−ρ], at least 2·min(p, 1−p) otherwise; `by construction` is that range "
             "weighted over the maps):\n",
             markdown_table(overlap, ["variant", "kind", "differ", "by construction", "p (z>0)"]),
             "\nThe per-sample statistic (norm: the paper's, grows with √T; rms: norm/√T) — share of channels with z > 0, "
             f"mean covered tokens per pole, and which pole's ReLU Contrastive-Wanda mask (ρ = {rho}) breaks the model:\n",
             markdown_table(diag.statistics, ["statistic", "positive_share", "seek_tokens", "reject_tokens",
                                              "seek_perplexity_ratio", "reject_perplexity_ratio", "breaks"]),
             f"\nStability ({stab.method}, ρ = {rho}, {stab.draws} draws of two disjoint halves of {stab.half_size} "
             f"calibration items): a pole's mask differs between halves in {stab.within_pole:.3f} of entries, seek from "
             f"reject in {stab.between_poles:.3f} (full data {stab.between_poles_full:.3f}); validation seek − reject over "
             f"the {stab.n_halves} halves {stab.separation:+.4f} [{stab.separation_low:+.4f}, {stab.separation_high:+.4f}]. "
             + ("**Noise**: a pole's mask differs between halves of its own data at least as much as from the other pole."
                if stab.noise else "Each pole's mask is more alike across halves than the two poles are.")]
    return lines


PROTOCOL_NOTE = ("\nTwo mask protocols: `METHOD-SIDE@…` is the mask alone (no system prompt); `…+prompt` keeps the same "
                 "pole's persona prompt on under the mask, **the paper's protocol** (its `contra.py` masks the weights and "
                 "scores with the persona system prompt), so the paper's mask rows compare with our `+prompt` rows.\n")


def _compute_time(entry: PersonaResult) -> str:
    """``", in 41 min and 52,100 sequences forwarded (evaluation 25, mask search (gradient) 6, …)"``: the persona's
    stage times, longest first (the sequences where the file counted them); nothing for a file that did not record
    them."""
    if entry.stages is None or entry.seconds is None:
        return ""
    longest = sorted(entry.stages, key=lambda s: -s.seconds)[:4]
    rows = sum(s.rows for s in entry.stages)
    forwarded = f" and {rows:,} sequences forwarded" if rows else ""          # counted in files from 2026-12-08
    return (f", in {entry.seconds / 60:.0f} min{forwarded} "
            f"({', '.join(f'{s.name} {s.seconds / 60:.0f}' for s in longest)}, …)")


def _persona_section(persona: str, entry: PersonaResult, figure: Path, out_dir: Path) -> str:
    contrasts, controls = entry.contrasts, entry.controls
    matched = any(c.matched_control is not None for c in controls)
    lines = [f"\n## {persona} ({entry.n_test} test items)\n",
             f"Computed by revision `{entry.revision}`, finished {entry.finished}{_compute_time(entry)}.",
             *_tuning_lines(entry.used), PROTOCOL_NOTE, markdown_table(entry.table, TABLE_COLUMNS),
             "\nSeek-minus-reject (paired, per-token margin; cancels damage both poles share):\n",
             markdown_table(contrasts, ["pair", "n", "difference", "items_seek_only", "items_reject_only"]),
             "\nEach mask against its random-mask control (same sparsity or the same weights per row; with prompts, the "
             "random mask with the same prompt; paired margin toward the mask's side)" + (
                 ", and, beside it, against the random mask of equal damage (`matched`: the random sparsity whose KL on "
                 "the selection texts equals the mask's)" if matched else "") + ":\n",
             markdown_table(control_rows(controls), ["condition", "control", "advantage", "beats_control"]
                            + (["matched_control", "matched_advantage", "beats_matched"] if matched else []))]
    losers = [c.condition for c in controls if c.beats_control is False]
    if losers:
        lines.append(f"\nDoes not beat its random-mask control (95 % interval not above 0): {', '.join(losers)}.\n")
    matched_losers = [c.condition for c in controls if c.matched_control is not None and c.beats_matched is False]
    if matched_losers:
        lines.append(f"\nDoes not beat the random mask of equal damage: {', '.join(matched_losers)}.\n")
    undefined = [c.condition for c in controls if c.beats_control is None]
    if undefined:
        lines.append(f"\nNo verdict against the control (fewer than {MIN_N} test items: no interval): {', '.join(undefined)}.\n")
    if entry.prompt_additions:
        lines += ["\nWhat the mask adds to the prompt (mask + prompt − prompt, toward the pole; per pair seek − reject):\n",
                  markdown_table(entry.prompt_additions, ["condition", "side", "n", "added"])]
    lines += _equal_damage_lines(entry.equal_damage)
    if entry.budget_winners:
        lines += _winner_lines(entry.budget_winners)
    if entry.used.diagnostics is not None:
        lines += _diagnostic_lines(entry.used.diagnostics)
    lines.append(f"\n![{persona} accuracy]({os.path.relpath(figure, out_dir)})\n")
    frontier = figure.with_name(f"{persona}_frontier.png")
    if entry.frontier:
        lines.append(f"![{persona} effect–damage frontier]({os.path.relpath(frontier, out_dir)})\n")
    return "\n".join(lines)


def regimes_markdown(result: RegimesStudy) -> str:
    """Cosines and the transfer matrix of one regime comparison as markdown."""
    names = list(result.transfer)
    lines = [f"## {result.persona}: one persona, three regimes (seed {result.seed})\n",
             f"{result.n_texts} neutral texts, {result.n_items} held-out A/B items; steering: CAA at layer "
             f"{result.steering.layer}, α {result.steering.multiplier:g} (chosen on {result.validation_items} "
             f"validation items); masks: Contrastive-Wanda at ρ = {result.sparsity}.\n",
             made_by(result.provenance) + "\n",
             "| regime | seek − reject effect (nats/token) | ‖seek − reject‖ at that layer |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {result.effect[n].signed(4)} | {result.at_layer(result.norms[n].direction):.3f} |")
    lines += ["", f"Cosine of the seek − reject directions at layer {result.layer} (all layers in the JSON and the figure):", ""]
    lines += [f"- {pair.replace('|', ' vs ')}: {result.at_layer(values):+.3f}" for pair, values in result.cosine.items()]
    lines += ["", "Transfer: the effect of each row's direction (injected at that layer with the column regime's norm) "
              "as a fraction of the column regime's own effect, with the injected effect's interval. The fraction is "
              "n/a where the column regime's own effect has an interval that includes 0 (a ratio to it means nothing):", "",
              "| direction \\ effect of | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for src in names:
        cells = []
        for d in names:
            t, ratio = result.transfer[src][d], transfer_ratio(result, src, d)
            cells.append(f"{_ratio_text(ratio)} ({t.value:+.4f} [{t.low:+.4f}, {t.high:+.4f}])")
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def transfer_ratio(result: RegimeComparison, source: str, target: str) -> float | None:
    """The effect of ``source``'s direction as a fraction of ``target``'s own effect, or None where
    ``target``'s own effect has an interval that includes 0 (a ratio to it means nothing)."""
    return result.transfer[source][target].ratio if result.effect[target].excludes_zero else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def regimes_summary_markdown(results: Mapping[str, RegimeComparison]) -> str:
    """Every compared persona at its steering layer: the cosines between regimes, then the transfer
    ratios (n/a where the target regime has no effect to reproduce).

    Examples:
        >>> from persona_interp.report.study_results import load_regimes
        >>> print(regimes_summary_markdown({"power": load_regimes("reports/regimes/power.json")}))   # run_regimes'
        | persona | layer | prompt vs mask | prompt vs steering | mask vs steering |
        |---|---|---|---|---|
        | power | ...
        <BLANKLINE>
        | persona | direction | effect of prompt | effect of mask | effect of steering |
        |---|---|---|---|---|
        | power | prompt | ...
    """
    first = next(iter(results.values()))
    pairs, names = list(first.cosine), list(first.transfer)
    lines = ["| persona | layer | " + " | ".join(p.replace("|", " vs ") for p in pairs) + " |", "|---|---|" + "---|" * len(pairs)]
    lines += [f"| {persona} | {r.layer} | " + " | ".join(f"{r.at_layer(r.cosine[p]):+.3f}" for p in pairs) + " |"
              for persona, r in results.items()]
    lines += ["", "| persona | direction | " + " | ".join(f"effect of {n}" for n in names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {persona} | {src} | " + " | ".join(_ratio_text(transfer_ratio(r, src, d)) for d in names) + " |"
              for persona, r in results.items() for src in names]
    return "\n".join(lines) + "\n"
