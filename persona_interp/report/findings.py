"""The pages that quote the main job's results and the studies', written from them: the README's findings
([`findings_markdown`][persona_interp.report.findings.findings_markdown]), the findings page's tables (the report's
"Across personas" section), what the full run shows
([`full_run_markdown`][persona_interp.report.findings.full_run_markdown]), its verdict on the previous protocol
([`previous_protocol_markdown`][persona_interp.report.findings.previous_protocol_markdown]) and the studies'
paragraphs ([`study_findings`][persona_interp.report.study_findings]), each between markers in the page,

    <!-- generated: NAME (the command that writes it) -->
    …
    <!-- end generated -->

which [`rewrite_generated`][persona_interp.report.findings.rewrite_generated] fills from a ``results.json`` and the
study records in its folder ([`Sources`][persona_interp.report.findings.Sources]), and nothing outside them
(``persona-interp figures --results reports/results.json --docs README.md docs/findings.md``).

Examples:
    >>> results = load_results("reports/results.json")
    >>> page = "Intro.\\n<!-- generated: findings (by hand) -->\\nold\\n<!-- end generated -->\\nOutro.\\n"
    >>> new = rewrite_generated(page, results)
    >>> new.startswith("Intro.\\n<!-- generated: findings (by hand) -->\\n\\nSeven personas"), new.endswith("<!-- end generated -->\\nOutro.\\n")
    (True, True)
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from persona_interp.analysis.diagnostics import OverlapRow, StatisticRow
from persona_interp.data.files import write_text
from persona_interp.data.personas import MBTI_AXES, SIDES, Side
from persona_interp.evaluation.rows import BudgetWinnerRow, EqualDamageRow, Record
from persona_interp.evaluation.stats import MIN_N
from persona_interp.report.markdown import across_personas_markdown
from persona_interp.model.machine import CPU
from persona_interp.report.results import NOT_RECORDED, PersonaResult, RunResults
from persona_interp.report.study_findings import atlas_findings_markdown, composition_findings_markdown, regimes_findings_markdown
from persona_interp.report.study_results import AtlasStudy, CompositionStudy, RegimesStudy, load_atlas, load_composition, load_regimes
from persona_interp.report.summary import best_mask, compute_times, diagnostics_by_persona, is_mask
from persona_interp.report.wording import NUMBERS, persona_list
from persona_interp.report.wording import count as _count, join as _join, signed_span as _signed_span, span as _span

KINDS = {"mean_difference": "steering", "pca": "steering", "ode": "steering", "weight_edit": "steering",
         "lora": "LoRA", "prompt": "a prompt", "rag": "RAG"}   # a winning regime as the findings name it
HEADLINE = {"LoRA": "fine-tuning"}                             # … and in the bullet's heading
METHOD_NAMES = {"wanda": "Wanda", "contrastive_wanda": "Contrastive-Wanda", "contrastive_sparse": "Contrastive-Sparse (text rule)",
                "contrastive_sparse_code": "Contrastive-Sparse (code rule)", "retain_ratio": "retain-ratio",
                "set_difference": "set difference (Wanda scores)", "snip_set_difference": "set difference (SNIP scores)",
                "gradient": "the gradient score", "learned_gates": "learned unit gates"}   # a mask method as the findings name it
REGIME_NAMES = {"mean_difference": "mean-difference steering", "pca": "PCA steering", "ode": "ODE steering",
                "weight_edit": "weight-edit steering", "lora": "LoRA", "prompt": "the prompt", "rag": "RAG"}   # … any other regime
STATISTIC_NAMES = {"norm": "the paper's norm", "rms": "the length-fair RMS"}
SIMILAR_LENGTH = 0.1                    # the poles' mean answer lengths count as alike within 10 % of each other
PER_POLE, SOFTPLUS, RELU = "wanda (per pole)", "contrastive_wanda softplus τ=2", "contrastive_wanda relu"   # overlap variants
SPARSE_RULES = {"the text's": "contrastive_sparse (text: disjoint)", "the code's": "contrastive_sparse (code: sequential)"}
PAPER_OVERLAP = 0.01                    # the paper's "~1 %" of entries where opposing masks differ
TIMES = {0: "never", 1: "once", 2: "twice"}


def _ci(row: Record, key: str = "difference") -> str:
    return row.estimate(key).signed(2)


def _regime(pair: str) -> str:
    """A pair's or condition's regime: the part before its first ``@`` or ``-`` (``pca@kl0.02``: ``pca``)."""
    return re.split(r"[@-]", pair, maxsplit=1)[0]


def _name(pair: str) -> str:
    """A pair (or pick) as the findings name it: ``Contrastive-Wanda with its prompt``, ``PCA steering``, ``RAG``."""
    regime = _regime(pair)
    if is_mask(pair):
        return f"{METHOD_NAMES.get(regime, regime)} {'with its prompt' if pair.endswith('+prompt') else 'alone'}"
    return REGIME_NAMES.get(regime, regime)


def _separates(row: Record) -> str:
    """``separates the poles by +0.73 [+0.39, +1.07]``, ``does not detectably separate the poles (…)`` (across 0) or
    ``reverses the poles (…)`` (below 0)."""
    estimate = row.estimate("difference")
    if estimate.defined and estimate.low > 0:
        return f"separates the poles by {_ci(row)}"
    return f"{'reverses' if estimate.defined and estimate.high < 0 else 'does not detectably separate'} the poles ({_ci(row)})"


def _adds(row: Record) -> str:
    """What a mask adds to its prompt, as a verdict: ``adds +0.90 […] to the prompt``, ``adds nothing detectable to the
    prompt (…)`` or ``takes … from the prompt``."""
    estimate = row.estimate("added")
    if estimate.defined and estimate.low > 0:
        return f"adds {_ci(row, 'added')} to the prompt"
    return (f"takes {_ci(row, 'added')} from the prompt" if estimate.defined and estimate.high < 0
            else f"adds nothing detectable to the prompt ({_ci(row, 'added')})")


def _ratio(value: float) -> str:
    """A perplexity ratio to two significant figures, in plain digits (``3.8``, ``86``, ``6300``)."""
    rounded = float(f"{value:.2g}")
    return f"{rounded:.0f}" if rounded >= 10 else f"{rounded:g}"


def _budgets(budgets: Sequence[float]) -> str:
    words = [f"{b:g}" for b in budgets]
    return "KL ≤ " + (words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}")


class _Wins(NamedTuple):
    """The budget winners of a run: the non-mask wins by kind of regime and persona, and the masks' wins."""

    by_kind: dict[str, dict[str, list[BudgetWinnerRow]]]       # kind -> persona -> its wins
    masks: list[tuple[str, BudgetWinnerRow]]                    # (persona, win)


def _wins(results: RunResults) -> _Wins:
    wins = _Wins({}, [])
    for persona, entry in results.personas.items():
        for w in entry.budget_winners:
            if not isinstance(w, BudgetWinnerRow):
                continue
            if is_mask(w.pair):
                wins.masks.append((persona, w))
            else:
                wins.by_kind.setdefault(KINDS.get(w.regime, w.regime), {}).setdefault(persona, []).append(w)
    return wins


def _mask_case(persona: str, w: BudgetWinnerRow | EqualDamageRow) -> str:
    """``hallucination at KL ≤ 0.02: Contrastive-Wanda with its prompt (the paper's protocol) separates the poles by …``"""
    protocol = " (the paper's protocol)" if w.pair.endswith("+prompt") else ""
    return f"{persona_list([persona])} at {_budgets([w.budget])}: {_name(w.pair)}{protocol} separates the poles by {_ci(w)} nats/token"


def _winners_bullet(results: RunResults) -> str:
    """Which kind of regime wins each damage budget, and where a mask does."""
    won, masks = _wins(results)
    heading = " or ".join(HEADLINE.get(kind, kind) for kind in won) or "no regime but a mask"
    sentences = []
    for kind, by_persona in won.items():
        every = [p for p, wins in by_persona.items() if len(wins) == len(results.personas[p].budget_winners)]
        parts = [f"{kind} wins every damage budget on {persona_list(every)}"] if every else []
        for persona, wins in by_persona.items():
            if persona not in every:
                picks = {w.pair: w for w in wins}
                effects = ", ".join(_ci(w) if len(picks) == 1 else f"{pair} {_ci(w)}" for pair, w in picks.items())
                parts.append(f"{kind} wins {persona_list([persona])} at {_budgets([w.budget for w in wins])} ({effects})")
        sentences += parts
    joined = "; ".join(sentences)
    text = (f"- **At equal damage, {heading} wins, and a mask wins {TIMES.get(len(masks), f'{len(masks)} times')}.** "
            + joined[:1].upper() + joined[1:] + ".")
    if masks:
        cases = [_mask_case(persona, w) for persona, w in masks]
        text += f" The exception{' is' if len(cases) == 1 else 's are'} " + "; ".join(cases) + "."
    return text


class _Paper(NamedTuple):
    """The paper's mask pair with its prompt, per persona: where it separates the poles and adds to the prompt
    (``adds``), separates them without adding detectably (``only``; ``unmeasured``: no addition row) or does not
    (``none``); and, per persona with both poles' damage, the worse pole's KL and perplexity ratio."""

    adds: list[str]
    only: list[str]
    unmeasured: list[str]
    none: list[str]
    worst: list[tuple[float, float]]


def _paper(results: RunResults, rho: float, method: str) -> _Paper | None:
    pair = f"{method}@{rho:g}"
    paper = _Paper([], [], [], [], [])
    for persona, entry in results.personas.items():
        contrasts = {row.pair: row for row in entry.contrasts}
        if f"{pair}+prompt" not in contrasts:
            continue
        added = {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"}.get(f"{pair}+prompt")
        if not contrasts[f"{pair}+prompt"].difference_low > 0:
            paper.none.append(persona)
        else:
            (paper.unmeasured if added is None else paper.adds if added.added_low > 0 else paper.only).append(persona)
        table = {row.condition: row for row in entry.table}
        poles = [table[f"{method}-{side}@{rho:g}"] for side in SIDES]
        measured = [(row.kl, 1 + row.perplexity_change) for row in poles if row.kl is not None and row.perplexity_change is not None]
        if len(measured) == len(poles):
            paper.worst.append(max(measured))
    return paper if paper.adds + paper.only + paper.unmeasured + paper.none else None


def _paper_damage(results: RunResults, paper: _Paper) -> str | None:
    """``in every persona one pole's mask costs KL 1.5–8.9 nats/token (perplexity ×3.8 to ×6300): far outside …``"""
    if not paper.worst:
        return None
    n = len(paper.adds + paper.only + paper.unmeasured + paper.none)
    kls, ratios = [kl for kl, _ in paper.worst], [ratio for _, ratio in paper.worst]
    limit = max(results.config.damage_budgets or [0.0])
    verdict = ("far outside the damage budgets" if min(kls) > limit
               else f"not all of them outside the largest damage budget (KL ≤ {limit:g})")
    return (f"in {'every persona' if len(paper.worst) == n else f'{len(paper.worst)} of the {n} personas'} one pole's mask "
            f"costs KL {_span(kls)} nats/token (perplexity ×{_ratio(min(ratios))} to ×{_ratio(max(ratios))}): {verdict}")


def _paper_bullet(results: RunResults, rho: float, method: str = "contrastive_wanda") -> str | None:
    """What the paper's masks at ``rho`` do with the prompt, and what one pole's mask costs."""
    paper = _paper(results, rho, method)
    if paper is None:
        return None
    separate = [p for p in results.personas if p in paper.adds + paper.only + paper.unmeasured]
    notes = ([f"adding nothing detectable to the prompt on {persona_list(paper.only)}"] if paper.only else []) + \
            ([f"not detectably on {persona_list(paper.none, 'or')}"] if paper.none else [])
    text = f"- **The paper's masks (ρ = {rho:g})** with the prompt " + (
        f"separate the poles on {persona_list(separate)}" + (f" ({'; '.join(notes)})" if notes else "")
        if separate else "do not detectably separate the poles on any persona")
    damage = _paper_damage(results, paper)
    return text + (f", but {damage}" if damage else "") + "."


def _overlap(results: RunResults) -> dict[str, dict[str, OverlapRow]]:
    """Per persona with diagnostics, each variant's overlap row over all maps."""
    return {persona: {r.variant: r for r in diag.overlap if r.kind == "all"} for persona, diag in diagnostics_by_persona(results).items()}


def _relu_ranges(results: RunResults) -> list[tuple[str, float, float, float]]:
    """Per persona: ReLU Contrastive-Wanda's share of differing entries and its construction range (low, high)."""
    return [(persona, r.differ, r.bound_low, r.bound_high) for persona, v in _overlap(results).items()
            if (r := v.get(RELU)) is not None and r.bound_low is not None and r.bound_high is not None]


def _overlap_bullet(results: RunResults) -> str | None:
    """How much opposing masks differ, like with like, against the paper's ~1 % and the ReLU construction range (compared
    at full precision, not at the table's 0.1 %)."""
    share = {variant: [v[variant].differ for v in _overlap(results).values() if variant in v] for variant in (PER_POLE, SOFTPLUS)}
    relu = _relu_ranges(results)
    if not share[PER_POLE] or not share[SOFTPLUS] or not relu:
        return None
    small = share[PER_POLE] + share[SOFTPLUS]
    order = ("the order of" if all(PAPER_OVERLAP / 10 <= s <= PAPER_OVERLAP * 10 for s in small) else "unlike")
    outside = [row for row in relu if not row[2] <= row[1] <= row[3]]                   # at full precision
    where = ("on every persona" if not outside
             else f"on {len(relu) - len(outside)} of the {len(relu)} personas (not on "
                  + "; ".join(f"{persona_list([p])}: {100 * differ:.2f} % against {100 * low:.2f}–{100 * high:.2f} %"
                              for p, differ, low, high in outside) + ")")
    return (f"- **Opposing masks' overlap, like with like:** per-pole Wanda masks differ in "
            f"{_span(share[PER_POLE], 100)} % of entries and softplus Contrastive-Wanda in "
            f"{_span(share[SOFTPLUS], 100)} %, {order} the paper's \"~1 %\"; ReLU Contrastive-Wanda's "
            f"{_span([differ for _, differ, _, _ in relu], 100)} % lies, {where}, inside the range its construction gives whatever the "
            "persona.")


def _statistics(results: RunResults) -> dict[str, list[StatisticRow]]:
    """Per persona whose diagnostics compare more than one per-sample statistic, its rows."""
    return {persona: diag.statistics for persona, diag in diagnostics_by_persona(results).items()
            if len({r.statistic for r in diag.statistics}) > 1}


def _statistic_bullet(results: RunResults) -> str | None:
    """On which personas the pole whose mask breaks the model changes with the per-sample statistic."""
    breaks = {persona: {r.breaks for r in rows} for persona, rows in _statistics(results).items()}
    if not breaks:
        return None
    flips = [persona for persona, poles in breaks.items() if len(poles) > 1]
    if not flips:
        return (f"- **Which pole's mask breaks the model does not depend on the per-sample statistic** on any of "
                f"{persona_list(list(breaks))}.")
    return (f"- **Which pole's mask breaks the model depends on the per-sample statistic** on {persona_list(flips)} "
            "(the paper's norm grows with answer length; by the length-fair RMS the other pole's mask breaks it).")


def findings_markdown(results: RunResults) -> str:
    """The README's findings of a main-job run: what was run (personas, test items), then one bullet per question
    (which regime wins at equal damage and where a mask does, what the paper's masks do and cost, how much opposing
    masks differ like with like, and whether the statistic decides which pole's mask breaks the model), every
    number and verdict formatted from ``results``; a bullet whose figures the run lacks is left out.

    Examples:
        >>> text = findings_markdown(load_results("reports/results.json"))
        >>> print(text.splitlines()[0])
        Seven personas (power, wealth, hallucination and the four MBTI axes), 100 test items each (MBTI: 65), damage as KL on neutral texts:
        >>> print(text.splitlines()[-1][:105])
        - **Which pole's mask breaks the model depends on the per-sample statistic** on wealth, hallucination and
    """
    personas = list(results.personas)
    usual = results.personas[personas[0]].n_test
    others: dict[int, list[str]] = {}
    for persona, entry in results.personas.items():
        if entry.n_test != usual:
            others.setdefault(entry.n_test, []).append(persona)
    exceptions = ", ".join(f"{'MBTI' if set(ps) == set(MBTI_AXES) else persona_list(ps)}: {n}" for n, ps in others.items())
    count = NUMBERS.get(len(personas), str(len(personas)))
    lines = [f"{count[0].upper() + count[1:]} personas ({persona_list(personas)}), {usual} test items each"
             + (f" ({exceptions})" if exceptions else "") + ", damage as KL on neutral texts:", "",
             _winners_bullet(results)]
    lines += [bullet for bullet in (*(_paper_bullet(results, rho) for rho in results.config.sparsities or ()),
                                    _overlap_bullet(results), _statistic_bullet(results)) if bullet is not None]
    return "\n".join(lines) + "\n"


def _methods_sentence(wins: _Wins) -> str | None:
    """Which method of a family of regimes (steering) wins where: the most frequent one "otherwise"."""
    sentences = []
    for kind, by_persona in wins.by_kind.items():
        if sum(k == kind for k in KINDS.values()) < 2:                # a kind of one regime (LoRA, RAG, a prompt)
            continue
        rows = [(persona, w) for persona, ws in by_persona.items() for w in ws]
        counts = Counter(w.regime for _, w in rows)
        main = counts.most_common(1)[0][0]
        others = []
        for regime in counts:
            if regime != main:
                budgets: dict[float, list[str]] = {}
                for persona, w in rows:
                    if w.regime == regime:
                        budgets.setdefault(w.budget, []).append(persona)
                others.append(f"{_name(regime)} " + _join([f"at {_budgets([b])} on {persona_list(ps)}" for b, ps in sorted(budgets.items())]))
        wording = (f"{'; '.join(others)}, {_name(main)} otherwise" if others else f"all {_name(main)}")
        sentences.append(f"{kind[:1].upper() + kind[1:]}'s wins are {wording}.")
    return " ".join(sentences) or None


def _leads_sentence(results: RunResults) -> str | None:
    """Whether each winner's lead over its runner-up is decisive (its paired interval above 0)."""
    rows = [(persona, w) for persona, entry in results.personas.items() for w in entry.budget_winners
            if isinstance(w, BudgetWinnerRow) and w.lead is not None and w.runner_up is not None]
    if not rows:
        return None
    decisive = [(p, w) for p, w in rows if w.decisive]
    other = [(p, w) for p, w in rows if not w.decisive]

    def lead(persona: str, w: BudgetWinnerRow) -> str:
        verdict = f", no verdict: n < {MIN_N}" if w.decisive is None else ""
        return f"{persona_list([persona])}'s at {_budgets([w.budget])} ({_ci(w, 'lead')} over {_name(w.runner_up or '')}{verdict})"

    if not other:
        return "Every winner's lead over its runner-up is decisive."
    if not decisive:
        return "No winner's lead over its runner-up is decisive: " + "; ".join(lead(p, w) for p, w in other) + "."
    if len(other) <= len(decisive):
        return "Every winner's lead over its runner-up is decisive except " + "; ".join(lead(p, w) for p, w in other) + "."
    return ("A winner's lead over its runner-up is decisive only on "
            + _join([f"{persona_list([p])} at {_budgets([w.budget])}" for p, w in decisive]) + ".")


def _control_clause(entry: PersonaResult, poles: Sequence[tuple[Side, str]], matched: bool, budget: float | None = None) -> str | None:
    """Whether the poles' masks (``(side, condition)``) beat their random control of the same sparsity or
    (``matched``) of equal damage, with the advantages and the controls' KL on the reported texts; with ``budget``,
    whether the same-sparsity control is within it."""
    controls = {row.condition: row for row in entry.controls}
    rows = [(side, controls[c]) for side, c in poles if c in controls and (not matched or controls[c].matched_control is not None)]
    if not rows:
        return None
    key = "matched_advantage" if matched else "advantage"
    what = "random control of equal damage" if matched else "random control of the same sparsity"
    verdicts = [(side, row.beats_matched if matched else row.beats_control, _ci(row, key)) for side, row in rows]
    beat = [(side, ci) for side, v, ci in verdicts if v]
    if len(beat) == len(verdicts):
        text = (f"both poles' masks beat their {what} ({' and '.join(ci for _, ci in beat)})" if len(beat) > 1
                else f"the {beat[0][0]} pole's mask beats its {what} ({beat[0][1]})")
    elif not beat and all(v is False for _, v, _ in verdicts):
        text = (f"neither pole's mask beats its {what} ({' and '.join(ci for _, _, ci in verdicts)})" if len(verdicts) > 1
                else f"the {verdicts[0][0]} pole's mask does not beat its {what} ({verdicts[0][2]})")
    else:
        text = ", ".join(f"the {side} pole's mask {'beats' if v else 'has no verdict against' if v is None else 'does not beat'} "
                         f"its {what} ({ci})" for side, v, ci in verdicts)
    names = list(dict.fromkeys((row.matched_control if matched else row.control) or "" for _, row in rows))
    kls = [entry.damage[name].kl for name in names if name in entry.damage]
    if len(kls) == len(names):
        text += f"; {'that control costs' if len(kls) == 1 else 'those controls cost'} KL {' and '.join(f'{kl:.3g}' for kl in kls)}"
        if budget is not None and not matched:
            text += (", above the budget: it matches sparsity, not damage" if min(kls) > budget
                     else ", within the budget too" if max(kls) <= budget else "")
    return text


def _mask_win_sentence(results: RunResults, persona: str, w: BudgetWinnerRow) -> str:
    """A mask's win in detail: its damage, the same mask alone (or with its prompt), the prompt alone, what it adds
    to the prompt, and whether each pole's mask beats its random controls."""
    entry = results.personas[persona]
    contrasts = {row.pair: row for row in entry.contrasts}
    alone = w.pair.removesuffix("+prompt")
    other = alone if w.pair.endswith("+prompt") else f"{w.pair}+prompt"
    beside = []
    if other in contrasts:
        beside.append(f"the same mask {'alone' if other == alone else 'with its prompt'} {_separates(contrasts[other])}")
    if "prompt" in contrasts:
        beside.append(f"the prompt alone {_separates(contrasts['prompt']).replace('the poles', 'them')}")
    parts = [f"On {persona_list([persona])} at {_budgets([w.budget])} the winning mask costs KL {w.test_kl:.4f} on the reported texts"]
    parts += [_join(beside)] if beside else []
    added = {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"}.get(f"{alone}+prompt")
    if added is not None:
        parts.append(f"with its prompt the mask {_adds(added)}")
    text = "; ".join(parts)
    if alone in contrasts:
        poles: list[tuple[Side, str]] = [("seek", contrasts[alone].seek_condition), ("reject", contrasts[alone].reject_condition)]
        clauses = [c for c in (_control_clause(entry, poles, False, w.budget), _control_clause(entry, poles, True)) if c]
        if clauses:
            text += ". Alone, " + "; ".join(clauses)
    return text + "."


def _best_masks_sentence(results: RunResults) -> str | None:
    """Per budget, the best mask alone within it where no mask wins, and what the best mask with its prompt adds to
    the prompt alone there."""
    best: dict[float, list[tuple[str, Record]]] = {}
    added: list[tuple[str, float, Record]] = []
    for persona, entry in results.personas.items():
        additions = {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"}
        for w in entry.budget_winners:
            if isinstance(w, BudgetWinnerRow) and is_mask(w.pair):
                continue
            row = best_mask(entry, w.budget, with_prompt=False)
            if row is not None:
                best.setdefault(w.budget, []).append((persona, row))
            with_prompt = best_mask(entry, w.budget, with_prompt=True)
            if with_prompt is not None and with_prompt.pair in additions:
                added.append((persona, w.budget, additions[with_prompt.pair]))
    sentences = []
    if best:
        tops = {budget: max(rows, key=lambda r: r[1].estimate("difference").value) for budget, rows in sorted(best.items())}
        sentences.append("Where no mask wins, the best mask alone within the budget separates the poles by at most "
                         + _join([f"{_ci(row)} at {_budgets([b])} ({persona_list([p])})" for b, (p, row) in tops.items()]) + ".")
    if added:
        verdicts = Counter("adds" if r.estimate("added").low > 0 else "takes" if r.estimate("added").high < 0 else "nothing"
                           for _, _, r in added)
        persona, budget, top = max(added, key=lambda a: a[2].estimate("added").value)
        counts = [f"{how} in {verdicts[key]}" for key, how in (("adds", "adds to the prompt alone detectably"),
                                                               ("nothing", "adds nothing detectable to it"), ("takes", "takes from it"))
                  if verdicts[key]]
        sentences.append(f"In the {len(added)} persona budgets no mask wins, the best mask with its prompt within the budget "
                         f"{_join(counts)} (the most: {_ci(top, 'added')}, {persona_list([persona])} at {_budgets([budget])}).")
    return " ".join(sentences) or None


def _full_winners_bullet(results: RunResults) -> str:
    """The README's winners bullet, then which method of each family wins
    where, whether each lead is decisive, each mask win in detail and the best masks where none wins."""
    wins = _wins(results)
    sentences = [_methods_sentence(wins), _leads_sentence(results),
                 *(_mask_win_sentence(results, persona, w) for persona, w in wins.masks), _best_masks_sentence(results)]
    return " ".join([_winners_bullet(results), *(s for s in sentences if s)])


def _reported_text_bullet(results: RunResults) -> str | None:
    """Which winners land above their budget on the reported neutral texts, and who wins when the budget is
    enforced there (the ``equal_damage`` rule)."""
    over: list[tuple[str, BudgetWinnerRow]] = []
    changed: list[tuple[str, BudgetWinnerRow, EqualDamageRow | None]] = []
    for persona, entry in results.personas.items():
        reported = {e.budget: e for e in entry.equal_damage}
        for w in entry.budget_winners:
            if not isinstance(w, BudgetWinnerRow) or w.budget not in reported:
                continue
            e = reported[w.budget]
            if w.test_kl > w.budget:
                over.append((persona, w))
            if not isinstance(e, EqualDamageRow) or e.pair != w.pair:
                changed.append((persona, w, e if isinstance(e, EqualDamageRow) else None))
    if not any(entry.equal_damage for entry in results.personas.values()):
        return None
    budgets = sorted({w.budget for _, w, _ in changed})
    selection, reported_n = results.config.n_selection_neutral, results.config.n_neutral
    heading = (f"Which regime wins at {_budgets(budgets)} depends on which texts enforce the budget." if budgets
               else "Which regime wins does not depend on which texts enforce the budget.")
    texts = f"Picks are made within the budget on the {f'{selection} ' if selection else ''}selection texts"
    where = f"on the {f'{reported_n} ' if reported_n else ''}reported texts"
    if over:
        groups: dict[float, dict[str, list[str]]] = {}
        for persona, w in over:
            groups.setdefault(w.budget, {}).setdefault(_name(w.pair), []).append(persona)
        listing = "; ".join(
            " and ".join(f"{name} on {persona_list(ps)}" for name, ps in by_name.items())
            + f" at KL {_span([w.test_kl for _, w in over if w.budget == b], digits=4)} for the {b:g} budget"
            for b, by_name in sorted(groups.items()))
        text = f"{texts}; {where} {_count(len(over))} winner{'s land' if len(over) > 1 else ' lands'} above it ({listing})."
    else:
        text = f"{texts}; {where} every winner stays within its budget."
    if changed:
        per_budget = []
        for b in budgets:
            by_name: dict[str, list[tuple[str, EqualDamageRow]]] = {}
            nothing = [p for p, w, pick in changed if w.budget == b and pick is None]
            for persona, w, pick in changed:
                if w.budget == b and pick is not None:
                    by_name.setdefault(_name(pick.pair), []).append((persona, pick))
            words = [f"{name} on " + _join([f"{persona_list([p])} ({_ci(e)})" for p, e in rows]) for name, rows in by_name.items()]
            words += [f"nothing on {persona_list(nothing)}"] if nothing else []
            per_budget.append(f"the {_budgets([b])} winner becomes " + _join(words))
        text += (" Counting only picks within the budget on the reported texts (the `by reported-text KL` column), "
                 + "; ".join(per_budget) + ".")
    either = _either_rule(results)
    return f"- **{heading}** {text}" + (f" {either}" if either else "")


def _either_rule(results: RunResults) -> str | None:
    """``From KL ≤ 0.1 up, steering or LoRA wins under either rule.``: the smallest budget from which no mask wins
    under either rule, and the kinds of regime that do."""
    budgets = sorted(results.config.damage_budgets or {w.budget for e in results.personas.values() for w in e.budget_winners})
    winners: dict[float, list[str]] = {b: [] for b in budgets}
    for entry in results.personas.values():
        for row in [*entry.budget_winners, *entry.equal_damage]:
            if row.pair is not None and row.budget in winners:
                winners[row.budget].append(row.pair)
    start = None
    for i in range(len(budgets) - 1, -1, -1):
        if not winners[budgets[i]] or any(is_mask(pair) for pair in winners[budgets[i]]):
            break
        start = i
    if start is None:
        return None
    kinds = list(dict.fromkeys(KINDS.get(_regime(pair), _regime(pair))
                               for b in budgets[start:] for pair in winners[b]))
    if start == 0:
        return f"At every budget {_join(kinds, 'or')} wins under either rule."
    return f"From {_budgets([budgets[start]])} up, {_join(kinds, 'or')} wins under either rule."


def _full_paper_bullet(results: RunResults, rho: float, method: str = "contrastive_wanda") -> str | None:
    """The paper's rows at ``rho``: the mask with the prompt per persona, what it adds to the prompt, the mask alone
    where its verdict differs, which pole's mask beats its random controls, and what one pole's mask costs."""
    paper = _paper(results, rho, method)
    if paper is None:
        return None
    pair, name = f"{method}@{rho:g}", METHOD_NAMES.get(method, method)
    contrasts = {p: {row.pair: row for row in entry.contrasts} for p, entry in results.personas.items()}
    additions = {p: {r.condition: r for r in entry.prompt_additions if r.side == "seek − reject"} for p, entry in results.personas.items()}

    def effect(p: str, key: str = f"{pair}+prompt") -> str:
        return f"{persona_list([p])} ({_ci(contrasts[p][key])})"

    parts = []                                                          # "{it}": the first clause names the mask
    if paper.adds:
        values = [additions[p][f"{pair}+prompt"].added for p in paper.adds]
        parts.append(f"{{it}} separates the poles on {_join([effect(p) for p in paper.adds])}, adding {_signed_span(values)} to the "
                     "prompt there")
    for p in paper.only:
        parts.append(f"on {persona_list([p])} {{it}} separates them ({_ci(contrasts[p][f'{pair}+prompt'])}) but "
                     f"{_adds(additions[p][f'{pair}+prompt'])}")
    if paper.unmeasured:
        parts.append(f"{{it}} separates them on {_join([effect(p) for p in paper.unmeasured])}")
    if paper.none:
        parts.append(f"{{it}} does not detectably separate them on {_join([effect(p) for p in paper.none], 'or')}")
    clauses = "; ".join(part.format(it=f"{name} with the prompt" if i == 0 else "it") for i, part in enumerate(parts))
    text = f"- **The paper's rows (ρ = {rho:g}).** {clauses[:1].upper() + clauses[1:]}."
    differs = [p for p in paper.adds + paper.only + paper.unmeasured + paper.none if pair in contrasts[p]
               and (contrasts[p][pair].difference_low > 0) != (p not in paper.none)]
    if differs:
        text += " Alone, " + "; ".join(f"on {persona_list([p])} the mask {_separates(contrasts[p][pair])}" for p in differs) + "."
    for sentence in (_paper_controls(results, rho, method, matched=False), _paper_controls(results, rho, method, matched=True)):
        text += f" {sentence}" if sentence else ""
    damage = _paper_damage(results, paper)
    return text + (f" {damage[:1].upper() + damage[1:]}." if damage else "")


def _paper_controls(results: RunResults, rho: float, method: str, matched: bool) -> str | None:
    """On which personas each pole's paper mask beats its random control of the same sparsity (alone, and with the
    prompt beside it) or (``matched``) its damage-matched one."""
    beats: dict[Side, list[str]] = {side: [] for side in SIDES}
    with_prompt: dict[Side, list[str]] = {side: [] for side in SIDES}
    seen = []
    for persona, entry in results.personas.items():
        controls = {row.condition: row for row in entry.controls}
        rows = {side: controls.get(f"{method}-{side}@{rho:g}") for side in SIDES}
        if any(row is None or (matched and row.matched_control is None) for row in rows.values()):
            continue
        seen.append(persona)
        for side, row in rows.items():
            assert row is not None
            if (row.beats_matched if matched else row.beats_control):
                beats[side].append(persona)
            elif not matched and (prompt := controls.get(f"{method}-{side}@{rho:g}+prompt")) is not None and prompt.beats_control:
                with_prompt[side].append(persona)
    if not seen:
        return None
    neither = [p for p in seen if not any(p in beats[s] + with_prompt[s] for s in SIDES)]
    what = "random control of equal damage (`random-matched:…`)" if matched else "random control of the same sparsity"
    poles = [(f"on {persona_list(beats[side])}" if beats[side] else "nowhere")
             + (f" (with the prompt {'also ' if beats[side] else ''}on {persona_list(with_prompt[side])})" if with_prompt[side] else "")
             for side in SIDES]
    return (f"Its seek mask beats its {what} {poles[0]}, its reject mask {poles[1]}"
            + (f"; neither pole's mask does on {persona_list(neither, 'or')}" if neither else "") + ".")


def _full_overlap_bullet(results: RunResults) -> str | None:
    """The README's overlap bullet, then the widest ReLU construction range, how far a share outside its range lies
    from it, and the two Contrastive-Sparse rules."""
    bullet = _overlap_bullet(results)
    if bullet is None:
        return None
    ranges = _relu_ranges(results)
    p, differ, low, high = max(ranges, key=lambda x: x[3] - x[2])
    sentences = [f"The widest construction range is {persona_list([p])}'s ({100 * differ:.1f} % inside {100 * low:.1f}–{100 * high:.1f} %)."]
    for p, differ, low, high in ranges:
        if not low <= differ <= high:
            below = differ < low
            name = persona_list([p])
            sentences.append(f"{name[:1].upper() + name[1:]}'s {100 * differ:.2f} % is {100 * (low - differ if below else differ - high):.2f} "
                             f"points {'below its computed lower' if below else 'above its computed upper'} bound of "
                             f"{100 * (low if below else high):.2f} %.")
    sparse = [(rule, [v[variant].differ for v in _overlap(results).values() if variant in v]) for rule, variant in SPARSE_RULES.items()]
    sparse = [(rule, shares) for rule, shares in sparse if shares]
    if sparse:
        sentences.append("Contrastive-Sparse's opposing masks differ in "
                         + _join([f"{_span(shares, 100)} % by {rule} rule" for rule, shares in sparse]) + ".")
    return " ".join([bullet, *sentences])


def _full_statistic_bullet(results: RunResults) -> str | None:
    """The README's statistic bullet, then per persona which pole's mask
    breaks the model under each statistic (perplexity ratios), the poles' answer lengths and the shares of z > 0."""
    bullet = _statistic_bullet(results)
    if bullet is None:
        return None
    stats = _statistics(results)
    flips = [p for p, rows in stats.items() if len({r.breaks for r in rows}) > 1]
    same = [p for p in stats if p not in flips]

    def ratio(row: StatisticRow, side: str) -> float:
        return float(row.seek_perplexity_ratio if side == "seek" else row.reject_perplexity_ratio)

    def ratios(row: StatisticRow) -> str:
        return f"×{_ratio(ratio(row, row.breaks))} against ×{_ratio(ratio(row, 'reject' if row.breaks == 'seek' else 'seek'))}"

    def short(statistic: str) -> str:
        return "RMS" if statistic == "rms" else statistic

    sentences = []
    if flips:
        patterns: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for p in flips:
            patterns.setdefault(tuple((r.statistic, r.breaks) for r in stats[p]), []).append(p)
        sentences.append("; ".join(
            "The breaking mask is " + _join([f"the {pole} pole's by {STATISTIC_NAMES.get(stat, stat)}" for stat, pole in pattern]) + " on "
            + _join([f"{persona_list([p])} ({'; '.join(ratios(r) for r in stats[p])})" for p in ps]) for pattern, ps in patterns.items()) + ".")
        longer, alike = [], []
        for p in flips:
            first = stats[p][0]
            shares = " against ".join(f"{100 * r.positive_share:.0f} %{' of channels' if i == 0 else ''} by {short(r.statistic)}"
                                      for i, r in enumerate(stats[p]))
            long, short_side = sorted([(first.seek_tokens, "seek"), (first.reject_tokens, "reject")], reverse=True)
            if long[0] > (1 + SIMILAR_LENGTH) * short_side[0]:
                longer.append(f"on {persona_list([p])} the {long[1]} pole's answers are longer ({long[0]:.0f} against "
                              f"{short_side[0]:.0f} tokens) and z > 0 on {shares}")
            else:
                alike.append(f"{persona_list([p])} (seek {first.seek_tokens:.0f}, reject {first.reject_tokens:.0f} tokens; z > 0 on {shares})")
        if longer:
            sentences.append("; ".join(longer)[:1].upper() + "; ".join(longer)[1:] + ".")
        if alike:
            sentences.append(f"{_join(alike)[:1].upper() + _join(alike)[1:]} flip{'s' if len(alike) == 1 else ''} with answer lengths "
                             f"within {100 * SIMILAR_LENGTH:.0f} % of each other.")
    if same:
        sentences.append(f"On {persona_list(same)} the same pole's mask breaks it under every statistic ("
                         + "; ".join(f"{persona_list([p])}: {stats[p][0].breaks}, " + _join([f"×{_ratio(ratio(r, r.breaks))} by "
                                     f"{short(r.statistic)}" for r in stats[p]]) for p in same) + ").")
    return " ".join([bullet, *sentences])


def _stability_bullet(results: RunResults) -> str | None:
    """How much a pole's mask differs between disjoint halves of its calibration data against how much the poles
    differ, whether that makes it noise, and the validation seek − reject over the halves."""
    stability = {persona: diag.stability for persona, diag in diagnostics_by_persona(results).items()}
    if not stability:
        return None
    summaries = {p: s.summary for p, s in stability.items()}
    noise = [p for p, s in summaries.items() if s.noise]
    groups: dict[str, list[str]] = {"positive on": [], "negative on": [], "across 0 on": []}
    for p, s in summaries.items():
        e = s.estimate("separation")
        groups["positive on" if e.defined and e.low > 0 else "negative on" if e.defined and e.high < 0 else "across 0 on"].append(p)
    halves = {s.n_halves for s in summaries.values()}
    over = f"the {_count(halves.pop())} halves" if len(halves) == 1 else "the halves"
    verdict = ("no persona's mask is noise" if not noise else f"the mask of {persona_list(noise)} is noise")
    separation = "; ".join(f"{word} " + _join([f"{persona_list([p])} ({_ci(summaries[p], 'separation')})" for p in ps])
                           for word, ps in groups.items() if ps)
    text = (f"- **Stability.** A pole's mask differs between two disjoint halves of its data in "
            f"{_span([s.within_pole for s in summaries.values()], 100, 0)} % of entries against "
            f"{_span([s.between_poles for s in summaries.values()], 100, 0)} % between the poles, so by that test {verdict}; "
            f"the validation seek − reject over {over} is {separation}")
    stable_nothing = [p for p in groups["across 0 on"] if p not in noise]
    text += (": stable masks that separate nothing." if stable_nothing and stable_nothing == groups["across 0 on"]
             else f" (on {persona_list(stable_nothing)} stable masks that separate nothing)." if stable_nothing else ".")
    rhos = {s.sparsity for s in summaries.values()}
    if len(rhos) == 1:
        rho = rhos.pop()
        per_persona = {p: [x for d in s.draws for x in (d.seek_between_halves, d.reject_between_halves)] for p, s in stability.items()}
        per_persona = {p: v for p, v in per_persona.items() if v}
        if per_persona:
            low = [p for p, v in per_persona.items() if len(per_persona) > 1 and all(max(v) < min(w) for q, w in per_persona.items() if q != p)]
            rest = [x for p, v in per_persona.items() if p not in low for x in v]
            exceptions = (" on every persona but " + "; ".join(f"{persona_list([p])} ({_span(per_persona[p], 100, 0)} %)" for p in low)
                          if low else "")
            text += (f" Under ReLU the poles differ in up to 2ρ = {200 * rho:.0f} % by construction, so the informative number is "
                     f"the within-pole one: swapping the calibration half changes {_span(rest, 100, 0)} % of the entries of a pole's mask "
                     f"(per draw and pole){exceptions}; each mask removes ρ = {100 * rho:.0f} % of a row.")
    return text


def _accuracy_bullet(results: RunResults) -> str | None:
    """The base model's accuracy toward the seek pole per persona (saturated where it picks one pole on every item),
    and the most items a budget winner moves to its pole."""
    base, flips = {}, {}
    for persona, entry in results.personas.items():
        table = {(row.condition, row.side): row for row in entry.table}
        if ("base", "seek") not in table:
            continue
        base[persona] = table[("base", "seek")]
        contrasts = {row.pair: row for row in entry.contrasts}
        moved = [table[(c, side)].flips_gained for w in entry.budget_winners if isinstance(w, BudgetWinnerRow) and w.pair in contrasts
                 for side, c in zip(SIDES, (contrasts[w.pair].seek_condition, contrasts[w.pair].reject_condition)) if (c, side) in table]
        if moved:
            flips[persona] = max(moved)
    if not base:
        return None
    shares = [f"all {row.n} items on {persona_list([p])}" if row.accuracy == 1.0 else f"none of the {row.n} items on {persona_list([p])}"
              if row.accuracy == 0.0 else f"{100 * row.accuracy:.0f} %{' of the test items' if i == 0 else ''} on {persona_list([p])}"
              for i, (p, row) in enumerate(base.items())]
    saturated = [p for p, row in base.items() if row.accuracy in (0.0, 1.0)]
    text = ("- **Accuracy** (the paper's A/B measure): the base model picks the seek pole's answer on " + _join(shares)
            + (f" (saturated on {persona_list(saturated)}: accuracy cannot move further toward that pole)" if saturated else "") + ".")
    if flips:
        sizes = [base[p].n for p in flips]
        most = [f"{n}{f' of the {size}' if i == 0 or size != sizes[i - 1] else ''}{' items to its pole' if i == 0 else ''} on "
                 f"{persona_list([p])}" for i, ((p, n), size) in enumerate(zip(flips.items(), sizes))]
        text += f" A budget winner moves at most {_join(most)}; the per-token margin and the paired statistics are what see the effects."
    return text


def full_run_markdown(results: RunResults) -> str:
    """What the full run shows, whichever way it falls: one bullet per question (who wins each damage budget and how
    decisively, the best masks there; the budget enforced on the reported texts; the paper's rows; overlap like with
    like; statistic dependence; stability; accuracy), every number and verdict formatted from ``results``; a bullet or
    clause whose figures the run lacks is left out.

    Examples:
        >>> text = full_run_markdown(load_results("reports/results.json"))
        >>> for line in text.splitlines():
        ...     print(line.split("**")[1])
        At equal damage, steering or fine-tuning wins, and a mask wins once.
        Which regime wins at KL ≤ 0.02 and 0.1 depends on which texts enforce the budget.
        The paper's rows (ρ = 0.3).
        Opposing masks' overlap, like with like:
        Which pole's mask breaks the model depends on the per-sample statistic
        Stability.
        Accuracy
    """
    bullets = [_full_winners_bullet(results), _reported_text_bullet(results),
               *(_full_paper_bullet(results, rho) for rho in results.config.sparsities or ()),
               _full_overlap_bullet(results), _full_statistic_bullet(results), _stability_bullet(results), _accuracy_bullet(results)]
    return "\n".join(b for b in bullets if b is not None) + "\n"


def _grouped(results: RunResults, key: Callable[[PersonaResult], str]) -> str:
    """``"X (power and wealth), Y (the others)"``: the personas grouped by ``key``, in the run's order; one group
    alone is ``"X"``."""
    groups: dict[str, list[str]] = {}
    for persona, entry in results.personas.items():
        groups.setdefault(key(entry), []).append(persona)
    if len(groups) == 1:
        return next(iter(groups))
    return _join([f"{value} ({persona_list(personas)})" for value, personas in groups.items()])


def _set_up(entry: PersonaResult) -> str:
    """``bfloat16 on an AMD EPYC (avx512_bf16)``, as far as the persona's provenance recorded it."""
    cpu = entry.provenance.cpu
    where = f"{cpu.model} ({cpu.kind})" if isinstance(cpu, CPU) else f"a CPU {NOT_RECORDED}"
    return f"**{entry.provenance.dtype}** on {where}"


def run_markdown(results: RunResults) -> str:
    """What computed a main-job run: per persona the revision and finish date, the dtype and CPU, the sizes (fit,
    validation and test items, the neutral texts of each use) and each persona's compute time (the sum of its
    recorded stages; ``not recorded`` in files from before 2026-12-07), all read from ``results``.

    Examples:
        >>> print(run_markdown(load_results("reports/results.json")).split(", finished")[0].split("), ")[1])
        computed by revision `2ec75e2` (power and wealth) and `a1d9906` (hallucination and the four MBTI axes)
    """
    config, entries = results.config, list(results.personas.values())
    count = NUMBERS.get(len(entries), str(len(entries)))
    sentences = [
        f"**{count[0].upper() + count[1:]} personas** ({persona_list(list(results.personas))}), computed by revision "
        + _grouped(results, lambda e: f"`{e.revision}`") + ", finished "
        + _grouped(results, lambda e: e.finished[:10]) + f"; seed {config.seed}, "
        + _grouped(results, _set_up) + ".",
        "Calibration: " + _grouped(results, lambda e: f"{e.used.fit_items} items fit the signatures and "
                                                       f"{e.used.validation_items} validate the searches")
        + "; test items: " + _grouped(results, lambda e: str(e.n_test)) + ".",
    ]
    texts = [(config.n_neutral, "report the damage (KL)"), (config.n_selection_neutral, "enforce the searches' budgets"),
             (config.n_fit_neutral, "fit the damage-aware methods")]
    if config.n_neutral is not None:
        sentences.append("Neutral texts: " + ", ".join(f"{n} {what}" for n, what in texts if n) + ".")
    sentences.append(f"Compute time per persona (the sum of its stages): {compute_times(results)}.")
    return " ".join(sentences) + "\n"


def previous_protocol_markdown(results: RunResults) -> str:
    """The full run's verdict on the previous protocol's summary "at equal damage a mask never wins": where a mask,
    alone or with its prompt, wins a damage budget when picks are made within it on the selection texts (the budget
    winners) and where it does when the budget is enforced on the reported texts (the ``by reported-text KL`` rule).

    Examples:
        >>> print(previous_protocol_markdown(load_results("reports/results.json")).split(" (the")[0])
        The full run above contradicts that summary on hallucination at KL ≤ 0.02: Contrastive-Wanda with its prompt
    """
    selection = _wins(results).masks
    reported = [(persona, e) for persona, entry in results.personas.items() for e in entry.equal_damage
                if isinstance(e, EqualDamageRow) and is_mask(e.pair)]
    measured = any(entry.equal_damage for entry in results.personas.values())
    won = {(persona, w.budget) for persona, w in selection}
    kept = {(persona, e.budget) for persona, e in reported}
    only_reported = [(persona, e) for persona, e in reported if (persona, e.budget) not in won]
    if not selection and not only_reported:
        rule = " under either rule (picks within the budget on the selection texts or on the reported texts)" if measured else ""
        return f"The full run above agrees with that summary: no mask wins a damage budget{rule}.\n"
    extra = "; ".join(_mask_case(persona, e) for persona, e in only_reported)
    if not selection:
        return ("With picks made within the budget on the selection texts the full run above agrees with that summary (no mask "
                f"wins a damage budget); by the reported-text rule it contradicts it on {extra}.\n")
    cases = "; ".join(_mask_case(persona, w) + (" (a win the reported-text rule does not keep)" if measured and (persona, w.budget) not in kept
                                                 else "") for persona, w in selection)
    return (f"The full run above contradicts that summary on {cases}" + (f"; and, by the reported-text rule, on {extra}" if extra else "")
            + ".\n")


@dataclass
class Sources:
    """What the generated blocks are written from: a main-job run's ``results`` and the folder of the committed
    study records (``reports``: ``atlas/*.json``, ``composition.json`` and ``regimes/*.json``; the CLI takes the
    folder of ``--results``), each study read when a block first needs it, in the run's persona order. A study
    block without ``reports``, or without its files there, is an error naming them.

    Examples:
        >>> sources = Sources(load_results("reports/results.json"), Path("reports"))
        >>> [a.persona for a in sources.atlases][:3], sources.composition.type, len(sources.regimes)
        (['power', 'wealth', 'hallucination'], 'INTJ', 7)
        >>> Sources(sources.results).atlases
        Traceback (most recent call last):
        ...
        ValueError: the study blocks are written from the study records: pass their folder (Sources(results, reports=...); ...
    """

    results: RunResults
    reports: Path | None = None

    def _files(self, pattern: str) -> list[Path]:
        if self.reports is None:
            raise ValueError("the study blocks are written from the study records: pass their folder "
                             "(Sources(results, reports=...); the CLI reads the folder of --results)")
        files = sorted(Path(self.reports).glob(pattern))
        if not files:
            raise ValueError(f"{Path(self.reports) / pattern} matches no file: a study block is written from it")
        return files

    def _order(self, persona: str) -> tuple[int, str]:
        personas = list(self.results.personas)
        return (personas.index(persona) if persona in personas else len(personas), persona)

    @cached_property
    def atlases(self) -> list[AtlasStudy]:
        """The atlases (``atlas/*.json``)."""
        return sorted((load_atlas(path) for path in self._files("atlas/*.json")), key=lambda a: self._order(a.persona))

    @cached_property
    def composition(self) -> CompositionStudy:
        """The composition study (``composition.json``)."""
        return load_composition(self._files("composition.json")[0])

    @cached_property
    def regimes(self) -> list[RegimesStudy]:
        """The regime comparisons (``regimes/*.json``)."""
        return sorted((load_regimes(path) for path in self._files("regimes/*.json")), key=lambda r: self._order(r.persona))


BLOCKS: dict[str, Callable[[Sources], str]] = {
    "findings": lambda s: findings_markdown(s.results), "across-personas": lambda s: across_personas_markdown(s.results),
    "full-run-shows": lambda s: full_run_markdown(s.results), "run": lambda s: run_markdown(s.results),
    "previous-protocol": lambda s: previous_protocol_markdown(s.results), "atlas": lambda s: atlas_findings_markdown(s.atlases),
    "composition": lambda s: composition_findings_markdown(s.composition), "regimes": lambda s: regimes_findings_markdown(s.regimes)}
START, END = "<!-- generated: ", "<!-- end generated -->"
BLOCK = re.compile(r"^<!-- generated: (?P<name>[\w-]+) \((?P<command>[^)\n]*)\) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.M | re.S)


def rewrite_generated(text: str, sources: RunResults | Sources) -> str:
    """``text`` with every generated block's body (the lines between ``<!-- generated: NAME (COMMAND) -->`` and
    ``<!-- end generated -->``) written again by the block's renderer, between blank lines: from the run's results
    (``findings``: [`findings_markdown`][persona_interp.report.findings.findings_markdown], ``across-personas``:
    [`across_personas_markdown`][persona_interp.report.markdown.across_personas_markdown], ``full-run-shows``:
    [`full_run_markdown`][persona_interp.report.findings.full_run_markdown], ``run``:
    [`run_markdown`][persona_interp.report.findings.run_markdown], ``previous-protocol``:
    [`previous_protocol_markdown`][persona_interp.report.findings.previous_protocol_markdown]) or from the study
    records beside them (``atlas``, ``composition``, ``regimes``: [`study_findings`][persona_interp.report.study_findings]),
    both held by ``sources`` (a [`RunResults`][persona_interp.report.results.RunResults] alone serves the run's blocks).
    Everything outside the blocks stays as it is. A marker without its pair, or a block of an unknown name, is an
    error naming it.

    Examples:
        >>> rewrite_generated("<!-- generated: nothing (x) -->\\n<!-- end generated -->\\n", load_results("reports/results.json"))
        Traceback (most recent call last):
        ...
        ValueError: unknown generated block 'nothing': use one of ['findings', 'across-personas', 'full-run-shows', 'run', ...]
    """
    blocks = list(BLOCK.finditer(text))
    starts, ends = text.count(START), text.count(END)
    if starts != len(blocks) or ends != len(blocks):
        raise ValueError(f"{starts} '{START}…' and {ends} '{END}' marker(s) but {len(blocks)} whole block(s): each block "
                         f"is a '{START}NAME (COMMAND) -->' line, its body and a '{END}' line, none inside another")
    for block in blocks:
        if block["name"] not in BLOCKS:
            raise ValueError(f"unknown generated block {block['name']!r}: use one of {list(BLOCKS)}")
    held = sources if isinstance(sources, Sources) else Sources(sources)
    return BLOCK.sub(lambda m: f"{m.group(0)[:m.start('body') - m.start()]}\n{BLOCKS[m['name']](held).strip(chr(10))}\n\n{END}",
                     text)


def rewrite_pages(pages: Sequence[Path], sources: RunResults | Sources) -> list[Path]:
    """Rewrite the generated blocks of each page in ``pages`` from ``sources``
    ([`rewrite_generated`][persona_interp.report.findings.rewrite_generated]; each study read once for all pages); a
    page without blocks is an error. Returns the pages whose text changed."""
    held = sources if isinstance(sources, Sources) else Sources(sources)
    changed = []
    for page in pages:
        text = Path(page).read_text(encoding="utf-8")
        if START not in text:
            raise ValueError(f"{page} has no generated block ('{START}NAME (COMMAND) -->' … '{END}')")
        try:
            new = rewrite_generated(text, held)
        except ValueError as error:
            raise ValueError(f"{page}: {error}") from None
        if new != text:
            write_text(Path(page), new)
            changed.append(Path(page))
    return changed
