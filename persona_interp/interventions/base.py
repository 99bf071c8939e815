"""The one shape of everything that changes a model: an object whose ``apply(model)`` is a context manager
(the change is on inside, undone on exit, also on exception), as steering-vectors' ``SteeringVector.apply``.

Weight masks (:class:`~persona_interp.interventions.ablation.WeightAblation`), neuron and head masks, steering
vectors, ODE steering and LoRA all have that shape; :class:`~persona_interp.interventions.conditions.Condition`
wraps any of them. Weight edits go through :func:`edit_weights`, which refuses two edits of one map at once
(a mask and a LoRA on the same weight could not both be undone bit-exact) and restores in reverse order.

Example:
    >>> with vector.apply(model):              # any intervention
    ...     logits = model(tokens)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor

from persona_interp.model.adapter import get_adapter


@runtime_checkable
class Intervention(Protocol):
    """Anything with ``apply(model)``: a context manager that changes ``model`` inside and undoes it on exit."""

    def apply(self, model: Any) -> ContextManager[Any]: ...


_EDITING: dict[int, dict[str, str]] = {}   # id(model) -> {map name: what is editing it}


@contextlib.contextmanager
def edit_weights(model: Any, names: Iterable[str], edit: Callable[[str, Tensor], Any],
                 restore: Callable[[str, Tensor, Any], None], what: str) -> Iterator[Any]:
    """Context manager: ``edit(name, parameter)`` changes each named map's parameter in place (under
    ``torch.no_grad``) and returns what ``restore(name, parameter, saved)`` needs to undo it on exit, also on
    exception, in reverse order. A map already under another edit raises ``RuntimeError`` before anything changes.

    Example:
        >>> with edit_weights(model, ["blocks.0.mlp.down"], lambda n, p: p.mul_(0) and None, restore, "zero"):
        ...     ...
    """
    names = list(names)
    adapter = get_adapter(model)
    active = _EDITING.setdefault(id(model), {})
    clash = [name for name in names if name in active]
    if clash:
        shown = ", ".join(f"{name} ({active[name]})" for name in clash[:3])
        raise RuntimeError(f"{what} conflicts with an active weight edit on {shown}{'…' if len(clash) > 3 else ''}; "
                           "two edits of one weight cannot both be undone bit-exact")
    saved: dict[str, Any] = {}
    active.update(dict.fromkeys(names, what))
    try:
        with torch.no_grad():
            for name in names:
                saved[name] = edit(name, adapter.parameter(name))
        yield model
    finally:
        with torch.no_grad():
            for name, state in reversed(saved.items()):
                restore(name, adapter.parameter(name), state)
        for name in names:
            active.pop(name, None)
        if not active:
            _EDITING.pop(id(model), None)
