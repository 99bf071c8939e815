"""Conditions: small run-time objects that induce (or control for) a persona, composable and
leaving the model unchanged afterwards.

A condition may carry a system prompt (used by the scorers) and one intervention (anything with
``apply(model)``, :class:`~persona_interp.interventions.base.Intervention`: a weight mask, steering, LoRA),
which :meth:`Condition.applied` turns on. ``a + b`` composes two conditions.

Example:
    >>> cond = MaskCondition("cw-seek@0.3", cw_seek, side="seek")
    >>> with cond.applied(model):
    ...     scores = score_ab(model, test, system=cond.system)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from persona_interp.interventions.ablation import WeightAblation
from persona_interp.interventions.base import Intervention
from persona_interp.interventions.lora import LoRA
from persona_interp.interventions.ode_steering import ODESteering
from persona_interp.interventions.steering import SteeringVector
from persona_interp.interventions.weight_edit import DirectionalEdit
from persona_interp.masks.mask import Mask
from persona_interp.model.chat import system_for


@dataclass
class Condition:
    """The base model: no prompt, no intervention. Subclasses add one."""

    name: str = "base"
    side: str | None = None          # "seek", "reject", or None for base / controls
    regime: str = "base"
    system: Any = None               # a system prompt, or a function question -> prompt (RAG)
    meta: dict = field(default_factory=dict)

    def intervention(self) -> Intervention | None:
        """What this condition changes in the model (``None``: nothing, only the prompt if any)."""
        return None

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        """Context manager: the intervention is on inside (the system prompt is the scorers' to use)."""
        intervention = self.intervention()
        with intervention.apply(model) if intervention is not None else contextlib.nullcontext(model):
            yield model

    def __add__(self, other: "Condition") -> "Composed":
        return Composed([self, other])


@dataclass
class Prompt(Condition):
    """A persona system prompt."""

    regime: str = "prompt"


@dataclass
class MaskCondition(Condition):
    """A weight mask (:class:`~persona_interp.interventions.ablation.WeightAblation`; ``regime`` names the method)."""

    mask: Mask | None = None
    regime: str = "mask"

    def intervention(self) -> Intervention | None:
        return WeightAblation(self.mask)                     # no mask: a TypeError naming what it got


class Composed(Condition):
    """Several conditions at once: system prompts joined, contexts nested in order."""

    def __init__(self, parts: list[Condition]):
        super().__init__(name=" + ".join(p.name for p in parts), side=next((p.side for p in parts if p.side), None),
                         regime="+".join(p.regime for p in parts))
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
    per-device barrier copies are made once, not at every :meth:`Condition.applied`."""

    vector: SteeringVector | ODESteering | DirectionalEdit
    multiplier: float

    def apply(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        return self.vector.apply(model, self.multiplier)


@dataclass
class WeightEditCondition(Condition):
    """Weight-edit steering (:class:`~persona_interp.interventions.weight_edit.DirectionalEdit`) at ``multiplier``
    (its α: +α amplifies the direction, −α attenuates it, −1 projects it out; which pole each serves is chosen on
    validation), the residual writers' weights restored bit-exact on exit."""

    edit: DirectionalEdit | None = None
    multiplier: float = -1.0
    regime: str = "weight_edit"

    def intervention(self) -> Intervention | None:
        if self.edit is None:
            raise TypeError(f"weight-edit condition {self.name!r} has no edit")
        return _Scaled(self.edit, self.multiplier)


@dataclass
class LoRACondition(Condition):
    """Fine-tuned low-rank weight updates (:class:`~persona_interp.interventions.lora.LoRA`), added on entry and
    removed bit-exact on exit."""

    lora: LoRA | None = None
    regime: str = "lora"

    def intervention(self) -> Intervention | None:
        if self.lora is None:
            raise TypeError(f"LoRA condition {self.name!r} has no LoRA")
        return self.lora
