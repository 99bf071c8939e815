"""Conditions: small run-time objects that induce (or control for) a persona, composable and
leaving the model unchanged afterwards.

A condition may carry a system prompt (used by the scorers) and one intervention (anything with
``apply(model)``, [`Intervention`][persona_interp.interventions.base.Intervention]: a weight mask, steering, LoRA),
which [`Condition.applied`][persona_interp.interventions.conditions.Condition.applied] turns on. ``a + b`` composes
two conditions.

A condition also carries its **relations** to other conditions of the same evaluation, as typed fields that
[`evaluate`][persona_interp.evaluation.evaluate.evaluate] reads (every other name refers to a condition's ``name``):

* ``pair``: the seek and reject poles of one regime share a pair name; ``Evaluation.contrasts`` gives their
  paired seek − reject difference (a pair needs exactly one seek and one reject condition).
* ``control``: the condition this one is compared against toward its side (``control_comparison``), e.g. a
  random mask removing as many weights.
* ``prompt_of``: the prompt-only condition this one adds to (a mask with its pole's prompt on, the paper's
  protocol; ``Evaluation.prompt_additions``).
* ``damage_of``: the condition whose damage on neutral text this one shares instead of measuring it again (the
  same weights: the neutral text carries no prompt).
* ``budgets``: the damage budgets (KL nats/token) this condition was picked for (``budget_winners``).

[`paired`][persona_interp.interventions.conditions.paired] builds a seek/reject pair in one call. ``meta`` holds
free-form extras (e.g. the search row a condition was chosen from) that nothing in the toolkit reads.

Examples:
    >>> seek, reject = paired("cw@0.3", MaskCondition("cw-seek@0.3", mask=seek_mask), MaskCondition("cw-reject@0.3", mask=reject_mask),
    ...                     control="random@0.3")
    >>> seek.side, seek.pair, seek.control
    ('seek', 'cw@0.3', 'random@0.3')
    >>> with seek.applied(model):
    ...     scores = score_ab(model, test, system=seek.system, progress=False)
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Literal, TypeVar

from persona_interp.interventions.ablation import WeightAblation
from persona_interp.interventions.base import Intervention
from persona_interp.interventions.lora import LoRA
from persona_interp.interventions.ode_steering import ODESteering
from persona_interp.interventions.steering import SteeringVector
from persona_interp.interventions.weight_edit import DirectionalEdit
from persona_interp.masks.mask import Mask
from persona_interp.data.personas import Side, check_side
from persona_interp.model.chat import system_for

MaskProtocol = Literal["mask", "mask+prompt"]   # a mask alone, or with its pole's prompt on (the paper's protocol)
C = TypeVar("C", bound="Condition")


@dataclass
class Condition:
    """The base model: no prompt, no intervention. Subclasses add one.

    ``side`` is the pole the condition pushes toward; ``pair``, ``control``, ``prompt_of``, ``damage_of`` and
    ``budgets`` are its relations to the other conditions of an evaluation (see the module's docstring; each
    names a condition by its ``name``); ``meta`` holds free-form extras.
    """

    name: str = "base"
    side: Side | None = None         # "seek", "reject", or None for base / controls
    regime: str = "base"
    system: Any = None               # a system prompt, or a function question -> prompt (RAG)
    pair: str | None = None          # the seek and reject conditions of one regime share it
    control: str | None = None       # the condition compared against toward this side (a random mask)
    matched_control: str | None = None   # a second control: the random mask of equal neutral damage
    prompt_of: str | None = None     # the prompt-only condition this one adds to (mask + prompt)
    damage_of: str | None = None     # the condition whose neutral-text damage this one shares (same weights)
    budgets: list[float] | None = None   # the damage budgets this condition was picked for
    meta: dict[str, Any] = field(default_factory=dict)   # free-form extras nothing in the toolkit reads

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a condition's name must be a non-empty string, got {self.name!r}")
        if self.side is not None:
            check_side(self.side, f"condition {self.name!r}: side")
        if self.pair is not None and self.side is None:
            raise ValueError(f"condition {self.name!r} is in pair {self.pair!r} but has no side: a pair has a "
                             "'seek' and a 'reject' condition")
        for relation in ("control", "matched_control", "prompt_of", "damage_of"):
            if getattr(self, relation) == self.name:
                raise ValueError(f"condition {self.name!r} names itself as its {relation}")
        for relation in ("control", "matched_control", "prompt_of"):
            if getattr(self, relation) is not None and self.side is None:
                raise ValueError(f"condition {self.name!r} has a {relation} but no side: the comparison is "
                                 "toward its side ('seek' or 'reject')")
        if self.budgets is not None:
            self.budgets = [float(b) for b in self.budgets]

    @property
    def protocol(self) -> MaskProtocol | None:
        """``"mask"`` or ``"mask+prompt"`` for a mask condition (with its prompt on when it has a system prompt);
        ``None`` otherwise."""
        return None

    def relations(self) -> dict[str, str]:
        """The other conditions this one names: ``{"control": "random@0.3", ...}`` (unset ones left out)."""
        return {r: getattr(self, r) for r in ("control", "matched_control", "prompt_of", "damage_of")
                if getattr(self, r) is not None}

    def intervention(self) -> Intervention | None:
        """What this condition changes in the model (``None``: nothing, only the prompt if any)."""
        return None

    def forward_key(self) -> Hashable | None:
        """What the condition does to the model, apart from its prompt, as a key: conditions with equal keys cost the
        same damage on neutral text, and with the same prompt too they score alike, so
        [`evaluate`][persona_interp.evaluation.evaluate.evaluate] measures one and copies it to the others. The base
        model and prompts: ``("base",)``; a mask: its [`digest`][persona_interp.masks.mask.Mask.digest]; any other
        intervention ``None`` (not compared: always measured).

        Examples:
            >>> Prompt("p", system="You seek power.").forward_key() == Condition().forward_key()
            True
            >>> MaskCondition("m", mask=seek_mask).forward_key() == MaskCondition("m2", mask=seek_mask.compact()).forward_key()
            True
        """
        return ("base",) if type(self).intervention is Condition.intervention and type(self).applied is Condition.applied else None

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Context manager: the intervention is on inside (the system prompt is the scorers' to use)."""
        intervention = self.intervention()
        with intervention.apply(model) if intervention is not None else contextlib.nullcontext(model):
            yield model

    def __add__(self, other: "Condition") -> "Composed":
        return Composed([self, other])


def paired(name: str, seek: C, reject: C, **relations: Any) -> tuple[C, C]:
    """Copies of ``seek`` and ``reject`` as the two poles of the pair ``name`` (sides set), with the same
    ``relations`` (``control``, ``prompt_of``, ``damage_of``, ``budgets``) on both; a relation given per pole
    is a ``{"seek": ..., "reject": ...}`` dict.

    Examples:
        >>> seek, reject = paired("prompt", Prompt("prompt-seek", system="You seek power."),
        ...                     Prompt("prompt-reject", system="You avoid power."))
        >>> (seek.side, reject.pair)
        ('seek', 'prompt')
    """
    unknown = sorted(set(relations) - {"control", "prompt_of", "damage_of", "budgets"})
    if unknown:
        raise TypeError(f"paired takes the relations control, prompt_of, damage_of and budgets, got {unknown}")
    poles = []
    for side, cond in (("seek", seek), ("reject", reject)):
        pole = copy.copy(cond)                       # any Condition, a Composed included
        for key, value in {"side": side, "pair": name, **relations}.items():
            setattr(pole, key, value[side] if isinstance(value, dict) else value)
        pole.__post_init__()
        poles.append(pole)
    return poles[0], poles[1]


@dataclass
class Prompt(Condition):
    """A persona system prompt."""

    regime: str = "prompt"


@dataclass
class MaskCondition(Condition):
    """A weight mask ([`WeightAblation`][persona_interp.interventions.ablation.WeightAblation]; ``regime`` names the
    method)."""

    mask: Mask | None = None
    regime: str = "mask"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask is not None:     # held at one bit per weight until scored: a full run holds about 150 masks
            self.mask = self.mask.compact()

    @property
    def protocol(self) -> MaskProtocol | None:
        return "mask+prompt" if self.system else "mask"

    def intervention(self) -> Intervention | None:
        if self.mask is None:
            raise TypeError(f"mask condition {self.name!r} has no mask: give it a Mask")
        return WeightAblation(self.mask)

    def forward_key(self) -> Hashable | None:
        return None if self.mask is None else ("mask", self.mask.digest())


class Composed(Condition):
    """Several conditions at once: system prompts joined, contexts nested in order; ``relations`` as on
    [`Condition`][persona_interp.interventions.conditions.Condition] (``name``, ``side`` may override the defaults:
    the parts' names joined, the first side)."""

    def __init__(self, parts: list[Condition], **relations: Any):
        relations = {"name": " + ".join(p.name for p in parts), "side": next((p.side for p in parts if p.side), None),
                     **relations}
        super().__init__(regime="+".join(p.regime for p in parts), **relations)
        self.parts = parts
        if any(callable(p.system) for p in parts):
            self.system = lambda question: "\n".join(filter(None, (system_for(p.system, question) for p in parts))) or None
        else:
            self.system = "\n".join(p.system for p in parts if p.system) or None

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.applied(model))
            yield model


@dataclass
class SteeringCondition(Condition):
    """A steering vector added at its layer with ``multiplier`` (negative steers toward the reject pole)."""

    vector: SteeringVector | ODESteering | None = None
    multiplier: float = 1.0
    regime: str = "steering"

    def intervention(self) -> Intervention | None:
        if self.vector is None:
            raise TypeError(f"steering condition {self.name!r} has no vector")
        return _Scaled(self.vector, self.multiplier)


@dataclass(frozen=True)
class _Scaled:
    """A steering vector or ODE flow at a condition's multiplier; the object itself is shared, so ODESteering's
    per-device barrier copies are made once, not at every
    [`Condition.applied`][persona_interp.interventions.conditions.Condition.applied]."""

    vector: SteeringVector | ODESteering | DirectionalEdit
    multiplier: float

    def apply(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return self.vector.apply(model, self.multiplier)


@dataclass
class WeightEditCondition(Condition):
    """Weight-edit steering ([`DirectionalEdit`][persona_interp.interventions.weight_edit.DirectionalEdit]) at
    ``multiplier`` (its α: +α amplifies the direction, −α attenuates it, −1 projects it out; which pole each serves is
    chosen on validation), the residual writers' weights restored bit-exact on exit."""

    edit: DirectionalEdit | None = None
    multiplier: float = -1.0
    regime: str = "weight_edit"

    def intervention(self) -> Intervention | None:
        if self.edit is None:
            raise TypeError(f"weight-edit condition {self.name!r} has no edit")
        return _Scaled(self.edit, self.multiplier)


@dataclass
class LoRACondition(Condition):
    """Fine-tuned low-rank weight updates ([`LoRA`][persona_interp.interventions.lora.LoRA]), added on entry and
    removed bit-exact on exit."""

    lora: LoRA | None = None
    regime: str = "lora"

    def intervention(self) -> Intervention | None:
        if self.lora is None:
            raise TypeError(f"LoRA condition {self.name!r} has no LoRA")
        return self.lora
