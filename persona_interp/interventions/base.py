"""The one shape of everything that changes a model: an object whose ``apply(model)`` is a context manager
(the change is on inside, undone on exit, also on exception), as steering-vectors' ``SteeringVector.apply``.

Weight masks ([`WeightAblation`][persona_interp.interventions.ablation.WeightAblation]), neuron and head masks,
steering vectors, ODE steering and LoRA all have that shape;
[`Condition`][persona_interp.interventions.conditions.Condition] wraps any of them. Weight edits go through
[`edit_weights`][persona_interp.interventions.base.edit_weights], which refuses two edits of one map at once (a mask
and a LoRA on the same weight could not both be undone bit-exact) and restores in reverse order.

Examples:
    >>> vector = mean_difference_vectors(model, fit[:2], [1])[1]
    >>> with vector.apply(model):              # any intervention
    ...     logits = model(tokens)
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor

from persona_interp.model.adapter import get_adapter


@runtime_checkable
class Intervention(Protocol):
    """Anything with ``apply(model)``: a context manager that changes ``model`` inside and undoes it on exit."""

    def apply(self, model: Any) -> ContextManager[Any]: ...


@runtime_checkable
class DosedIntervention(Protocol):
    """An intervention with a dose: ``apply(model, multiplier)`` (a steering vector, an ODE flow, a weight edit),
    what a steering search tries at several multipliers."""

    def apply(self, model: Any, multiplier: float | None = None) -> ContextManager[Any]: ...


_EDITING: dict[int, dict[str, str]] = {}   # id(model) -> {map name: what is editing it}


@contextlib.contextmanager
def edit_weights(model: Any, names: Iterable[str], edit: Callable[[str, Tensor], Any],
                 restore: Callable[[str, Tensor, Any], None], what: str, *, workers: int = 1) -> Iterator[Any]:
    """Context manager: ``edit(name, parameter)`` changes each named map's parameter in place (under
    ``torch.no_grad``) and returns what ``restore(name, parameter, saved)`` needs to undo it on exit, also on
    exception, in reverse order; every edited map is restored even if one restore raises. With ``workers`` > 1 the
    maps are edited and restored in that many threads (``edit`` and ``restore`` must then be thread-safe; the maps
    are disjoint). A map already under another edit raises ``RuntimeError`` before anything changes.

    Examples:
        >>> def zero(name, weight):                        # returns what restore needs
        ...     saved = weight.clone(); weight.zero_(); return saved
        >>> def restore(name, weight, saved):
        ...     weight.copy_(saved)
        >>> with edit_weights(model, ["blocks.0.mlp.down"], zero, restore, "zero"):
        ...     float(adapter.weight("blocks.0.mlp.down").abs().sum())
        0.0
        >>> with edit_weights(model, ["blocks.0.mlp.down"], zero, restore, "zero"), ablate(model, mask):
        ...     pass
        Traceback (most recent call last):
        RuntimeError: mask contrastive_wanda conflicts with an active weight edit on blocks.0.mlp.down (zero); ...
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
        _each(names, lambda name: edit(name, adapter.parameter(name)), workers, saved, stop_at_error=True)
        yield model
    finally:
        try:
            _each(list(reversed(saved)), lambda name: restore(name, adapter.parameter(name), saved[name]), workers, {},
                  stop_at_error=False)
        finally:
            for name in names:
                active.pop(name, None)
            if not active:
                _EDITING.pop(id(model), None)


def _each(names: list[str], fn: Callable[[str], Any], workers: int, into: dict[str, Any], *, stop_at_error: bool) -> None:
    """``into[name] = fn(name)`` under ``torch.no_grad`` for every name, in ``workers`` threads when > 1; ``into``
    holds every call that returned even when one raised (serially, ``stop_at_error`` stops at the first error).
    The first error is raised after the calls end."""
    def call(name: str) -> Any:
        with torch.no_grad():                                  # grad mode is per thread
            return fn(name)

    errors: list[BaseException] = []
    if workers <= 1:
        for name in names:
            try:
                into[name] = call(name)
            except BaseException as error:                     # re-raised below
                errors.append(error)
                if stop_at_error:
                    break
    else:
        futures: dict[str, Future] = {}
        try:
            with ThreadPoolExecutor(workers) as pool:          # leaving the block waits for every call
                for name in names:
                    futures[name] = pool.submit(call, name)
        finally:
            for name, future in futures.items():
                raised = future.exception()
                if raised is None:
                    into[name] = future.result()
                else:
                    errors.append(raised)
    if errors:
        raise errors[0]
