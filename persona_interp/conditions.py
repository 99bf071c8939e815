"""Conditions: small run-time objects that induce (or control for) a persona, composable and
leaving the model unchanged afterwards.

A condition may carry a system prompt (used by the scorers) and a context manager (weight mask,
hooks). ``a + b`` composes two conditions.

Example:
    >>> cond = MaskCondition("cw-seek@0.3", cw_seek, side="seek")
    >>> with cond.applied(model):
    ...     scores = score_ab(model, test, system=cond.system)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from .ablation import ablate
from .chat import system_for
from .masks import Mask


@dataclass
class Condition:
    """The base model: no prompt, no intervention. Subclasses add one."""

    name: str = "base"
    side: str | None = None          # "seek", "reject", or None for base / controls
    regime: str = "base"
    system: Any = None               # a system prompt, or a function question -> prompt (RAG)
    meta: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        yield model

    def __add__(self, other: "Condition") -> "Composed":
        return Composed([self, other])


@dataclass
class Prompt(Condition):
    """A persona system prompt."""

    regime: str = "prompt"


@dataclass
class MaskCondition(Condition):
    """A weight mask applied with :func:`~persona_interp.ablation.ablate` (``regime`` names the method)."""

    mask: Mask | None = None
    regime: str = "mask"

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        with ablate(model, self.mask):
            yield model


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

    vector: Any = None
    multiplier: float = 1.0
    regime: str = "steering"

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        with self.vector.apply(model, self.multiplier):
            yield model


@dataclass
class LoRACondition(Condition):
    """Fine-tuned low-rank weight updates (:class:`~persona_interp.lora.LoRA`), added on entry and
    removed bit-exact on exit."""

    lora: Any = None
    regime: str = "lora"

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[Any]:
        with self.lora.apply(model):
            yield model
