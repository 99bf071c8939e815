"""Evaluate conditions side by side on the same A/B items, with paired statistics.

Every condition scores the same items; per-item margins are kept. The table reports, per
condition and side, the paper's accuracy (Wilson 95 % interval), the mean per-token margin
(seek − reject, t interval), its paired shift against the base model, the items that flipped,
and the damage on neutral text (perplexity change, KL from the base model). :meth:`Evaluation.contrasts` gives the paired
seek-minus-reject difference between the two poles of one regime, which cancels damage both
poles share.

Example:
    >>> ev = evaluate(model, test, [Condition(), Prompt("prompt-seek", side="seek", system="...")], persona="power")
    >>> print(markdown_table(ev.table()))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .conditions import Condition
from .data import PersonaItem
from .scoring import ABScores, DamageReference, score_ab
from .stats import flips, mean_ci, paired_difference, proportion_ci


@dataclass
class Evaluation:
    """Scores of every condition on one persona's test items."""

    persona: str
    conditions: dict[str, Condition]
    scores: dict[str, ABScores]
    damage: dict[str, dict[str, float]] = field(default_factory=dict)
    base: str = "base"

    def table(self) -> list[dict[str, Any]]:
        """One row per (condition, side); a condition without a side appears for both sides."""
        base = self.scores[self.base]
        rows = []
        for name, cond in self.conditions.items():
            s = self.scores[name]
            for side in ([cond.side] if cond.side else ["seek", "reject"]):
                wins = s.seek_wins if side == "seek" else ~s.seek_wins
                base_wins = base.seek_wins if side == "seek" else ~base.seek_wins
                sign = 1.0 if side == "seek" else -1.0          # margins point toward the row's side
                acc, margin = proportion_ci(wins), mean_ci(sign * s.margin_mean)
                shift = paired_difference(sign * s.margin_mean, sign * base.margin_mean)
                gained, lost = flips(wins, base_wins)
                row = {"persona": self.persona, "condition": name, "regime": cond.regime, "side": side, "n": acc.n,
                       "accuracy": acc.value, "accuracy_low": acc.low, "accuracy_high": acc.high,
                       "margin": margin.value, "margin_low": margin.low, "margin_high": margin.high,
                       "shift": shift.value, "shift_low": shift.low, "shift_high": shift.high,
                       "flips_gained": gained, "flips_lost": lost}
                if name in self.damage:
                    row["perplexity"] = self.damage[name]["perplexity"]
                    row["perplexity_change"] = self.damage[name]["perplexity"] / self.damage[self.base]["perplexity"] - 1.0
                    row["kl"] = self.damage[name]["kl"]
                rows.append(row)
        return rows

    def contrasts(self) -> list[dict[str, Any]]:
        """Paired seek-minus-reject margin difference for conditions sharing ``meta["pair"]``."""
        pairs: dict[str, dict[str, str]] = {}
        for name, cond in self.conditions.items():
            if cond.meta.get("pair") and cond.side:
                pairs.setdefault(cond.meta["pair"], {})[cond.side] = name
        rows = []
        for pair, sides in pairs.items():
            if set(sides) != {"seek", "reject"}:
                continue
            seek, reject = self.scores[sides["seek"]], self.scores[sides["reject"]]
            diff = paired_difference(seek.margin_mean, reject.margin_mean)
            to_seek, to_reject = flips(seek.seek_wins, reject.seek_wins)
            rows.append({"persona": self.persona, "pair": pair, "regime": self.conditions[sides["seek"]].regime,
                         "seek_condition": sides["seek"], "reject_condition": sides["reject"], "n": diff.n,
                         "difference": diff.value, "difference_low": diff.low, "difference_high": diff.high,
                         "items_seek_only": to_seek, "items_reject_only": to_reject})
        return rows

    def prompt_additions(self) -> list[dict[str, Any]]:
        """What a mask adds to its pole's prompt (the paper's protocol keeps the prompt on under the mask): per
        pole the paired shift of (mask + prompt) over the prompt alone, toward that pole; per pair the
        seek-minus-reject difference of those additions. From conditions with ``meta["prompt_of"]``."""
        rows, by_pair = [], {}
        for name, cond in self.conditions.items():
            prompt = cond.meta.get("prompt_of")
            if not prompt or prompt not in self.scores or not cond.side:
                continue
            sign = 1.0 if cond.side == "seek" else -1.0
            added = self.scores[name].margin_mean - self.scores[prompt].margin_mean
            diff = mean_ci(sign * added)
            rows.append({"persona": self.persona, "condition": name, "prompt": prompt, "side": cond.side, "n": diff.n,
                         "added": diff.value, "added_low": diff.low, "added_high": diff.high})
            by_pair.setdefault(cond.meta.get("pair"), {})[cond.side] = added
        for pair, sides in by_pair.items():
            if set(sides) == {"seek", "reject"}:
                diff = paired_difference(sides["seek"], sides["reject"])
                rows.append({"persona": self.persona, "condition": pair, "prompt": "prompt pair", "side": "seek − reject",
                             "n": diff.n, "added": diff.value, "added_low": diff.low, "added_high": diff.high})
        return rows

    def per_item(self) -> dict[str, dict[str, list[float]]]:
        """Per-item summed and per-token margins of every condition (for saving)."""
        return {name: {"margin_sum": s.margin_sum.tolist(), "margin_mean": s.margin_mean.tolist()}
                for name, s in self.scores.items()}


def evaluate(model: Any, items: Sequence[PersonaItem], conditions: Sequence[Condition], *, persona: str,
             neutral_texts: Sequence[str] | None = None, batch_size: int = 8, progress: bool = True) -> Evaluation:
    """Score every condition on the same items (and perplexity on ``neutral_texts`` if given). A condition
    whose ``meta["damage_of"]`` names an earlier one (a mask plus a prompt: the neutral text carries no prompt)
    takes that condition's damage instead of measuring the same weights again."""
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}")
    if "base" not in names:
        raise ValueError("evaluate needs a condition named 'base' to pair against")
    reference = DamageReference.build(model, neutral_texts, batch_size) if neutral_texts else None
    scores, damage = {}, {}
    for cond in conditions:
        with cond.applied(model):
            scores[cond.name] = score_ab(model, items, system=cond.system, batch_size=batch_size, progress=progress)
            if reference is not None and cond.meta.get("damage_of") in damage:   # same weights, prompt-free text
                damage[cond.name] = damage[cond.meta["damage_of"]]
            elif reference is not None:
                damage[cond.name] = reference.measure(model)
    return Evaluation(persona, {c.name: c for c in conditions}, scores, damage)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", "<br>")     # a cell stays one cell (generated text)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as a GitHub markdown table; ``x`` with ``x_low``/``x_high`` columns prints as ``x [low, high]``."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or [c for c in rows[0] if not c.endswith(("_low", "_high"))])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            cell = _fmt(row.get(c, ""))
            if f"{c}_low" in row:
                cell += f" [{_fmt(row[c + '_low'])}, {_fmt(row[c + '_high'])}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

