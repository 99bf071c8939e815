"""Weight-edit steering: a steering direction written into the weights instead of added by a hook (Arditi et al.,
arXiv 2406.11717, ``andyrdt/refusal_direction``: ``get_orthogonalized_matrix``).

Every map that writes to the residual stream (each block's attention output ``o`` and MLP ``down``, in the
adapter's ``[out, in]`` view: ``out`` is ``d_model``; never the embedding nor the unembedding tied to it) becomes

    W ← W + α·r̂ (r̂ᵀ W)          and its bias, where it has one (GPT-2), b ← b + α·r̂ (r̂ᵀ b)

with r̂ the unit steering direction. So the component along r̂ of everything these maps write is scaled by
``1 + α`` and nothing else changes:

* α = −1 is Arditi et al.'s directional ablation (``W − r̂ r̂ᵀ W``): no map writes along r̂ any more (they also
  orthogonalise the embedding; here it is tied to the unembedding and left alone, so the token embeddings'
  own component along r̂ still enters the stream);
* −1 < α < 0 ablates partly, α < −1 reverses the component (α = −2: a reflection);
* α > 0 amplifies what the maps already write along r̂.

Why this form rather than actadd as weights: a map without bias (SmolLM2, Llama) cannot add a constant vector,
its output is linear in its input, so adding ``α·v`` as a weight edit needs the map's mean input (a rank-one
``α·v x̄ᵀ/‖x̄‖²``, exact only on average) and statistics from some texts. Scaling the written component needs
only r̂, contains the published ablation as one dose, and is one signed family, searched like steering's
multiplier: +α (amplify) for one pole, −α (attenuate, ablate at α = 1, reverse beyond) for the other. Because
``r̂ r̂ᵀ`` ignores r̂'s sign, which pole amplifying serves depends on which way the model already leans along r̂;
the main job lets the validation split say, per candidate (``studies.reproduce._oriented``). It is a regime of its
own (a dense edit, neither a sparse mask nor a hook).

Examples:
    >>> edit = DirectionalEdit.from_vector(mean_difference_vectors(model, fit, [1])[1])
    >>> with edit.apply(model):                 # α = −1: the direction projected out of every o and down map
    ...     scores = score_ab(model, test, progress=False)
    >>> with edit.apply(model, multiplier=0.5):  # its component amplified ×1.5; weights restored bit-exact on exit
    ...     logits = model(tokens)
    >>> edit.maps(model)                         # the maps that write the residual stream
    ['blocks.0.attn.o', 'blocks.0.mlp.down', 'blocks.1.attn.o', 'blocks.1.mlp.down']
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ContextManager, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.interventions.base import edit_weights
from persona_interp.interventions.steering import SteeringVector
from persona_interp.model.adapter import get_adapter

WRITERS = ("o", "down")          # the maps whose outputs are added to the residual stream


@dataclass
class DirectionalEdit:
    """Scale the component along ``direction`` (normalised to unit length) of what every residual writer writes
    by ``1 + strength`` (see the module docstring); ``layers`` limits the edited blocks (``None``: all)."""

    direction: Float[Tensor, " d_model"]
    strength: float = -1.0
    layers: Sequence[int] | None = None     # stored as a tuple
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction.ndim != 1:
            raise ValueError(f"the edit's direction must be one vector [d_model], got shape {tuple(self.direction.shape)}")
        norm = float(self.direction.double().norm())
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError(f"the edit's direction must be finite and non-zero, its norm is {norm}")
        self.direction = (self.direction.double() / norm).float()
        if self.layers is not None:
            self.layers = tuple(int(layer) for layer in self.layers)

    @classmethod
    def from_vector(cls, vector: SteeringVector, strength: float = -1.0,
                    layers: Sequence[int] | None = None) -> "DirectionalEdit":
        """The edit along a steering vector's direction (its length is dropped; ``meta`` records its layer).

        Examples:
            >>> DirectionalEdit.from_vector(mean_difference_vectors(model, fit[:2], [1])[1], strength=0.5).meta["layer"]
            1
        """
        return cls(vector.direction, strength, tuple(layers) if layers is not None else None,
                   {**vector.meta, "layer": vector.layer})

    def maps(self, model: Any) -> list[str]:
        """The names of the maps this edit changes on ``model``."""
        return [m.name for m in get_adapter(model).select_maps(list(WRITERS), None if self.layers is None else tuple(self.layers))]

    def apply(self, model: Any, multiplier: float | None = None) -> ContextManager[Any]:
        """Context manager: the edit (``multiplier`` overrides ``strength``, as a steering vector's) is on inside;
        every edited weight and bias is restored bit-exact on exit (also on exception). One map already under
        another weight edit (a mask, a LoRA) raises ``RuntimeError`` before anything changes."""
        adapter = get_adapter(model)
        if self.direction.shape != (adapter.d_model,):
            raise ValueError(f"edit direction has shape {tuple(self.direction.shape)}, the model's d_model is {adapter.d_model}")
        alpha = float(self.strength if multiplier is None else multiplier)

        def edit(name: str, parameter: Tensor) -> tuple[Tensor, Tensor | None]:
            bias = adapter.bias(name)
            saved = parameter.detach().clone(), None if bias is None else bias.detach().clone()
            r = self.direction.to(parameter.device)
            parameter.add_(adapter.to_native(name, project(r, adapter.weight(name), alpha)).to(parameter.dtype))
            if bias is not None:
                bias.add_((alpha * r * (r @ bias.detach().float())).to(bias.dtype))
            return saved

        def restore(name: str, parameter: Tensor, saved: tuple[Tensor, Tensor | None]) -> None:
            parameter.copy_(saved[0])
            if saved[1] is not None:
                bias = adapter.bias(name)
                assert bias is not None   # saved only where the map has one
                bias.copy_(saved[1])

        return edit_weights(model, self.maps(model), edit, restore, f"weight edit (α = {alpha:g})")


def project(direction: Float[Tensor, " d_model"], weight: Float[Tensor, "d_model n_in"],
            alpha: float) -> Float[Tensor, "d_model n_in"]:
    """``α·r̂ (r̂ᵀ W)``: the change of one writer's ``[out, in]`` weight (float32; ``direction`` of unit length).

    Examples:
        >>> w = torch.randn(4, 3); r = torch.tensor([1.0, 0, 0, 0])
        >>> (w + project(r, w, -1.0))[0].abs().max()            # the row along r̂ is gone
        tensor(0.)
    """
    if weight.shape[0] != direction.shape[0]:
        raise ValueError(f"a residual writer's weight has {weight.shape[0]} outputs, the direction {direction.shape[0]}")
    return alpha * torch.outer(direction, direction @ weight.float())
