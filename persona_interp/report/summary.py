"""The main job's findings across personas, one table per question, read from ``results.json``: which regime
wins at each damage budget (and how the best mask does there), what the paper's mask rows give under both
protocols, how much opposing masks differ like with like, which pole breaks under each statistic, and whether a
pole's mask is stable across halves of its calibration data. Cells are formatted for reading
(``+0.89 [+0.77, +1.01]``); the numbers behind them stay in ``results.json``.

Examples:
    >>> tables = summary_tables(load_results("reports/results.json"))
    >>> list(tables), tables["winners"][0]["persona"]
    (['winners', 'paper', 'overlap', 'statistic', 'stability'], 'power')
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from persona_interp.analysis.diagnostics import GroupedOverlapRow, grouped_overlap
from persona_interp.evaluation.rows import BudgetWinnerRow, ControlRow, FrontierRow, NoPick, Row
from persona_interp.evaluation.stats import MIN_N
from persona_interp.masks.registry import methods
from persona_interp.model.machine import CPU
from persona_interp.report.results import NOT_RECORDED, Diagnostics, PersonaResult, RunResults


def _ci(row: Row, key: str = "difference") -> str:
    return row.estimate(key).signed(2)


def _beats(controls: dict[str, ControlRow], condition: str, matched: bool = False) -> str:
    """"yes / no": whether the seek and the reject mask (``condition`` with ``{}`` for the side) beat their control
    (``matched``: the damage-matched one; "n/a" where there is no interval, too few items; "—" where a pole has no
    such control)."""
    words = {True: "yes", False: "no", None: "n/a"}

    def word(row: ControlRow) -> str:
        if not matched:
            return words[row.beats_control]
        return words[row.beats_matched] if row.matched_control is not None else "—"

    return " / ".join(word(controls[condition.format(side)]) for side in ("seek", "reject"))


def _decisive(verdict: bool | None) -> str:
    return " (decisive)" if verdict else f" (no verdict: n < {MIN_N})" if verdict is None else ""


def is_mask(name: str) -> bool:
    """Whether a condition or pair name (``contrastive_wanda@kl0.1+prompt``, ``mean_difference@kl0.1``, ``rag``)
    is a mask's: its regime, the part before the first ``@`` or ``-``, is a registered method with poles.

    Examples:
        >>> is_mask("contrastive_wanda@kl0.02+prompt"), is_mask("pca@kl0.02"), is_mask("rag")
        (True, False, False)
    """
    regime = re.split(r"[@-]", name, maxsplit=1)[0]
    return regime in {spec.name for spec in methods(poles=True)}


def best_mask(entry: PersonaResult, budget: float, with_prompt: bool) -> FrontierRow | None:
    """The mask pick within ``budget`` (a frontier point of a registered mask method's line) with the largest test
    seek − reject, among the masks alone or (``with_prompt``) with their prompt; None where no mask is within it.

    Examples:
        >>> entry = load_results("reports/results.json").personas["hallucination"]
        >>> best_mask(entry, 0.02, with_prompt=False).pair, best_mask(entry, 0.02, with_prompt=True).pair
        ('contrastive_wanda@kl0.02', 'contrastive_wanda@kl0.02+prompt')
    """
    masks = {spec.name for spec in methods(poles=True)}                  # the registry's mask methods with poles
    picks = [r for r in entry.frontier if r.line.removesuffix("+prompt") in masks and r.budgets
             and budget in r.budgets and r.line.endswith("+prompt") == with_prompt]
    return max(picks, key=lambda r: r.difference) if picks else None


def _best_mask(entry: PersonaResult, budget: float, with_prompt: bool) -> str:
    """[`best_mask`][persona_interp.report.summary.best_mask] as a table cell."""
    best = best_mask(entry, budget, with_prompt)
    return f"{best.pair} {_ci(best)}" if best is not None else "none within the budget"


def _reported_text_winner(entry: PersonaResult, w: BudgetWinnerRow) -> str:
    """The pair that separates most among those within ``w``'s budget on the reported neutral texts (the
    ``equal_damage`` rule), or ``same`` when it is ``w``'s winner."""
    e = next((e for e in entry.equal_damage if e.budget == w.budget), None)
    if e is None or isinstance(e, NoPick):
        return "none"
    return "same" if e.pair == w.pair else f"{e.pair} {_ci(e)}"


def winner_rows(results: RunResults) -> list[dict[str, Any]]:
    """Per persona and damage budget: the winning regime's pick, named as evaluated (``…+prompt`` for a mask
    with its prompt), its test seek − reject, its KL on the reported neutral texts (``over`` where it lands above
    the budget it was picked within on the selection texts), its KL on the other personas' questions and answers (a
    damage measure no search or method sees), its lead over the runner-up, the winner when the
    budget is enforced on the reported texts instead, and the best mask within the same budget, alone and with
    its prompt. Each row is a table's cells, by column heading."""
    rows = []
    measured = any(isinstance(w, BudgetWinnerRow) and w.other_kl is not None
                   for entry in results.personas.values() for w in entry.budget_winners)
    for persona, entry in results.personas.items():
        for w in entry.budget_winners:
            row = {"persona": persona, "budget": f"KL ≤ {w.budget:g}"}
            if isinstance(w, NoPick):
                row.update({"winner": "none", "effect": "", "KL": "", "lead": "", "by reported-text KL": ""})
            else:
                row.update({"winner": w.pair, "effect": _ci(w),
                            "KL": f"{w.test_kl:.4f}" + (" (over)" if w.test_kl > w.budget else ""),
                            "lead": (f"{_ci(w, 'lead')} over {w.runner_up}" + _decisive(w.decisive))
                            if w.lead is not None else "",
                            "by reported-text KL": _reported_text_winner(entry, w)})
            if measured:                                  # runs before the second damage measure have no column
                other = w.other_kl if isinstance(w, BudgetWinnerRow) else None
                row["KL other personas"] = f"{other:.4f}" if other is not None else ""
            row.update({"best mask": _best_mask(entry, w.budget, False),
                        "best mask + prompt": _best_mask(entry, w.budget, True)})
            rows.append(row)
    return rows


def paper_rows(results: RunResults, method: str = "contrastive_wanda") -> list[dict[str, Any]]:
    """Per persona and paper sparsity: prompt and RAG, ``method``'s pair alone and with its prompt (the paper's
    protocol), what the mask adds to the prompt, which pole beats its random control, and each pole's damage."""
    rows = []
    for persona, entry in results.personas.items():
        contrasts = {row.pair: row for row in entry.contrasts}
        controls = {row.condition: row for row in entry.controls}
        table = {row.condition: row for row in entry.table}
        added = {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"}
        for rho in results.config.sparsities or ():
            pair = f"{method}@{rho:g}"
            if pair not in contrasts:
                continue
            poles = [table[f"{method}-{side}@{rho:g}"] for side in ("seek", "reject")]
            damage = " / ".join(f"{row.kl:.2f} (×{1 + row.perplexity_change:.3g})"
                                if row.kl is not None and row.perplexity_change is not None else "not measured"
                                for row in poles)
            rows.append({"persona": persona, "prompt": _ci(contrasts["prompt"]), "rag": _ci(contrasts["rag"]),
                         "mask": pair, "alone": _ci(contrasts[pair]), "+ prompt (paper)": _ci(contrasts[f"{pair}+prompt"]),
                         "adds to prompt": _ci(added[f"{pair}+prompt"], "added") if f"{pair}+prompt" in added else "",
                         "beats random, seek / reject": _beats(controls, f"{method}-{{}}@{rho:g}"),
                         **({"beats damage-matched random": _beats(controls, f"{method}-{{}}@{rho:g}", matched=True)}
                            if controls[f"{method}-seek@{rho:g}"].matched_control is not None else {}),
                         "with prompt": _beats(controls, f"{method}-{{}}@{rho:g}+prompt"),
                         "KL (perplexity) seek / reject": damage})
    return rows


def diagnostics_by_persona(results: RunResults) -> dict[str, Diagnostics]:
    """The mask diagnostics (overlap, statistics, stability) of each persona of a main-job run that has them, by
    persona.

    Examples:
        >>> results = load_results("reports/results.json")
        >>> sorted(diagnostics_by_persona(results)["power"].model_fields)
        ['overlap', 'sparsity', 'stability', 'statistics']
    """
    return {persona: entry.used.diagnostics for persona, entry in results.personas.items()
            if entry.used.diagnostics is not None}


def overlap_rows(results: RunResults) -> list[dict[str, Any]]:
    """Per persona: the share of entries where the opposing masks differ over all maps, per variant; the ReLU
    column shows its construction range beside it."""
    rows = []
    for persona, diag in diagnostics_by_persona(results).items():
        row: dict[str, Any] = {"persona": persona, "ρ": diag.sparsity}
        for r in diag.overlap:
            if r.kind == "all":
                cell = f"{100 * r.differ:.1f} %"
                if r.bound_low is not None and r.bound_high is not None:
                    cell += f" (construction {100 * r.bound_low:.1f}–{100 * r.bound_high:.1f} %)"
                row[r.variant] = cell
        rows.append(row)
    return rows


def statistic_rows(results: RunResults) -> list[dict[str, Any]]:
    """Per persona and statistic: share of channels with z > 0, mean covered tokens per pole, and which pole's
    ReLU Contrastive-Wanda mask breaks the model (perplexity ratios seek / reject)."""
    rows = []
    for persona, diag in diagnostics_by_persona(results).items():
        for r in diag.statistics:
            rows.append({"persona": persona, "statistic": r.statistic, "z > 0": f"{100 * r.positive_share:.0f} %",
                         "tokens seek / reject": f"{r.seek_tokens:.0f} / {r.reject_tokens:.0f}",
                         "perplexity ×, seek / reject": f"{r.seek_perplexity_ratio:.3g} / {r.reject_perplexity_ratio:.3g}",
                         "breaks": r.breaks})
    return rows


def stability_rows(results: RunResults) -> list[dict[str, Any]]:
    """Per persona: how much a pole's mask differs between disjoint halves of its calibration data against how
    much the poles differ, and the validation seek − reject over the halves."""
    rows = []
    for persona, diag in diagnostics_by_persona(results).items():
        s = diag.stability.summary
        rows.append({"persona": persona, "halves": f"{s.draws} × 2 × {s.half_size}",
                     "within a pole": f"{100 * s.within_pole:.0f} %", "between poles": f"{100 * s.between_poles:.0f} %",
                     "validation seek − reject": _ci(s, "separation"), "noise": "yes" if s.noise else "no"})
    return rows


def summary_tables(results: RunResults) -> dict[str, list[dict[str, Any]]]:
    """Every table above, by name: each row a table's cells, by column heading (formatted for reading)."""
    return {"winners": winner_rows(results), "paper": paper_rows(results), "overlap": overlap_rows(results),
            "statistic": statistic_rows(results), "stability": stability_rows(results)}


def compute_times(results: RunResults, personas: Sequence[str] | None = None) -> str:
    """How long each persona of ``personas`` (default: all) took in ``results``, as the run recorded it
    ([`PersonaResult.seconds`][persona_interp.report.results.PersonaResult]: the sum of its stages' wall times), in
    minutes (seconds below one), with their total and the dtype and machine they ran on; ``not recorded`` for a
    persona of a file from before the stage times (2026-12-07).

    Examples:
        >>> compute_times(load_results("reports/results.json"), ["power", "wealth"])
        'power not recorded, wealth not recorded (a run before per-persona stage times were recorded)'
    """
    def duration(seconds: float) -> str:
        return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"

    chosen = {p: results.personas[p] for p in (personas if personas is not None else list(results.personas))}
    seconds = {p: entry.seconds for p, entry in chosen.items()}
    times = ", ".join(f"{p} {duration(s)}" if s is not None else f"{p} {NOT_RECORDED}" for p, s in seconds.items())
    known = [s for s in seconds.values() if s is not None]
    if not known:
        return f"{times} (a run before per-persona stage times were recorded)"
    first = next(entry.provenance for p, entry in chosen.items() if seconds[p] is not None)
    machine = first.cpu.model if isinstance(first.cpu, CPU) else f"CPU {NOT_RECORDED}"
    total = duration(sum(known)) if len(known) == len(seconds) else f"at least {duration(sum(known))}"
    return (f"{times}" + (f": {total} in all" if len(seconds) > 1 else "") + f" ({first.dtype} on {machine}, {first.device})")


def overlap_from_results(results: RunResults, sizes: dict[str, int]) -> list[GroupedOverlapRow]:
    """The like-for-like overlap rows of every persona of a main-job run, folded into overall / attention / MLP
    ([`grouped_overlap`][persona_interp.analysis.diagnostics.grouped_overlap]; ``sizes`` from ``kind_sizes``), in the
    rows' shape of ``persona-interp overlap``.

    Examples:
        >>> results = load_results("reports/results.json")      # computed on the embedded SmolLM2
        >>> sizes = {"q": 576 * 576, "k": 192 * 576, "v": 192 * 576, "o": 576 * 576, "gate": 1536 * 576, "up": 1536 * 576,
        ...          "down": 576 * 1536}       # SmolLM2's per layer; kind_sizes(get_adapter(model).maps) gives all layers'
        >>> rows = overlap_from_results(results, sizes)
        >>> rows[0].pair, rows[0].variant, sorted(rows[0].model_dump())
        ('power', 'wanda (per pole)', ['attn', 'mlp', 'overall', 'pair', 'sparsity', 'variant'])
    """
    return [row for persona, diag in diagnostics_by_persona(results).items()
            for row in grouped_overlap(diag.overlap, sizes, persona)]
