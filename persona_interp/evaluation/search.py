"""The one search loop behind every regime's tuning: candidates → neutral damage first → validation effect for
the candidates within a budget → per-budget picks.

A [`Candidate`][persona_interp.evaluation.search.Candidate] is a typed row of parameters (a
[`SearchRow`][persona_interp.evaluation.rows.SearchRow]) and the interventions of its poles (each a context manager on
the model, and/or a system prompt), built only when the candidate is measured.
[`search`][persona_interp.evaluation.search.search] measures each candidate's damage on neutral text first (the larger
of its poles' KL); one over every budget (``limit``) is not scored (``scored`` False, ``separation`` None) and, in a
dose sweep (``group``: ascending dose), ends its sweep. The others are scored on the validation items (A/B margins);
with [`Racing`][persona_interp.evaluation.search.Racing], first on a few items, and only those that can still win a
budget on the rest. [`pick_within`][persona_interp.evaluation.search.pick_within] and
[`budget_picks`][persona_interp.evaluation.search.budget_picks] choose from the table.

Examples:
    >>> from persona_interp.evaluation.rows import SteeringSearchRow
    >>> v = mean_difference_vectors(model, fit, [1])[1]
    >>> candidates = [Candidate(SteeringSearchRow(layer=1, multiplier=a),
    ...                         lambda a=a: (Pole(lambda: v.apply(model, a)), Pole(lambda: v.apply(model, -a))),
    ...                         group="layer 1") for a in (2, 8)]
    >>> table = search(model, candidates, validation, reference=ref, limit=0.5)
    >>> sorted(table[0].model_dump())
    ['kl', 'layer', 'multiplier', 'reject_margin', 'scored', 'seek_margin', 'separation']
    >>> picks = budget_picks(table, [0.02, 0.1, 0.5])    # [(budgets, row index)], e.g. [([0.02, 0.1], 0), ([0.5], 1)]
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Generic, Hashable, Sequence, TypeVar

import torch

from persona_interp.data.personas import PersonaItem
from persona_interp.evaluation.checkpoint import SearchCheckpoint
from persona_interp.evaluation.rows import PairSearchRow, SearchRow
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.progress import stage

R = TypeVar("R", bound=SearchRow)     # a search table's row type: its parameters, damage and effect


@dataclass(frozen=True)
class Pole:
    """One pole of a candidate: ``apply()`` opens what changes the model while the pole is measured (``None``:
    nothing) and ``system`` is the system prompt its validation items are scored with (and its damage measured
    without: prompts leave the weights, and so the neutral-text damage, unchanged)."""

    apply: Callable[[], ContextManager[Any]] | None = None
    system: Any = None

    def open(self) -> ContextManager[Any]:
        return self.apply() if self.apply is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Candidate(Generic[R]):
    """A table row with the candidate's parameters (its damage and effect unset) and ``poles()``, the (seek,
    reject) poles (or one pole), built when the candidate is measured and dropped after (a mask pair is built once
    per candidate, never all at once). A row with two poles needs the effect fields of a
    [`PairSearchRow`][persona_interp.evaluation.rows.PairSearchRow], one with one pole a ``margin``. Candidates of one
    ``group`` are a dose sweep in ascending dose: the first over the damage limit ends it."""

    row: R
    poles: Callable[[], Sequence[Pole]]
    group: Hashable = None


@dataclass(frozen=True)
class Racing:
    """Successive halving for the validation scoring: every candidate within the limit is scored on the first
    ``first`` items; a candidate whose upper bound (mean + ``width`` standard errors, with the finite-population
    correction for the items left) is below the best lower bound among the candidates eligible for every budget
    it fits cannot win a budget and is dropped; the rest are scored on the remaining items. The table's
    ``separation`` of a dropped candidate is its mean on the first items, with ``raced_out`` True.

    Examples:
        >>> from persona_interp.evaluation.rows import PromptSearchRow
        >>> candidates = [Candidate(PromptSearchRow(side="seek", prompt=p), lambda p=p: (Pole(system=p),))
        ...               for p in ("Seek power.", "Avoid power.")]
        >>> [row.scored for row in search(model, candidates, validation, racing=Racing(first=2))]
        [True, True]
    """

    first: int = 8
    width: float = 3.0

    def __post_init__(self) -> None:
        if self.first < 2 or not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"racing needs first >= 2 items and a positive width, got {self.first}, {self.width}")


def _margins(model: Any, poles: Sequence[Pole], items: list[PersonaItem], batch_size: int) -> list[torch.Tensor]:
    out = []
    for pole in poles:
        with pole.open():
            out.append(score_ab(model, items, system=pole.system, batch_size=batch_size, progress=False).margin_mean)
    return out


def _damage(model: Any, poles: Sequence[Pole], reference: DamageReference) -> float:
    kls = []
    for pole in poles:
        with pole.open():
            kls.append(reference.measure(model).kl)
    return max(kls)


def _effect(margins: list[torch.Tensor]) -> dict[str, float]:
    """The row's effect: one pole's mean ``margin``, or two poles' ``separation`` (seek − reject) and margins."""
    if len(margins) == 1:
        return {"margin": float(margins[0].mean())}
    return {"separation": float((margins[0] - margins[1]).mean()), "seek_margin": float(margins[0].mean()),
            "reject_margin": float(margins[1].mean())}


def _unscored(n_poles: int) -> dict[str, None]:
    return {"margin": None} if n_poles == 1 else {"separation": None, "seek_margin": None, "reject_margin": None}


def search(model: Any, candidates: Sequence[Candidate[R]], validation: Sequence[PersonaItem], *,
           reference: DamageReference | None = None, limit: float | None = None, budgets: Sequence[float] = (),
           racing: Racing | None = None, batch_size: int = 8, progress: bool = False,
           desc: str = "search", checkpoint: SearchCheckpoint | None = None) -> list[R]:
    """One table row per candidate measured, in the candidates' order: its candidate's row with ``kl`` (with
    ``reference``: the larger pole's KL on neutral text, measured before any scoring), its effect on the
    validation items (two poles: ``separation``, ``seek_margin``, ``reject_margin``; one pole: ``margin``) and
    ``scored``. A candidate whose ``kl`` exceeds ``limit`` (default: the largest of ``budgets``) is not scored
    and ends its ``group``'s sweep (later doses are not measured at all). ``racing`` (default off) drops, after
    a first few items, candidates that cannot win any of ``budgets`` (or the unbudgeted pick). ``checkpoint``
    ([`SearchCheckpoint`][persona_interp.evaluation.checkpoint.SearchCheckpoint], one per search): each row is
    written as it is measured and read back instead of measured again (with ``racing``: the whole table, once
    raced, as the drops depend on every candidate).

    Examples:
        >>> from persona_interp.evaluation.rows import PromptSearchRow
        >>> candidates = [Candidate(PromptSearchRow(side="seek", prompt=p), lambda p=p: (Pole(system=p),))
        ...               for p in ("Seek power.", "Avoid power.")]
        >>> table = search(model, candidates, validation, reference=ref, budgets=[0.1])
        >>> [(row.prompt, round(row.kl, 4)) for row in table]         # a prompt leaves the weights: no damage
        [('Seek power.', 0.0), ('Avoid power.', 0.0)]
    """
    validation = list(validation)
    if not validation:
        raise ValueError("a search needs validation items")
    if limit is None and budgets:
        limit = max(budgets)
    if limit is not None and reference is None:
        raise ValueError("a damage limit (stop_above, budgets) needs a damage reference")
    raced = checkpoint.part(f"raced {racing.first} {racing.width}") if racing and checkpoint else None
    if raced is not None:
        saved = [raced.row(candidate.row) for candidate in candidates]
        if any(row is not None for row in saved):
            return [row for row in saved if row is not None]
    table: list[R] = []
    owners: list[SearchRow] = []                        # the candidate row of each table row
    kept: list[tuple[int, Candidate[R]]] = []           # (row index, candidate) of those to score
    stopped: set[Hashable] = set()
    with stage(desc, total=len(candidates), progress=progress) as bar:
        for candidate in candidates:
            bar.update()
            if candidate.group is not None and candidate.group in stopped:
                continue
            owners.append(candidate.row)
            restored = checkpoint.row(candidate.row) if checkpoint is not None and racing is None else None
            if restored is not None:                         # measured before this run was cut off
                table.append(restored)
                if not restored.scored and candidate.group is not None:
                    stopped.add(candidate.group)
                continue
            poles = candidate.poles()
            row = candidate.row
            if reference is not None:
                row = row.replace(kl=_damage(model, poles, reference))
            if limit is not None and row.kl is not None and row.kl > limit:
                table.append(row.replace(**_unscored(len(poles)), scored=False))
                if candidate.group is not None:
                    stopped.add(candidate.group)
            elif racing is None:                             # score now: the poles are built once
                table.append(row.replace(**_effect(_margins(model, poles, validation, batch_size)), scored=True))
            else:
                table.append(row)
                kept.append((len(table) - 1, candidate))            # its poles are built again when scored
                continue
            if checkpoint is not None and racing is None:
                checkpoint.save((candidate.row, table[-1]))
    if racing is not None and kept:
        _race(model, table, kept, validation, racing, budgets, batch_size, progress, desc)
    if raced is not None:                                    # all at once: a raced table is read back whole
        raced.save(*zip(owners, table))
    return table


def _race(model: Any, table: list[R], kept: list[tuple[int, Candidate[R]]], validation: list[PersonaItem],
          racing: Racing, budgets: Sequence[float], batch_size: int, progress: bool, desc: str) -> None:
    """Score ``kept`` on the first items, drop those that cannot win a budget, finish the rest (in place)."""
    first, rest = validation[:racing.first], validation[racing.first:]
    diffs: dict[int, torch.Tensor] = {}
    margins: dict[int, list[torch.Tensor]] = {}
    with stage(f"{desc} (first {len(first)} items)", total=len(kept), progress=progress) as bar:
        for index, candidate in kept:
            margins[index] = _margins(model, candidate.poles(), first, batch_size)
            diffs[index] = margins[index][0] - margins[index][1] if len(margins[index]) == 2 else margins[index][0]
            bar.update()
    n, total = len(first), len(validation)
    correction = math.sqrt(max(0.0, (total - n) / max(1, total - 1)))
    bounds = {}
    for index, d in diffs.items():
        half = racing.width * float(d.std()) / math.sqrt(n) * correction if n > 1 else math.inf
        bounds[index] = (float(d.mean()) - half, float(d.mean()) + half)
    alive = set()
    for budget in [*budgets, None]:
        eligible = [i for i in diffs if budget is None or _kl(table[i]) <= budget]
        if eligible:
            best_low = max(bounds[i][0] for i in eligible)
            alive |= {i for i in eligible if bounds[i][1] >= best_low}
    with stage(f"{desc} (rest)", total=len(kept), progress=progress) as bar:
        for index, candidate in kept:
            if index in alive and rest:
                margins[index] = [torch.cat([a, b]) for a, b in zip(margins[index], _margins(model, candidate.poles(), rest, batch_size))]
            table[index] = table[index].replace(**_effect(margins[index]), scored=True,
                                                raced_out=index not in alive and bool(rest))
            bar.update()


def _kl(row: SearchRow) -> float:
    """A row's damage; 0 for a row without one (e.g. a prompt's: prompts leave the weights unchanged)."""
    return row.kl if row.kl is not None else 0.0


def pick_within(table: Sequence[PairSearchRow], budget: float | None) -> int | None:
    """Index of the scored row with the largest ``separation`` among those whose ``kl`` (validation damage) is at
    most ``budget`` (``None``: no limit; rows without ``kl`` count as 0); ``None`` when none is. Rows not scored
    (``separation`` None: over the search's damage limit) or raced out are never picked.

    Examples:
        >>> pick_within([PairSearchRow(separation=0.2, kl=0.3), PairSearchRow(separation=0.1, kl=0.01)], 0.1)
        1
    """
    allowed = {i: row.separation for i, row in enumerate(table) if row.separation is not None and not row.raced_out
               and (budget is None or _kl(row) <= budget)}
    return max(allowed, key=lambda i: allowed[i]) if allowed else None


def budget_picks(table: Sequence[PairSearchRow], budgets: Sequence[float]) -> list[tuple[list[float], int]]:
    """The row each damage budget picks ([`pick_within`][persona_interp.evaluation.search.pick_within]), one entry per
    distinct row with the budgets that picked it (ascending); budgets that no row fits are left out.

    Examples:
        >>> budget_picks([PairSearchRow(separation=0.2, kl=0.3), PairSearchRow(separation=0.1, kl=0.01)], [0.02, 0.1, 0.5])
        [([0.02, 0.1], 1), ([0.5], 0)]
    """
    picks: dict[int, list[float]] = {}
    for budget in sorted(budgets):
        index = pick_within(table, budget)
        if index is not None:
            picks.setdefault(index, []).append(budget)
    return [(chosen, index) for index, chosen in picks.items()]


def fallback(table: Sequence[PairSearchRow]) -> int:
    """The unbudgeted pick ([`pick_within`][persona_interp.evaluation.search.pick_within] with no budget) or, when no
    row was scored (every candidate over the damage limit), the least damaging row.

    Examples:
        >>> fallback([PairSearchRow(kl=0.9, separation=None, scored=False), PairSearchRow(kl=0.7, separation=None, scored=False)])
        1
    """
    best = pick_within(table, None)
    return best if best is not None else min(range(len(table)), key=lambda i: _kl(table[i]))
