"""How far each mask method falls short of the best regime that is not a mask, per persona and damage budget, and
which of issue #35's three ideas closed most of that gap, read from a main job's typed results
([`RunResults`][persona_interp.report.results.RunResults]).

At each damage budget every regime has one pick: its validation pick within the budget on the selection texts
([`budget_winners`][persona_interp.evaluation.evaluate.budget_winners] ranks them). For every mask method of the
registry ([`methods`][persona_interp.masks.registry.methods] with poles: the signature-only ones and the damage-aware
ones) its pick, alone and with its pole's prompt, is set against the best pick of the regimes that are no mask
(steering, the weight edit, prompt, RAG, LoRA). The **shortfall** is that regime's test seek − reject minus the
mask's, paired on the test items (nats/token): above 0 the mask falls short, below 0 it separates the poles more and
*wins* the budget.

The **gap** the three ideas try to close runs from the best signature-only mask alone (0, the unchanged model, where
none is within the budget) to the best regime that is neither a mask nor the weight edit (the weight edit is one of
the ideas); each idea's share of it ([`IDEAS`][persona_interp.report.shortfall.IDEAS]) is its best pick's gain over
the signature-only mask divided by the gap.

Examples:
    >>> results = load_results("reports/results.json")
    >>> row = next(r for r in shortfall_rows(results) if r.persona == "power" and r.budget == 0.1
    ...            and r.method == "contrastive_wanda" and not r.prompt)
    >>> row.pair, row.best, row.estimate("shortfall").signed(), row.wins
    ('contrastive_wanda@kl0.1', 'mean_difference@kl0.1', '+2.11 [+1.88, +2.34]', False)
    >>> [(r.persona, r.budget, r.prompt, r.decisive) for r in shortfall_rows(results) if r.wins]   # where a mask wins
    [('hallucination', 0.02, False, False), ('hallucination', 0.02, True, True)]
"""
from __future__ import annotations

import statistics
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.evaluation.rows import FrontierRow, Row
from persona_interp.evaluation.stats import Estimate, paired_difference
from persona_interp.masks.registry import method_spec, methods
from persona_interp.report.results import PersonaResult, RunResults

MaskKind = Literal["signature-only", "damage-aware"]
IDEAS: dict[str, tuple[str, ...]] = {          # issue #35's three ideas, each by the regimes (frontier lines) it built
    "retain-aware scores": ("retain_ratio", "set_difference", "snip_set_difference", "gradient"),
    "learned gates": ("learned_gates",),
    "weight-edit steering": ("weight_edit",),
}
"""Issue #35's three ideas and the regimes (a frontier row's ``line``) each one built: retain-aware scores without
training ([`persona_interp.masks.damage_aware`][persona_interp.masks.damage_aware]), learned gates with a damage
term ([`persona_interp.masks.learned`][persona_interp.masks.learned]) and weight-edit steering
([`DirectionalEdit`][persona_interp.interventions.weight_edit.DirectionalEdit])."""
UNBUDGETED = ("prompt", "rag")                 # no weight changed: damage 0, eligible at every budget
GOAL_BUDGET = 0.1                              # issue #35's goal: a mask alone wins at KL ≤ 0.1


def mask_methods() -> list[str]:
    """The registered mask methods with poles, in registration order: the signature-only ones first.

    Examples:
        >>> mask_methods()[:2], "learned_gates" in mask_methods()
        (['wanda', 'contrastive_wanda'], True)
    """
    return [spec.name for spec in methods(poles=True)]


def mask_kind(method: str) -> MaskKind:
    """``"signature-only"`` for a mask method that reads only the poles' signatures, ``"damage-aware"`` for one that
    also reads what it damages (a neutral signature, neutral texts or calibration items).

    Examples:
        >>> mask_kind("contrastive_wanda"), mask_kind("gradient")
        ('signature-only', 'damage-aware')
    """
    return "signature-only" if method_spec(method).needs <= {"signatures"} else "damage-aware"


def _method(line: str) -> str:
    """A frontier line's regime: ``"retain_ratio+prompt"`` → ``"retain_ratio"``."""
    return line.removesuffix("+prompt")


def within(entry: PersonaResult, budget: float) -> list[FrontierRow]:
    """The picks of ``entry`` that compete at ``budget``: every regime's pick for it (a row whose ``budgets`` hold
    it) and the prompt and RAG pairs, as [`budget_winners`][persona_interp.evaluation.evaluate.budget_winners] ranks
    them; the paper's fixed-sparsity mask rows are not picks.

    Examples:
        >>> sorted({r.line for r in within(load_results("reports/results.json").personas["power"], 0.5)})[:3]
        ['contrastive_sparse_code', 'contrastive_sparse_code+prompt', 'contrastive_wanda']
    """
    return [r for r in entry.frontier if r.line in UNBUDGETED or (r.budgets is not None and budget in r.budgets)]


def budget_frontier(entry: PersonaResult) -> list[FrontierRow]:
    """Every pick of ``entry`` for some budget and the prompt and RAG pairs: the frontier of the regimes at equal
    damage, without the paper's fixed-sparsity rows (what
    [`plot_mask_frontier`][persona_interp.report.figures.plot_mask_frontier] draws).

    Examples:
        >>> rows = budget_frontier(load_results("reports/results.json").personas["power"])
        >>> any(r.pair.endswith("@0.3") for r in rows), rows[0].pair
        (False, 'prompt')
    """
    return [r for r in entry.frontier if r.line in UNBUDGETED or r.budgets]


def pair_margins(entry: PersonaResult) -> dict[str, Float[Tensor, " n"]]:
    """Each pair's per-item seek − reject margin on the test items (nats/token): its seek condition's per-item
    margin minus its reject condition's; a pair whose conditions have no per-item margins is left out.

    Examples:
        >>> margins = pair_margins(load_results("reports/results.json").personas["power"])
        >>> margins["prompt"].shape, round(float(margins["prompt"].mean()), 3)
        (torch.Size([100]), 0.086)
    """
    out = {}
    for c in entry.contrasts:
        seek, reject = entry.per_item.get(c.seek_condition), entry.per_item.get(c.reject_condition)
        if seek is not None and reject is not None:
            out[c.pair] = (torch.tensor(seek.margin_mean, dtype=torch.float64)
                           - torch.tensor(reject.margin_mean, dtype=torch.float64))
    return out


def best_regime(entry: PersonaResult, budget: float, exclude: Sequence[str] = ()) -> FrontierRow | None:
    """The pick with the largest test seek − reject at ``budget`` among the regimes that are no mask (and not in
    ``exclude``); None when there is none.

    Examples:
        >>> best_regime(load_results("reports/results.json").personas["power"], 0.1).pair
        'mean_difference@kl0.1'
    """
    masks = set(mask_methods())
    picks = [r for r in within(entry, budget) if _method(r.line) not in masks and _method(r.line) not in exclude]
    return max(picks, key=lambda r: r.difference, default=None)


def best_pick(entry: PersonaResult, budget: float, regimes: Sequence[str], prompt: bool = False) -> FrontierRow | None:
    """The pick with the largest test seek − reject at ``budget`` among ``regimes`` (frontier lines without
    ``+prompt``), alone or with its prompt; None when none of them has a pick within the budget.

    Examples:
        >>> best_pick(load_results("reports/results.json").personas["power"], 0.1, ["wanda", "contrastive_wanda"]).pair
        'contrastive_wanda@kl0.1'
    """
    picks = [r for r in within(entry, budget) if _method(r.line) in regimes and r.line.endswith("+prompt") == prompt]
    return max(picks, key=lambda r: r.difference, default=None)


def _paired(margins: dict[str, Tensor], after: str | None, before: str | None, n: int) -> Estimate | None:
    """The paired difference ``after − before`` of two pairs' per-item seek − reject (a missing pair, None, is the
    unchanged model: 0 on every item); None where either pair lacks per-item margins."""
    zero = torch.zeros(n, dtype=torch.float64)
    a = zero if after is None else margins.get(after)
    b = zero if before is None else margins.get(before)
    if a is None or b is None or a.shape != b.shape:
        return None
    return paired_difference(a, b)


class ShortfallRow(Row):
    """One mask method's pick at one damage budget (alone, or with its pole's prompt: ``prompt``) against ``best``,
    the best pick of the regimes that are no mask: ``shortfall`` = best − mask (test seek − reject, nats/token; its
    interval paired on the test items where the results hold per-item margins, else None), ``wins`` where the mask
    separates more (shortfall < 0), ``decisive`` where the paired interval excludes 0 (None: no interval). The
    verdicts against the pick's random controls, per pole (None: no such control; the budget picks with their prompt
    have none): ``*_beats_random`` the random mask removing the same weights per row, ``*_beats_matched`` the random
    mask of equal damage on the selection texts. ``pair`` None: the method has no pick within the budget."""

    persona: str
    budget: float
    method: str
    kind: MaskKind
    prompt: bool
    pair: str | None = None
    kl: float | None = None
    n: int = 0
    difference: float | None = None
    difference_low: float | None = None
    difference_high: float | None = None
    best: str | None = None
    best_difference: float | None = None
    best_difference_low: float | None = None
    best_difference_high: float | None = None
    shortfall: float | None = None
    shortfall_low: float | None = None
    shortfall_high: float | None = None
    wins: bool | None = None
    decisive: bool | None = None
    seek_beats_random: bool | None = None
    reject_beats_random: bool | None = None
    seek_beats_matched: bool | None = None
    reject_beats_matched: bool | None = None


def searched_methods(entry: PersonaResult) -> list[str]:
    """The mask methods ``entry``'s results searched within the budgets (its mask search tables, else its picks), in
    registry order: a method a run did not search has no row (older runs lack the damage-aware methods).

    Examples:
        >>> searched_methods(load_results("reports/results.json").personas["power"])
        ['wanda', 'contrastive_wanda', 'contrastive_sparse', 'contrastive_sparse_code']
    """
    found = set(entry.used.mask_search or {}) | {_method(r.line) for r in entry.frontier if r.budgets}
    return [m for m in mask_methods() if m in found]


def shortfall_rows(results: RunResults) -> list[ShortfallRow]:
    """Per persona, damage budget (the run's ``damage_budgets``), searched mask method
    ([`searched_methods`][persona_interp.report.shortfall.searched_methods]) and protocol (alone, then with its
    prompt): the method's pick against the best regime that is no mask
    ([`ShortfallRow`][persona_interp.report.shortfall.ShortfallRow])."""
    rows = []
    for persona, entry in results.personas.items():
        margins = pair_margins(entry)
        controls = {c.condition: c for c in entry.controls}
        conditions = {c.pair: (c.seek_condition, c.reject_condition) for c in entry.contrasts}
        for budget in results.config.damage_budgets or sorted({w.budget for w in entry.budget_winners}):
            best = best_regime(entry, budget)
            for method in searched_methods(entry):
                for prompt in (False, True):
                    row: dict[str, Any] = {"persona": persona, "budget": budget, "method": method,
                                           "kind": mask_kind(method), "prompt": prompt}
                    if best is not None:
                        row.update(best=best.pair, best_difference=best.difference,
                                   best_difference_low=best.difference_low, best_difference_high=best.difference_high)
                    pick = best_pick(entry, budget, [method], prompt)
                    if pick is not None:
                        row.update(pair=pick.pair, kl=pick.kl, n=pick.n, difference=pick.difference,
                                   difference_low=pick.difference_low, difference_high=pick.difference_high)
                        for side, condition in zip(("seek", "reject"), conditions.get(pick.pair, ())):
                            control = controls.get(condition)
                            if control is not None:
                                row[f"{side}_beats_random"] = control.beats_control
                                if control.matched_control is not None:
                                    row[f"{side}_beats_matched"] = control.beats_matched
                    if pick is not None and best is not None:
                        paired = _paired(margins, best.pair, pick.pair, pick.n)
                        row.update(shortfall=best.difference - pick.difference, wins=pick.difference > best.difference)
                        if paired is not None:
                            row.update(shortfall=paired.value, shortfall_low=paired.low, shortfall_high=paired.high,
                                       decisive=paired.excludes_zero if paired.defined else None)
                    rows.append(ShortfallRow.model_validate(row))
    return rows


class IdeaRow(Row):
    """One of issue #35's ideas ([`IDEAS`][persona_interp.report.shortfall.IDEAS]) at one persona and budget: its best
    pick alone (``pair``; None: it has none within the budget), its ``gain`` over the best signature-only mask alone
    (``signature_best``; None: none within the budget, counted as the unchanged model's 0), paired on the test items
    where the results hold per-item margins, the ``gap`` from that mask to ``reference`` (the best regime that is
    neither a mask nor the weight edit) and ``closed`` = gain / gap, the share of the gap it closed (1: it reaches the
    reference, above 1: it passes it; None where there is no pick or no gap to close)."""

    persona: str
    budget: float
    idea: str
    pair: str | None = None
    n: int = 0
    signature_best: str | None = None
    reference: str | None = None
    gap: float | None = None
    gain: float | None = None
    gain_low: float | None = None
    gain_high: float | None = None
    closed: float | None = None


def idea_rows(results: RunResults) -> list[IdeaRow]:
    """Per persona, damage budget and idea: how much of the gap between the best signature-only mask and the best
    regime that is neither a mask nor the weight edit the idea's best pick closed
    ([`IdeaRow`][persona_interp.report.shortfall.IdeaRow]).

    Examples:
        >>> rows = idea_rows(load_results("reports/results.json"))     # a run before the three ideas: no picks
        >>> rows[0].idea, rows[0].pair, rows[0].signature_best, round(rows[0].gap, 2)
        ('retain-aware scores', None, 'wanda@kl0.02', 0.9)
    """
    signature_only = [m for m in mask_methods() if mask_kind(m) == "signature-only"]
    bridge = IDEAS["weight-edit steering"]
    rows = []
    for persona, entry in results.personas.items():
        margins = pair_margins(entry)
        for budget in results.config.damage_budgets or sorted({w.budget for w in entry.budget_winners}):
            base = best_pick(entry, budget, signature_only)
            reference = best_regime(entry, budget, exclude=bridge)
            gap = reference.difference - (base.difference if base else 0.0) if reference is not None else None
            for idea, regimes in IDEAS.items():
                pick = best_pick(entry, budget, regimes)
                row: dict[str, Any] = {"persona": persona, "budget": budget, "idea": idea, "gap": gap,
                                       "signature_best": base.pair if base else None,
                                       "reference": reference.pair if reference else None}
                if pick is not None:
                    gain = pick.difference - (base.difference if base else 0.0)
                    row.update(pair=pick.pair, n=pick.n, gain=gain)
                    paired = _paired(margins, pick.pair, base.pair if base else None, pick.n)
                    if paired is not None:
                        row.update(gain=paired.value, gain_low=paired.low, gain_high=paired.high)
                    if gap is not None and gap > 0:
                        row["closed"] = row["gain"] / gap
                rows.append(IdeaRow.model_validate(row))
    return rows


def closing_ideas(rows: Sequence[IdeaRow]) -> dict[str, int]:
    """For each idea, the number of persona × budget cells where it closed the largest share of the gap (cells where
    no idea has a share are not counted), every idea listed.

    Examples:
        >>> closing_ideas(idea_rows(load_results("reports/results.json")))      # none of the ideas in that run
        {'retain-aware scores': 0, 'learned gates': 0, 'weight-edit steering': 0}
    """
    tally = dict.fromkeys(IDEAS, 0)
    cells = dict.fromkeys((r.persona, r.budget) for r in rows)
    for persona, budget in cells:
        shares = [r for r in rows if (r.persona, r.budget) == (persona, budget) and r.closed is not None]
        if shares:
            tally[max(shares, key=lambda r: r.closed if r.closed is not None else float("-inf")).idea] += 1
    return tally


def median_closed(rows: Sequence[IdeaRow], idea: str) -> float | None:
    """The median share of the gap ``idea`` closed over the persona × budget cells where it has one (None: none).

    Examples:
        >>> median_closed([IdeaRow(persona="p", budget=0.1, idea="learned gates", closed=c) for c in (0.2, 0.5, 0.9)],
        ...               "learned gates")
        0.5
    """
    shares = [r.closed for r in rows if r.idea == idea and r.closed is not None]
    return statistics.median(shares) if shares else None


def _cell(row: ShortfallRow) -> str:
    """A shortfall as a table shows it: ``+1.23 ± 0.22`` (the half-width of its paired 95 % interval, symmetric; the
    value alone where the results hold no per-item margins), ``(wins)`` or ``(wins, decisive)`` where the mask
    separates more, ``no pick`` where the method has none within the budget."""
    if row.pair is None or row.shortfall is None:
        return "no pick"
    text = f"{row.shortfall:+.2f}"
    if row.shortfall_low is not None and row.shortfall_high is not None:
        text += f" ± {(row.shortfall_high - row.shortfall_low) / 2:.2f}"
    return text + (" (wins, decisive)" if row.wins and row.decisive else " (wins)" if row.wins else "")


def shortfall_table(rows: Sequence[ShortfallRow], budget: float) -> list[dict[str, str]]:
    """The shortfalls at ``budget`` as a table's cells: one row per mask method and protocol (alone, then with its
    prompt; its kind beside it), one column per persona, each cell the best regime that is no mask minus the
    method's pick, ± the half-width of the paired 95 % interval.

    Examples:
        >>> table = shortfall_table(shortfall_rows(load_results("reports/results.json")), 0.1)
        >>> table[2]["method"], table[2]["protocol"], table[2]["power"]
        ('contrastive_wanda', 'alone', '+2.11 ± 0.23')
    """
    chosen = [r for r in rows if r.budget == budget]
    personas = list(dict.fromkeys(r.persona for r in chosen))
    table = []
    for method in [m for m in mask_methods() if any(r.method == m for r in chosen)]:
        for prompt in (False, True):
            cells = {r.persona: _cell(r) for r in chosen if r.method == method and r.prompt == prompt}
            table.append({"method": method, "protocol": "+ prompt" if prompt else "alone", "kind": mask_kind(method),
                          **{p: cells.get(p, "not searched") for p in personas}})
    return table


def control_verdicts(rows: Sequence[ShortfallRow], matched: bool = False) -> list[bool]:
    """The verdicts of the distinct mask picks alone among ``rows`` (a pick for several budgets counts once), each
    pole's, against the random mask removing the same weights per row or (``matched``) the random mask of equal
    damage: True where the paired advantage's 95 % interval lies above 0; a pole without such a control or without
    an interval is left out.

    Examples:
        >>> rows = shortfall_rows(load_results("reports/results.json"))
        >>> verdicts = control_verdicts([r for r in rows if r.persona == "hallucination"])
        >>> sum(verdicts), len(verdicts), control_verdicts(rows, matched=True)     # that run had no matched controls
        (5, 10, [])
    """
    picks = {(r.persona, r.pair): r for r in rows if not r.prompt and r.pair is not None}
    fields = ("seek_beats_matched", "reject_beats_matched") if matched else ("seek_beats_random", "reject_beats_random")
    return [v for r in picks.values() for v in (getattr(r, f) for f in fields) if v is not None]


def _count(verdicts: Sequence[bool]) -> str:
    """``2 of 6``: the verdicts that are True; ``—`` when there is none."""
    return f"{sum(verdicts)} of {len(verdicts)}" if verdicts else "—"


def control_table(rows: Sequence[ShortfallRow]) -> list[dict[str, str]]:
    """Whether each mask method's budget picks (alone, both poles, every budget) beat their random controls: one row
    per method, one column per persona, each cell ``same sparsity k of n; equal damage k of n`` (``—``: no such
    control in the results) from [`control_verdicts`][persona_interp.report.shortfall.control_verdicts].

    Examples:
        >>> control_table(shortfall_rows(load_results("reports/results.json")))[1]["power"]
        'same sparsity 0 of 4; equal damage —'
    """
    personas = list(dict.fromkeys(r.persona for r in rows))
    table = []
    for method in [m for m in mask_methods() if any(r.method == m for r in rows)]:
        cells = {}
        for persona in personas:
            mine = [r for r in rows if r.method == method and r.persona == persona]
            cells[persona] = (f"same sparsity {_count(control_verdicts(mine))}; equal damage "
                              f"{_count(control_verdicts(mine, matched=True))}"
                              if any(r.pair is not None and not r.prompt for r in mine) else "no pick")
        table.append({"method": method, "kind": mask_kind(method), **cells})
    return table


def closest_mask(rows: Sequence[ShortfallRow], persona: str, budget: float, prompt: bool = False) -> ShortfallRow | None:
    """The mask pick at ``persona`` and ``budget`` (alone, or with its prompt) with the smallest shortfall: the mask
    that comes closest to, or passes furthest, the best regime that is no mask; None when no method has a pick.

    Examples:
        >>> closest_mask(shortfall_rows(load_results("reports/results.json")), "power", 0.1).pair
        'contrastive_wanda@kl0.1'
    """
    picked = [r for r in rows if (r.persona, r.budget, r.prompt) == (persona, budget, prompt) and r.shortfall is not None]
    return min(picked, key=lambda r: r.shortfall if r.shortfall is not None else float("inf"), default=None)


def decisive_winners(rows: Sequence[ShortfallRow], budget: float) -> list[str]:
    """The personas where a mask alone wins at ``budget`` with a decisive paired interval (issue #35's goal asks for
    at least two of the three AI personas and introversion–extraversion at KL ≤ 0.1), in the rows' order.

    Examples:
        >>> rows = shortfall_rows(load_results("reports/results.json"))
        >>> decisive_winners(rows, 0.1), decisive_winners(rows, 0.02)   # hallucination's mask alone wins at 0.02, not decisively
        ([], [])
    """
    return list(dict.fromkeys(r.persona for r in rows if r.budget == budget and not r.prompt and r.wins and r.decisive))


def idea_table(rows: Sequence[IdeaRow]) -> list[dict[str, str]]:
    """The ideas' shares of the gap as a table's cells: one row per persona and budget (the gap and its ends), one
    column per idea, each cell its best pick and the share closed (``no pick`` where it has none within the budget).

    Examples:
        >>> idea_table(idea_rows(load_results("reports/results.json")))[0]["gap"]
        '+0.90: wanda@kl0.02 → pca@kl0.02'
    """
    table = []
    for persona, budget in dict.fromkeys((r.persona, r.budget) for r in rows):
        mine = [r for r in rows if (r.persona, r.budget) == (persona, budget)]
        first = mine[0]
        gap = (f"{first.gap:+.2f}: {first.signature_best or 'no mask'} → {first.reference}"
               if first.gap is not None else "no reference")
        cells = {r.idea: "no pick" if r.pair is None else f"{r.pair}: " + (
            f"{100 * r.closed:.0f} %" if r.closed is not None else f"gain {r.gain:+.2f}" if r.gain is not None else "")
            for r in mine}
        table.append({"persona": persona, "budget": f"KL ≤ {budget:g}", "gap": gap, **cells})
    return table
