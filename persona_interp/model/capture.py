"""Reading activations: one forward with hooks on, stopped early once nothing later is needed.

The one stop exception ([`StopForward`][persona_interp.model.capture.StopForward], as TransformerLens'
``StopAtLayerException``) and the one recorder ([`capture`][persona_interp.model.capture.capture]) every reader uses:
scoring's final residual, steering's residual means, the views' neuron activations and attention patterns; signatures
stream through their own hooks and stop with the same exception.

Examples:
    >>> acts = capture(model, tokens, [adapter.residual_hook(0), adapter.residual_hook(1)])
    >>> acts[adapter.residual_hook(1)].shape                # [batch, pos, d_model]
    torch.Size([2, 16, 32])
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from jaxtyping import Int
from torch import Tensor

from persona_interp.model.adapter import get_adapter


class StopForward(Exception):
    """Raised inside a hook once everything needed is read: the rest of the forward (later blocks, the logits)
    is skipped; [`forward`][persona_interp.model.capture.forward] catches it."""


def stop_hook(x: Tensor, hook: Any) -> None:
    """A hook that ends the forward where it is attached."""
    raise StopForward


def forward(model: Any, tokens: Int[Tensor, "batch pos"], **forward_kwargs: Any) -> Any:
    """``model(tokens)`` with the tokens and tensor keyword arguments on the model's input device; returns the
    output, or ``None`` when a hook stopped the forward
    ([`StopForward`][persona_interp.model.capture.StopForward])."""
    device = get_adapter(model).input_device
    forward_kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in forward_kwargs.items()}
    try:
        return model(tokens.to(device), **forward_kwargs)
    except StopForward:
        return None


def capture(model: Any, tokens: Int[Tensor, "batch pos"], names: Sequence[str], *,
            transform: Callable[[Tensor], Tensor] = Tensor.detach, **forward_kwargs: Any) -> dict[str, Tensor]:
    """The activation at each hook point in ``names`` (passed through ``transform``: detached by default; pass
    ``lambda x: x`` to keep a graph) from one forward that stops once the last of them has fired.

    Examples:
        >>> list(capture(model, tokens, [get_adapter(model).final_residual_hook]).values())[0].shape
        torch.Size([2, 16, 32])
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("capture needs at least one hook name")
    captured: dict[str, Tensor] = {}

    def grab(name: str) -> Callable[[Tensor, Any], None]:
        def hook(x: Tensor, hook: Any) -> None:
            captured[name] = transform(x)
            if len(captured) == len(names):
                raise StopForward
        return hook

    with model.hooks(fwd_hooks=[(name, grab(name)) for name in names]):
        forward(model, tokens, **forward_kwargs)
    missing = [name for name in names if name not in captured]
    if missing:
        raise ValueError(f"hook points never fired: {', '.join(missing)}")
    return captured
