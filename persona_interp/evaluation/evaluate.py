"""Evaluate conditions side by side on the same A/B items, with paired statistics.

Every condition scores the same items; per-item margins are kept. The table reports, per
condition and side, the paper's accuracy (Wilson 95 % interval), the mean per-token margin
(seek − reject, t interval), its paired shift against the base model, the items that flipped,
and the damage on neutral text (perplexity change, KL from the base model).
[`Evaluation.contrasts`][persona_interp.evaluation.evaluate.Evaluation.contrasts] gives the paired seek-minus-reject
difference between the two poles of one regime, which cancels damage both poles share.

Which conditions are paired, controlled, or share damage is read from each condition's typed relations
(``pair``, ``control``, ``prompt_of``, ``damage_of``, ``budgets``: see
[`conditions`][persona_interp.interventions.conditions]); [`evaluate`][persona_interp.evaluation.evaluate.evaluate]
checks them first. The base model is added when no condition is it; a condition without relations is reported alone
(its table rows).

Examples:
    >>> seek, reject = paired("prompt", Prompt("prompt-seek", system="You seek power."), Prompt("prompt-reject", system="You avoid power."))
    >>> ev = evaluate(model, test, [seek, reject], persona="power", progress=False)
    >>> print(markdown_table(ev.contrasts()))
    | persona | pair | regime | seek_condition | reject_condition | n | difference | ...
    |---|---|...
    | power | prompt | prompt | prompt-seek | prompt-reject | 4 | ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Literal, Sequence

from torch import Tensor

from persona_interp.data.personas import SIDES, PersonaItem
from persona_interp.evaluation.checkpoint import EvaluationCheckpoint
from persona_interp.evaluation.rows import (
    BudgetWinner,
    BudgetWinnerRow,
    ConditionRow,
    ContrastRow,
    ControlRow,
    Damage,
    EqualDamage,
    EqualDamageRow,
    FrontierRow,
    NoPick,
    PerItem,
    PromptAdditionRow,
)
from persona_interp.evaluation.scoring import ABScores, DamageReference, score_ab
from persona_interp.evaluation.stats import flips, mean_ci, paired_difference, proportion_ci
from persona_interp.interventions.conditions import Condition
from persona_interp.progress import stage


@dataclass
class Evaluation:
    """Scores of every condition on one persona's test items, and each condition's damage on neutral text
    ([`Damage`][persona_interp.evaluation.rows.Damage]) where it was measured. The tables are typed rows
    ([`rows`][persona_interp.evaluation.rows])."""

    persona: str
    conditions: dict[str, Condition]
    scores: dict[str, ABScores]
    damage: dict[str, Damage] = field(default_factory=dict)
    base: str = "base"
    copied: dict[str, str] = field(default_factory=dict)   # a condition -> the one it scores exactly as (not scored again)

    def table(self) -> list[ConditionRow]:
        """One row per (condition, side); a condition without a side appears for both sides."""
        base = self.scores[self.base]
        rows = []
        for name, cond in self.conditions.items():
            s = self.scores[name]
            for side in ([cond.side] if cond.side else list(SIDES)):
                wins = s.seek_wins if side == "seek" else ~s.seek_wins
                base_wins = base.seek_wins if side == "seek" else ~base.seek_wins
                sign = 1.0 if side == "seek" else -1.0          # margins point toward the row's side
                acc, margin = proportion_ci(wins), mean_ci(sign * s.margin_mean)
                shift = paired_difference(sign * s.margin_mean, sign * base.margin_mean)
                gained, lost = flips(wins, base_wins)
                damage: dict[str, Any] = {}
                if name in self.damage:
                    measured = self.damage[name]
                    damage = {"perplexity": measured.perplexity,
                              "perplexity_change": measured.perplexity / self.damage[self.base].perplexity - 1.0,
                              "kl": measured.kl}
                    if measured.kl_other is not None:
                        damage["kl_other"] = measured.kl_other
                rows.append(ConditionRow(
                    persona=self.persona, condition=name, regime=cond.regime, side=side, n=acc.n, accuracy=acc.value,
                    accuracy_low=acc.low, accuracy_high=acc.high, margin=margin.value, margin_low=margin.low,
                    margin_high=margin.high, shift=shift.value, shift_low=shift.low, shift_high=shift.high,
                    flips_gained=gained, flips_lost=lost, **damage))
        return rows

    def contrasts(self) -> list[ContrastRow]:
        """Paired seek-minus-reject margin difference for each ``pair`` of conditions."""
        rows = []
        for pair, sides in pairs_of(self.conditions.values()).items():
            seek, reject = self.scores[sides["seek"]], self.scores[sides["reject"]]
            diff = paired_difference(seek.margin_mean, reject.margin_mean)
            to_seek, to_reject = flips(seek.seek_wins, reject.seek_wins)
            rows.append(ContrastRow(persona=self.persona, pair=pair, regime=self.conditions[sides["seek"]].regime,
                                    seek_condition=sides["seek"], reject_condition=sides["reject"], n=diff.n,
                                    difference=diff.value, difference_low=diff.low, difference_high=diff.high,
                                    items_seek_only=to_seek, items_reject_only=to_reject))
        return rows

    def prompt_additions(self) -> list[PromptAdditionRow]:
        """What a mask adds to its pole's prompt (the paper's protocol keeps the prompt on under the mask): per
        pole the paired shift of (mask + prompt) over the prompt alone, toward that pole; per pair the
        seek-minus-reject difference of those additions. From conditions with ``prompt_of``."""
        rows: list[PromptAdditionRow] = []
        by_pair: dict[str, dict[str, Tensor]] = {}
        for name, cond in self.conditions.items():
            prompt = cond.prompt_of
            if prompt is None or cond.side is None:
                continue
            sign = 1.0 if cond.side == "seek" else -1.0
            added = self.scores[name].margin_mean - self.scores[prompt].margin_mean
            diff = mean_ci(sign * added)
            rows.append(PromptAdditionRow(persona=self.persona, condition=name, prompt=prompt, side=cond.side, n=diff.n,
                                          added=diff.value, added_low=diff.low, added_high=diff.high))
            if cond.pair is not None:
                by_pair.setdefault(cond.pair, {})[cond.side] = added
        for pair, sides in by_pair.items():
            if set(sides) == set(SIDES):
                diff = paired_difference(sides["seek"], sides["reject"])
                rows.append(PromptAdditionRow(persona=self.persona, condition=pair, prompt="prompt pair",
                                              side="seek − reject", n=diff.n, added=diff.value, added_low=diff.low,
                                              added_high=diff.high))
        return rows

    def per_item(self) -> dict[str, PerItem]:
        """Per-item summed and per-token margins of every condition (for saving)."""
        return {name: PerItem(margin_sum=s.margin_sum.tolist(), margin_mean=s.margin_mean.tolist())
                for name, s in self.scores.items()}


def is_base(cond: Condition) -> bool:
    """Whether ``cond`` is the base model: a plain [`Condition`][persona_interp.interventions.conditions.Condition]
    with no prompt."""
    return type(cond) is Condition and cond.system is None


def pairs_of(conditions: Iterable[Condition]) -> dict[str, dict[str, str]]:
    """``{pair: {"seek": name, "reject": name}}`` of the conditions' ``pair`` fields, in order of first
    appearance; a pair with one pole only, or two conditions on one pole, is a ValueError naming them (a
    half pair is most often a misspelt pair name, whose contrast would otherwise be dropped unseen)."""
    pairs: dict[str, dict[str, str]] = {}
    for cond in conditions:
        if cond.pair is None:
            continue
        sides = pairs.setdefault(cond.pair, {})
        if cond.side in sides:
            raise ValueError(f"pair {cond.pair!r} has two {cond.side} conditions: {sides[cond.side]!r} and {cond.name!r}")
        sides[str(cond.side)] = cond.name
    for name, sides in pairs.items():
        if set(sides) != set(SIDES):
            (side, member), = sides.items()
            missing = next(s for s in SIDES if s != side)
            raise ValueError(f"pair {name!r} has only a {side} condition ({member!r}): add its {missing} condition "
                             f"with pair={name!r}, or leave pair unset to report {member!r} alone")
    return pairs


def check_conditions(conditions: Sequence[Condition]) -> tuple[list[Condition], str]:
    """The conditions [`evaluate`][persona_interp.evaluation.evaluate.evaluate] scores, checked, and the name of the
    base model among them (a plain [`Condition`][persona_interp.interventions.conditions.Condition] named ``"base"``
    put first when none is the base model). Errors name the condition: duplicate names, a relation (``control``,
    ``prompt_of``, ``damage_of``) naming no condition of the list, ``damage_of`` going round in a circle, half pairs
    ([`pairs_of`][persona_interp.evaluation.evaluate.pairs_of])."""
    conditions = list(conditions)
    for cond in conditions:
        if not isinstance(cond, Condition):
            raise TypeError(f"evaluate takes Condition objects, got {type(cond).__name__} {cond!r}")
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"condition names must be unique; repeated: {duplicates}")
    base = next((c.name for c in conditions if is_base(c)), None)
    if base is None:
        if "base" in names:
            raise ValueError("the condition named 'base' is not the base model (it has a prompt or an intervention) "
                             "and evaluate adds the base model under that name: rename it")
        conditions.insert(0, Condition())
        base = "base"
    by_name = {c.name: c for c in conditions}
    for cond in conditions:
        for relation, target in cond.relations().items():
            if target not in by_name:
                raise ValueError(f"condition {cond.name!r} names {relation}={target!r}, which is not among the "
                                 f"conditions evaluated: {list(by_name)}")
        seen, current = [cond.name], cond
        while current.damage_of is not None:
            if current.damage_of in seen:
                raise ValueError(f"damage_of goes round in a circle: {' -> '.join([*seen, current.damage_of])}")
            seen.append(current.damage_of)
            current = by_name[current.damage_of]
    pairs_of(conditions)
    return conditions, base


def _measured_damage(model: Any, reference: DamageReference, other: DamageReference | None) -> Damage:
    """The damage of the model as it is now: perplexity and KL on ``reference``'s texts, and KL on ``other``'s."""
    measured = reference.measure(model)
    kl_other = other.measure(model).kl if other is not None else None
    return Damage(perplexity=measured.perplexity, kl=measured.kl, kl_other=kl_other)


def evaluate(model: Any, items: Sequence[PersonaItem], conditions: Sequence[Condition], *, persona: str,
             neutral_texts: Sequence[str] | None = None, other_texts: Sequence[str] | None = None,
             batch_size: int = 8, progress: bool = True, checkpoint: EvaluationCheckpoint | None = None) -> Evaluation:
    """Score every condition on the same items (and perplexity on ``neutral_texts`` if given), after
    [`check_conditions`][persona_interp.evaluation.evaluate.check_conditions] (the base model is added when absent). A
    condition whose ``damage_of`` names another (a mask plus a prompt: the neutral text carries no prompt) takes that
    condition's damage instead of measuring the same weights again. ``other_texts`` (with ``neutral_texts``): a second
    damage measure that no search sees, e.g. other personas' questions and answers, its KL recorded as ``kl_other``.
    ``checkpoint`` ([`EvaluationCheckpoint`][persona_interp.evaluation.checkpoint.EvaluationCheckpoint]): each
    condition's scores and damage are saved to it as they are measured, and a condition it already holds is read back
    instead of scored again. Nothing is forwarded twice: a condition that changes the model as an earlier one does
    (equal [`forward_key`][persona_interp.interventions.conditions.Condition.forward_key], e.g. the same random mask
    under two names) takes its damage, and with the same prompt its scores, exactly (``Evaluation.copied`` names them).

    Examples:
        >>> ev = evaluate(model, test, [*paired("prompt", Prompt("p+", system="Seek power."), Prompt("p-", system="Avoid power."))],
        ...               persona="power", neutral_texts=texts, progress=False)
        >>> ev.base, [c.pair for c in ev.contrasts()]
        ('base', ['prompt'])
    """
    conditions, base = check_conditions(conditions)
    by_name = {c.name: c for c in conditions}
    if other_texts and not neutral_texts:
        raise ValueError("other_texts is a second damage measure beside neutral_texts: pass both")
    scores: dict[str, ABScores] = {}
    damage: dict[str, Damage] = {}
    copied: dict[str, str] = {}
    scored_by: dict[Hashable, str] = {}              # a forward key and prompt -> the condition scored under them
    measured_by: dict[Hashable, str] = {}            # a forward key -> the condition whose damage was measured
    with stage("evaluation", total=len(conditions), progress=progress) as bar:
        reference = DamageReference.build(model, neutral_texts, batch_size) if neutral_texts else None
        other = DamageReference.build(model, other_texts, batch_size) if other_texts else None
        done = checkpoint.load() if checkpoint is not None else {}
        for cond in conditions:
            key = cond.forward_key()
            scored_key = None if key is None else (key, cond.system if cond.system is None or isinstance(cond.system, str)
                                                   else id(cond.system))
            wants_damage = reference is not None and cond.damage_of is None
            if cond.name in done:                    # scored before the evaluation was cut off
                scores[cond.name], saved = done[cond.name].scores(), done[cond.name].damage
                if saved is not None:
                    damage[cond.name] = saved
            else:
                twin = scored_by.get(scored_key)
                damage_twin = measured_by.get(key) if wants_damage else None
                if twin is not None:
                    scores[cond.name], copied[cond.name] = scores[twin], twin
                if damage_twin is not None:
                    damage[cond.name] = damage[damage_twin]
                needs_scores, needs_damage = twin is None, wants_damage and damage_twin is None
                if needs_scores or needs_damage:       # what no earlier condition measured: one application of it
                    with cond.applied(model):
                        if needs_scores:
                            scores[cond.name] = score_ab(model, items, system=cond.system, batch_size=batch_size,
                                                         progress=progress)
                        if needs_damage and reference is not None:
                            damage[cond.name] = _measured_damage(model, reference, other)
                if checkpoint is not None:
                    checkpoint.save(cond.name, scores[cond.name], damage.get(cond.name))
            if scored_key is not None:
                scored_by.setdefault(scored_key, cond.name)
                if cond.name in damage:
                    measured_by.setdefault(key, cond.name)
            bar.update()
    if reference is not None:
        for cond in conditions:                      # same weights, prompt-free text: the damage of the root
            root = cond
            while root.damage_of is not None:
                root = by_name[root.damage_of]
            damage[cond.name] = damage[root.name]
    return Evaluation(persona, by_name, scores, damage, base=base, copied=copied)


def control_comparison(ev: Evaluation) -> list[ControlRow]:
    """Each condition with a ``control`` against it: paired difference of the margin toward the condition's
    side. ``beats_control`` is true only when the 95 % interval is above 0, ``None`` when the interval is
    undefined (fewer than [`MIN_N`][persona_interp.evaluation.stats.MIN_N] items). A condition with a
    ``matched_control`` (the random mask of equal damage,
    [`damage_matched_random`][persona_interp.evaluation.controls.damage_matched_random]) also gets
    ``matched_advantage`` and ``beats_matched`` against it, in the same row."""
    rows = []
    for name, cond in ev.conditions.items():
        control = cond.control
        if control is None or cond.side is None:
            continue
        sign = 1.0 if cond.side == "seek" else -1.0
        diff = paired_difference(sign * ev.scores[name].margin_mean, sign * ev.scores[control].margin_mean)
        matched: dict[str, Any] = {}
        if cond.matched_control is not None:
            m = paired_difference(sign * ev.scores[name].margin_mean, sign * ev.scores[cond.matched_control].margin_mean)
            matched = dict(matched_control=cond.matched_control, matched_advantage=m.value, matched_advantage_low=m.low,
                           matched_advantage_high=m.high, beats_matched=m.above_zero())
        rows.append(ControlRow(persona=ev.persona, condition=name, control=control, n=diff.n, advantage=diff.value,
                               advantage_low=diff.low, advantage_high=diff.high, beats_control=diff.above_zero(),
                               **matched))
    return rows


def _pair_kl(kl: dict[str, float], contrast: ContrastRow) -> float:
    """A pair's damage: the larger of its poles' (0 where not measured)."""
    return max(kl.get(contrast.seek_condition, 0.0), kl.get(contrast.reject_condition, 0.0))


def equal_damage_summary(table: list[ConditionRow], contrasts: list[ContrastRow],
                         budgets: list[float]) -> list[EqualDamage]:
    """For each damage budget (KL from the base model on neutral text, nats/token), the regime pair
    whose seek-minus-reject difference is largest among the pairs whose more damaging pole stays
    within the budget ([`NoPick`][persona_interp.evaluation.rows.NoPick] where none does). Prompt and RAG pairs
    have damage 0 by construction (the neutral text carries no prompt), so they are always eligible.

    Examples:
        >>> ev = evaluate(model, test, [*paired("cw", MaskCondition("cw-seek", mask=seek_mask), MaskCondition("cw-reject", mask=reject_mask)),
        ...                             *paired("prompt", Prompt("p+", system="Seek power."), Prompt("p-", system="Avoid power."))],
        ...               persona="power", neutral_texts=texts, progress=False)
        >>> [(row.pair, row.n_eligible) for row in equal_damage_summary(ev.table(), ev.contrasts(), [0.001, 100.0])][0]
        ('prompt', 1)
    """
    kl = pair_damage(table)
    rows: list[EqualDamage] = []
    for budget in budgets:
        eligible = [c for c in contrasts if _pair_kl(kl, c) <= budget]
        if not eligible:
            rows.append(NoPick(budget=budget, pair=None))
            continue
        best = max(eligible, key=lambda c: c.difference)
        rows.append(EqualDamageRow(budget=budget, pair=best.pair, regime=best.regime, n=best.n, difference=best.difference,
                                   difference_low=best.difference_low, difference_high=best.difference_high,
                                   n_eligible=len(eligible), damage=_pair_kl(kl, best)))
    return rows


def pair_damage(table: list[ConditionRow], key: Literal["kl", "kl_other"] = "kl") -> dict[str, float]:
    """Per condition, its damage ``key`` (``kl``; ``kl_other``: the second measure), 0 where not measured."""
    kl: dict[str, float] = {}
    for row in table:
        value = row.kl if key == "kl" else row.kl_other
        kl[row.condition] = max(kl.get(row.condition, 0.0), max(value or 0.0, 0.0))
    return kl


def frontier_rows(ev: Evaluation, contrasts: list[ContrastRow]) -> list[FrontierRow]:
    """The points of the effect–damage frontier: every per-budget pick (``budgets``), every paper
    row and the prompt and RAG pairs, with its test seek − reject difference and its damage on the report's
    neutral texts (the larger pole's KL). ``line`` is the regime, ``+prompt`` for the paper's protocol."""
    kl = pair_damage(ev.table())
    rows = []
    for c in contrasts:
        cond = ev.conditions[c.seek_condition]
        if cond.regime == "random":
            continue
        line = cond.regime + ("+prompt" if cond.protocol == "mask+prompt" else "")
        rows.append(FrontierRow(line=line, pair=c.pair, budgets=cond.budgets, kl=_pair_kl(kl, c), n=c.n,
                                difference=c.difference, difference_low=c.difference_low,
                                difference_high=c.difference_high))
    return rows


def budget_winners(ev: Evaluation, contrasts: list[ContrastRow], budgets: list[float]) -> list[BudgetWinner]:
    """Per damage budget, the regime whose pick for that budget (chosen on the validation split) has the largest
    test seek − reject difference, among the picks for the budget and the prompt and RAG pairs (damage 0 by
    construction); masks count alone and with their prompt. ``lead`` is the paired difference to the runner-up
    (``decisive`` when its 95 % interval is above 0, ``None`` when it is undefined); ``test_kl`` the winner's damage on
    the report's texts, ``other_kl`` on the second measure's (where measured).

    Examples:
        >>> ev = evaluate(model, test, [*paired("cw", MaskCondition("cw-seek", mask=seek_mask), MaskCondition("cw-reject", mask=reject_mask),
        ...                                     budgets=[0.1]),
        ...                             *paired("prompt", Prompt("p+", system="Seek power."), Prompt("p-", system="Avoid power."))],
        ...               persona="power", neutral_texts=texts, progress=False)
        >>> [(row.pair, row.n_eligible) for row in budget_winners(ev, ev.contrasts(), [0.02, 0.1])][0]   # the mask is a pick for 0.1 only
        ('prompt', 1)
    """
    kl, other = pair_damage(ev.table()), pair_damage(ev.table(), "kl_other")
    per_item = {c.pair: ev.scores[c.seek_condition].margin_mean - ev.scores[c.reject_condition].margin_mean
                for c in contrasts}
    rows: list[BudgetWinner] = []
    for budget in budgets:
        eligible = [c for c in contrasts if ev.conditions[c.seek_condition].regime in ("prompt", "rag")
                    or budget in (ev.conditions[c.seek_condition].budgets or [])]
        if not eligible:
            rows.append(NoPick(budget=budget, pair=None))
            continue
        ranked = sorted(eligible, key=lambda c: c.difference, reverse=True)
        best = ranked[0]
        extra: dict[str, Any] = {"other_kl": _pair_kl(other, best)} if other else {}
        if len(ranked) > 1:
            lead = paired_difference(per_item[best.pair], per_item[ranked[1].pair])
            extra.update(runner_up=ranked[1].pair, lead=lead.value, lead_low=lead.low, lead_high=lead.high,
                         decisive=lead.above_zero())
        rows.append(BudgetWinnerRow(budget=budget, pair=best.pair, regime=best.regime, n=best.n,
                                    difference=best.difference, difference_low=best.difference_low,
                                    difference_high=best.difference_high, n_eligible=len(eligible),
                                    test_kl=_pair_kl(kl, best), **extra))
    return rows
