"""Typed rows of the tables an evaluation and the searches produce: one model per table kind, its fields named
as the keys of ``results.json``, so a results file reads back into the same rows and a misspelt or missing key
is an error naming it.

A field that some rows lack (a damage column where no damage was measured, the runner-up of a budget with one
pick, a search row's effect) is ``None`` when absent and left out of the row's JSON; one a row sets, even to
``None`` (an undefined verdict, an unscored candidate), is written. Rows are frozen.

Examples:
    >>> row = ContrastRow(persona="power", pair="prompt", regime="prompt", seek_condition="prompt-seek",
    ...                   reject_condition="prompt-reject", n=4, difference=0.5, difference_low=0.1,
    ...                   difference_high=0.9, items_seek_only=2, items_reject_only=0)
    >>> row.estimate("difference").signed(), "perplexity" in ConditionRow.model_fields
    ('+0.50 [+0.10, +0.90]', True)
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, model_serializer

from persona_interp.data.personas import Side
from persona_interp.evaluation.stats import Estimate
from persona_interp.masks.builders import Phi
from persona_interp.model.chat import TokenScope
from persona_interp.signatures import Statistic


class Record(BaseModel):
    """A results record: unknown keys are refused, and fields left at their default (``None``: absent) are left
    out of its JSON, so a row written and read back has the keys it had."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: Callable[[Any], Any]) -> Any:   # pydantic.SerializerFunctionWrapHandler (a Protocol beartype cannot check)
        data = handler(self)
        if isinstance(data, dict):
            for name in type(self).model_fields:
                if name not in self.model_fields_set:
                    data.pop(name, None)
        return data

    def estimate(self, name: str) -> Estimate:
        """The quantity ``name`` with its 95 % interval (the fields ``name``, ``name_low``, ``name_high``) and the
        row's ``n`` (0 when the row has none).

        Examples:
            >>> row = ContrastRow(persona="power", pair="prompt", regime="prompt", seek_condition="prompt-seek",
            ...                   reject_condition="prompt-reject", n=4, difference=0.5, difference_low=0.1,
            ...                   difference_high=0.9, items_seek_only=2, items_reject_only=0)
            >>> row.estimate("difference").signed(3), row.estimate("difference").n
            ('+0.500 [+0.100, +0.900]', 4)
        """
        values = [getattr(self, key, None) for key in (name, f"{name}_low", f"{name}_high")]
        numbers = [float(v) for v in values if isinstance(v, (int, float))]
        if len(numbers) != 3:
            raise ValueError(f"{type(self).__name__} has no interval {name!r} (fields {name}, {name}_low, {name}_high)")
        n = getattr(self, "n", None)
        value, low, high = numbers
        return Estimate(value, low, high, n if isinstance(n, int) else 0)


RowT = TypeVar("RowT", bound="Row")


class Row(Record):
    """A row of a results table (frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def replace(self: RowT, **fields: Any) -> RowT:
        """This row with ``fields`` set, validated (a field its type lacks is an error naming it); a field set,
        even to ``None``, is written.

        Examples:
            >>> PromptSearchRow(side="seek", prompt="You seek power.").replace(margin=0.4, scored=True).model_dump()
            {'scored': True, 'side': 'seek', 'prompt': 'You seek power.', 'margin': 0.4}
        """
        return type(self).model_validate({**self.model_dump(), **fields})


class ConditionRow(Row):
    """One (condition, side) of [`table`][persona_interp.evaluation.evaluate.Evaluation.table]: accuracy toward the
    side, the margin toward it and its paired shift against the base model (95 % intervals), the items that
    flipped, and the condition's damage on neutral text where it was measured."""

    persona: str
    condition: str
    regime: str
    side: Side
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    margin: float
    margin_low: float
    margin_high: float
    shift: float
    shift_low: float
    shift_high: float
    flips_gained: int
    flips_lost: int
    perplexity: float | None = None
    perplexity_change: float | None = None
    kl: float | None = None
    kl_other: float | None = None


class ContrastRow(Row):
    """One pair of [`contrasts`][persona_interp.evaluation.evaluate.Evaluation.contrasts]: the paired seek − reject
    margin difference and the items only one pole moved to its side."""

    persona: str
    pair: str
    regime: str
    seek_condition: str
    reject_condition: str
    n: int
    difference: float
    difference_low: float
    difference_high: float
    items_seek_only: int
    items_reject_only: int


class ControlRow(Row):
    """A condition against its control
    ([`control_comparison`][persona_interp.evaluation.evaluate.control_comparison]); ``beats_control`` is ``None``
    where the interval is undefined; the ``matched_*`` fields only for a condition with a damage-matched control."""

    persona: str
    condition: str
    control: str
    n: int
    advantage: float
    advantage_low: float
    advantage_high: float
    beats_control: bool | None
    matched_control: str | None = None
    matched_advantage: float | None = None
    matched_advantage_low: float | None = None
    matched_advantage_high: float | None = None
    beats_matched: bool | None = None


class PromptAdditionRow(Row):
    """What a mask adds to its pole's prompt
    ([`prompt_additions`][persona_interp.evaluation.evaluate.Evaluation.prompt_additions]); ``side``
    ``"seek − reject"`` for a pair's difference of additions (``condition``: the pair)."""

    persona: str
    condition: str
    prompt: str
    side: Literal["seek", "reject", "seek − reject"]
    n: int
    added: float
    added_low: float
    added_high: float


class NoPick(Row):
    """A damage budget that nothing is within (``pair`` None)."""

    budget: float
    pair: None


class EqualDamageRow(Row):
    """A damage budget's pair with the largest seek − reject among those within it
    ([`equal_damage_summary`][persona_interp.evaluation.evaluate.equal_damage_summary]); ``damage``: its larger pole's
    KL."""

    budget: float
    pair: str
    regime: str
    n: int
    difference: float
    difference_low: float
    difference_high: float
    n_eligible: int
    damage: float


class BudgetWinnerRow(Row):
    """A damage budget's winning pick ([`budget_winners`][persona_interp.evaluation.evaluate.budget_winners]): its
    test seek − reject, its KL on the reported texts (``test_kl``) and the second measure's (``other_kl``, where
    measured), and, where it had a runner-up, its lead (``decisive`` None: undefined interval)."""

    budget: float
    pair: str
    regime: str
    n: int
    difference: float
    difference_low: float
    difference_high: float
    n_eligible: int
    test_kl: float
    other_kl: float | None = None
    runner_up: str | None = None
    lead: float | None = None
    lead_low: float | None = None
    lead_high: float | None = None
    decisive: bool | None = None


def _picked(value: Any) -> str:
    """``"none"`` for a budget row whose pair is None, else ``"pick"``."""
    pair = value.get("pair", "") if isinstance(value, dict) else getattr(value, "pair", "")
    return "none" if pair is None else "pick"


EqualDamage = Annotated[Union[Annotated[EqualDamageRow, Tag("pick")], Annotated[NoPick, Tag("none")]],
                        Discriminator(_picked)]
BudgetWinner = Annotated[Union[Annotated[BudgetWinnerRow, Tag("pick")], Annotated[NoPick, Tag("none")]],
                         Discriminator(_picked)]


class FrontierRow(Row):
    """A point of the effect–damage frontier ([`frontier_rows`][persona_interp.evaluation.evaluate.frontier_rows]):
    ``line`` the regime (``+prompt``: with its prompt), the budgets it was picked for (None: a fixed row)."""

    line: str
    pair: str
    budgets: list[float] | None
    kl: float
    n: int
    difference: float
    difference_low: float
    difference_high: float


class Damage(Row):
    """A condition's damage on neutral text: perplexity, KL from the base model (nats/token) and, where
    measured, the KL on the second measure's texts."""

    perplexity: float
    kl: float
    kl_other: float | None = None


class PerItem(Row):
    """A condition's per-item margins on the test items: summed and per token (seek − reject)."""

    margin_sum: list[float]
    margin_mean: list[float]


class SearchRow(Row):
    """A candidate of a search table ([`search`][persona_interp.evaluation.search.search]): its damage ``kl`` (with
    a reference), whether it was ``scored`` and ``raced_out``; its effect is None where it was not scored."""

    kl: float | None = None
    scored: bool | None = None
    raced_out: bool | None = None


class PairSearchRow(SearchRow):
    """A candidate with two poles: validation seek − reject (``separation``) and each pole's margin."""

    separation: float | None = None
    seek_margin: float | None = None
    reject_margin: float | None = None


class PromptSearchRow(SearchRow):
    """A phrasing of the prompt search: its pole and mean validation margin."""

    side: Side
    prompt: str
    margin: float | None = None


class SteeringSearchRow(PairSearchRow):
    """A (layer, multiplier) of a steering search; ``orientation`` (weight-edit steering): −1 where the seek
    condition attenuates."""

    layer: int
    multiplier: float
    orientation: float | None = None


class LoRASearchRow(PairSearchRow):
    """An epoch of the LoRA search, with each pole's last training loss."""

    epochs: int
    seek_train_loss: float
    reject_train_loss: float


class MaskConfig(Row):
    """A mask search's configuration ([`MaskSpace`][persona_interp.evaluation.tuning.MaskSpace])."""

    sparsity: float
    modules: str
    layers: str
    token_scope: TokenScope
    statistic: Statistic
    phi: Phi


class MaskSearchRow(MaskConfig, PairSearchRow):
    """A configuration of a mask search with its damage and effect."""

    def config(self) -> MaskConfig:
        """The configuration alone, without the damage and effect.

        Examples:
            >>> MaskSearchRow(sparsity=0.1, modules="mlp", layers="late", token_scope="all", statistic="norm",
            ...               phi="relu", kl=0.05, separation=0.3).config().model_dump()
            {'sparsity': 0.1, 'modules': 'mlp', 'layers': 'late', 'token_scope': 'all', 'statistic': 'norm', 'phi': 'relu'}
        """
        return MaskConfig.model_validate(self.model_dump(include=set(MaskConfig.model_fields)))
