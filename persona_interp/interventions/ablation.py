"""Run-time ablation: weight masks (``W ⊙ M``) and hook-based neuron / head masks.

Examples:
    >>> base = model(tokens)
    >>> with ablate(model, mask):                 # weights multiplied in place, restored bit-exact on exit
    ...     logits = model(tokens)
    >>> torch.equal(model(tokens), base), torch.equal(logits, base)
    (True, False)
    >>> heads = HeadMask({1: [0, 3]}, mode="mean", signature=sig_seek)
    >>> with ablate(model, heads):                # hooks, no weight edits
    ...     logits = model(tokens)
    >>> torch.equal(model.run_with_hooks(tokens, fwd_hooks=heads.fwd_hooks(model)), logits)
    True
"""
from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Union

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from persona_interp.interventions.base import edit_weights
from persona_interp.masks.mask import Mask
from persona_interp.model.adapter import get_adapter
from persona_interp.signatures import Signature


@dataclass
class _UnitMask(ABC):
    """Shared logic of [`NeuronMask`][persona_interp.interventions.ablation.NeuronMask] and
    [`HeadMask`][persona_interp.interventions.ablation.HeadMask]: units per layer, zero or mean."""

    units: dict[int, list[int]]
    mode: str = "zero"
    signature: Signature | None = None
    meta: dict = field(default_factory=dict)

    def _validate(self, model: Any, n_units: int, what: str) -> None:
        adapter = get_adapter(model)
        if self.mode not in ("zero", "mean"):
            raise ValueError(f"ablation mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean":
            if self.signature is None:
                raise ValueError("mean-ablation needs a signature (the mean comes from its statistics)")
            self.signature.check_model(adapter)
        for layer, units in self.units.items():
            if not 0 <= layer < adapter.n_layers:
                raise ValueError(f"layer {layer} out of range: the model has {adapter.n_layers} layers")
            bad = [u for u in units if not 0 <= u < n_units]
            if bad:
                raise ValueError(f"{what} {bad} out of range in layer {layer}: the model has {n_units} {what}s per layer")

    _per_head = False
    _what = "neuron"

    @abstractmethod
    def _unit_count(self, adapter: Any) -> int: ...

    @abstractmethod
    def _hook_name(self, adapter: Any, layer: int) -> str: ...

    @abstractmethod
    def _mean(self, signature: Signature, layer: int) -> Tensor: ...

    def fwd_hooks(self, model: Any) -> list[tuple[str, Callable]]:
        """``(hook name, hook)`` pairs for ``model.run_with_hooks`` / ``model.hooks``."""
        adapter = get_adapter(model)
        self._validate(model, self._unit_count(adapter), self._what)
        hooks = []
        for layer, units in sorted(self.units.items()):
            index = torch.tensor(units, dtype=torch.long)
            mean = (self._mean(self.signature, layer)[index].float()    # moved to the activation's device
                    if self.mode == "mean" and self.signature is not None else None)
            hooks.append((self._hook_name(adapter, layer), _replace_hook(index, mean, self._per_head)))
        return hooks

    @contextlib.contextmanager
    def apply(self, model: Any) -> Iterator[Any]:
        """Context manager: the hooks are on inside, removed on exit (also on exception)."""
        with model.hooks(fwd_hooks=self.fwd_hooks(model)):
            yield model


class NeuronMask(_UnitMask):
    """Ablate MLP neurons (``{layer: [neuron, ...]}``) through the neuron hook, to 0 or to their mean.

    Examples:
        >>> print(*[name for name, hook in NeuronMask({1: [5, 40]}, mode="mean", signature=sig_seek).fwd_hooks(model)])
        blocks.1.mlp.hook_post
    """

    def _unit_count(self, adapter: Any) -> int:
        return adapter.d_mlp

    def _hook_name(self, adapter: Any, layer: int) -> str:
        return adapter.neuron_hook(layer)

    def _mean(self, signature: Signature, layer: int) -> Tensor:
        return signature.neuron_mean(layer)


class HeadMask(_UnitMask):
    """Ablate attention heads (``{layer: [head, ...]}``) through the per-head ``z`` hook, to 0 or to
    their mean ``z``.

    Examples:
        >>> print(*[name for name, hook in HeadMask({1: [0]}).fwd_hooks(model)])
        blocks.1.attn.hook_z
        >>> HeadMask({1: [4]}).fwd_hooks(model)
        Traceback (most recent call last):
        ValueError: head [4] out of range in layer 1: the model has 4 heads per layer
    """

    _per_head = True
    _what = "head"

    def _unit_count(self, adapter: Any) -> int:
        return adapter.n_heads

    def _hook_name(self, adapter: Any, layer: int) -> str:
        return adapter.head_hook(layer)

    def _mean(self, signature: Signature, layer: int) -> Tensor:
        return signature.head_z_mean(layer)


def _replace_hook(index: Tensor, value: Tensor | None, per_head: bool) -> Callable[[Tensor, Any], Tensor]:
    """A hook that sets the given neurons (last axis) or heads (axis −2 of ``[..., heads, d_head]``)
    to 0 or to ``value``."""

    def hook(activation: Float[Tensor, "..."], hook: Any) -> Tensor:
        out = activation.clone()
        at = index.to(out.device)
        fill = 0.0 if value is None else value.to(device=out.device, dtype=out.dtype)
        if per_head:
            out[..., at, :] = fill
        else:
            out[..., at] = fill
        return out

    return hook


HookMask = Union[NeuronMask, HeadMask]


@dataclass
class WeightAblation:
    """A [`Mask`][persona_interp.masks.mask.Mask] as an intervention: each covered weight's removed entries are
    set to 0 (``gamma = 0``) or to ``gamma·W`` (``0 < gamma < 1``: a soft gate) inside
    [`apply`][persona_interp.interventions.ablation.WeightAblation.apply]; only those entries are kept aside (ρ × the
    covered weights, on the weight's device or on ``store``, e.g. ``"cpu"`` for a model that fills its GPU) and
    written back bit-exact on exit.

    Examples:
        >>> weight = adapter.weight("blocks.0.mlp.down").clone()
        >>> with WeightAblation(mask, gamma=0.5).apply(model):
        ...     gated = adapter.weight("blocks.0.mlp.down").clone()
        >>> removed = ~mask.keep["blocks.0.mlp.down"]
        >>> torch.equal(gated[removed], 0.5 * weight[removed]), torch.equal(adapter.weight("blocks.0.mlp.down"), weight)
        (True, True)
    """

    mask: Mask
    gamma: float = 0.0
    store: str | torch.device | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Mask):
            raise TypeError(f"ablate takes a Mask, NeuronMask or HeadMask, got {type(self.mask).__name__}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma (the gate of removed weights) must be in [0, 1), got {self.gamma}")

    def apply(self, model: Any) -> ContextManager[Any]:
        """Context manager: the mask is on inside; restored bit-exact on exit (also on exception)."""
        adapter = get_adapter(model)
        self.mask.check_model(adapter)
        keep, gamma, store = self.mask.keep, self.gamma, self.store
        local = threading.local()                                   # one scratch buffer per worker thread

        def scratch() -> _Scratch:
            if not hasattr(local, "scratch"):
                local.scratch = _Scratch()
            return local.scratch

        def edit(name: str, parameter: Tensor) -> Tensor:
            kept = adapter.to_native(name, keep[name].to(parameter.device))
            values = set_aside(parameter, kept, scratch())
            if gamma:
                parameter.mul_(kept.to(parameter.dtype) + gamma * (~kept).to(parameter.dtype))
            else:
                zero_removed(parameter, kept)                                # kept entries: unchanged bits
            return values.to(store) if store is not None else values         # only these stay while inside

        def restore(name: str, parameter: Tensor, values: Tensor) -> None:
            put_back(parameter, adapter.to_native(name, keep[name].to(parameter.device)), values, scratch())

        # numpy's compress and multiply hold one core each; on CPU weights the maps go over torch's threads
        on_cpu = all(adapter.parameter(name).device.type == "cpu" for name in keep)
        return edit_weights(model, keep, edit, restore, f"mask {self.mask.meta.get('method', '')}".strip(),
                            workers=torch.get_num_threads() if on_cpu else 1)


@dataclass
class MeanWeightAblation:
    """A [`Mask`][persona_interp.masks.mask.Mask] applied with mean ablation: the removed entries are set to 0 as in
    [`WeightAblation`][persona_interp.interventions.ablation.WeightAblation] and each map's output gets the constant
    they contributed on average, ``W_removed · mean(x)`` (``mean`` a signature's per-token input mean, e.g. a neutral
    signature's), through a hook on the map's output; on exit the hooks are removed and the weights written back
    bit-exact.

    Examples:
        >>> with MeanWeightAblation(mask, neutral).apply(model):
        ...     logits = model(tokens)
        >>> MeanWeightAblation(mask, neutral).biases(model)["blocks.0.mlp.down"].shape     # [n_out]
        torch.Size([32])
    """

    mask: Mask
    mean: Signature
    store: str | torch.device | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Mask) or not isinstance(self.mean, Signature):
            raise TypeError(f"MeanWeightAblation takes a Mask and a Signature, got {type(self.mask).__name__} and "
                            f"{type(self.mean).__name__}")

    def biases(self, model: Any) -> dict[str, Float[Tensor, " n_out"]]:
        """The constant added to each masked map's output: ``(W ⊙ ¬keep) · mean(x)`` (float64, weight's device)."""
        adapter = get_adapter(model)
        self.mean.check_model(adapter)
        out = {}
        for name, keep in self.mask.keep.items():
            weight = adapter.weight(name).double()
            removed = weight * (~keep).to(device=weight.device, dtype=weight.dtype)
            out[name] = removed @ self.mean.token_mean(name).to(device=weight.device, dtype=weight.dtype)
        return out

    @contextlib.contextmanager
    def apply(self, model: Any) -> Iterator[Any]:
        """Context manager: the mask and the mean outputs are on inside; hooks removed and weights restored on exit."""
        adapter = get_adapter(model)
        self.mask.check_model(adapter)
        hooks = [(adapter.output_hook(name), _add_hook(bias)) for name, bias in self.biases(model).items()]
        with WeightAblation(self.mask, store=self.store).apply(model), model.hooks(fwd_hooks=hooks):
            yield model


def _add_hook(bias: Float[Tensor, " n_out"]) -> Callable[[Tensor, Any], Tensor]:
    """Add ``bias`` to a map's output ``[batch, pos, n_out]`` (or ``[batch, pos, heads, d_head]``, heads first)."""
    def hook(activation: Tensor, hook: Any) -> Tensor:
        flat = activation.reshape(*activation.shape[:2], -1)
        return (flat + bias.to(device=activation.device, dtype=activation.dtype)).reshape(activation.shape)
    return hook


@contextlib.contextmanager
def ablate(model: Any, mask: Mask | HookMask | MeanWeightAblation, gamma: float = 0.0, *, store: str | torch.device | None = None) -> Iterator[Any]:
    """Context manager: inside, ``model`` computes with the mask applied.

    * a [`Mask`][persona_interp.masks.mask.Mask] is applied as a
      [`WeightAblation`][persona_interp.interventions.ablation.WeightAblation] (removed entries set to 0 or ``γ·W`` in
      place, only they kept aside, written back bit-exact on exit, also on exception);
    * a [`NeuronMask`][persona_interp.interventions.ablation.NeuronMask] /
      [`HeadMask`][persona_interp.interventions.ablation.HeadMask] adds forward hooks and removes them on exit; they
      replace whole units (to 0 or to their mean) and keep no weights aside, so ``gamma`` and ``store`` are refused
      for them (a ValueError) rather than ignored;
    * a [`MeanWeightAblation`][persona_interp.interventions.ablation.MeanWeightAblation] zeroes as a weight mask and
      adds the removed entries' mean output.

    Nested ablations are allowed on disjoint maps; a weight mask (or LoRA) touching a map that is already
    edited raises ``RuntimeError``.

    Examples:
        >>> with ablate(model, seek_mask):
        ...     reply = generate(model, "Would you lead the project?", max_new_tokens=5)
        >>> with ablate(model, mask, store="cpu"):     # the removed entries wait in host memory (a model filling its GPU)
        ...     logits = model(tokens)
    """
    if isinstance(mask, (NeuronMask, HeadMask)) and (gamma or store is not None):
        raise ValueError(f"gamma and store apply to weight masks only: a {type(mask).__name__} sets whole units to "
                         f"{'their mean' if mask.mode == 'mean' else '0'} through a hook and keeps no weights aside "
                         f"(got gamma={gamma!r}, store={store!r})")
    intervention = mask if isinstance(mask, (NeuronMask, HeadMask, MeanWeightAblation)) else WeightAblation(mask, gamma, store)
    with intervention.apply(model):
        yield model


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(parameter: Tensor) -> "np.ndarray | None":
    """The raw bits of a contiguous CPU parameter as a numpy integer array sharing its memory, else None (numpy
    compacts a boolean selection several times faster than torch on the CPU, and bits copy exactly)."""
    if parameter.device.type != "cpu" or not parameter.is_contiguous() or parameter.element_size() not in _BITS:
        return None
    return parameter.detach().view(_BITS[parameter.element_size()]).numpy().reshape(-1)


class _Scratch:
    """One reused boolean buffer for ``~keep`` on the CPU, the size of the largest map seen: a fresh temporary per
    map costs more in page faults than the work itself."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, dtype=bool)

    def removed(self, keep: Bool[Tensor, "..."]) -> np.ndarray:
        flat = keep.numpy().reshape(-1)
        if self.buffer.size < flat.size:
            self.buffer = np.empty(flat.size, dtype=bool)
        return np.logical_not(flat, out=self.buffer[:flat.size])


def set_aside(parameter: Tensor, keep: Bool[Tensor, "..."], scratch: _Scratch | None = None) -> Tensor:
    """The entries of ``parameter`` where ``keep`` is false, in row-major order (their raw bits on the CPU);
    ``keep`` in the parameter's own layout and on its device.

    Examples:
        >>> weight, keep = torch.arange(4.).reshape(2, 2), torch.tensor([[True, False], [False, True]])
        >>> values = set_aside(weight, keep); zero_removed(weight, keep); weight
        tensor([[0., 0.],
                [0., 3.]])
        >>> put_back(weight, keep, values); weight     # as it was
        tensor([[0., 1.],
                [2., 3.]])
    """
    bits = _bits(parameter)
    if bits is None:
        return parameter[~keep]
    return torch.from_numpy(np.compress((scratch or _Scratch()).removed(keep), bits))


def zero_removed(parameter: Tensor, keep: Bool[Tensor, "..."]) -> None:
    """Set the entries where ``keep`` is false to +0, leaving the kept entries' bits as they are."""
    bits = _bits(parameter)
    if bits is None:
        parameter.masked_fill_(~keep, 0)
    else:
        bits *= keep.numpy().reshape(-1)            # integer bits × 1 or × 0: exact, no float rounding, no temporary


def put_back(parameter: Tensor, keep: Bool[Tensor, "..."], values: Tensor, scratch: _Scratch | None = None) -> None:
    """Write entries kept by [`set_aside`][persona_interp.interventions.ablation.set_aside] back where ``keep`` is
    false, bit-exact."""
    bits = _bits(parameter)
    if bits is None:
        parameter.masked_scatter_(~keep, values.to(device=parameter.device).view(parameter.dtype))
    else:
        removed = (scratch or _Scratch()).removed(keep)
        bits[np.flatnonzero(removed)] = values.cpu().view(_BITS[parameter.element_size()]).numpy()
