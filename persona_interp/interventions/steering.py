"""Steering vectors: add ``α · v`` to the residual stream entering one block, at every position.

* [`mean_difference_vector`][persona_interp.interventions.steering.mean_difference_vector] — CAA: mean residual over
  the seek answers' tokens minus the same over the reject answers' tokens;
* [`pca_vector`][persona_interp.interventions.steering.pca_vector] — repeng style: first principal component of the
  per-item paired differences, signed to agree with the mean difference.

Examples:
    >>> vec = mean_difference_vector(model, fit, layer=1)
    >>> with vec.apply(model, multiplier=4.0):
    ...     scores = score_ab(model, test, progress=False)
    >>> vec.layer, vec.direction.shape
    (1, torch.Size([32]))
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.personas import PersonaDataset, PersonaItem, Side, check_side
from persona_interp.model.adapter import get_adapter
from persona_interp.model.capture import capture
from persona_interp.model.chat import ANSWER_CUT, QUESTION_CUT, SystemPrompt, encode_batch, token_budget, warn_cut
from persona_interp.progress import stage


@dataclass
class SteeringVector:
    """A direction added at ``blocks.{layer}.hook_resid_pre`` with a multiplier, at every position (system prompt,
    question, answer, every neutral-text token), the tokens a weight mask acts on too; only the fitting
    ([`residual_means`][persona_interp.interventions.steering.residual_means]) looks at the answer tokens alone."""

    layer: int
    direction: Float[Tensor, " d_model"]
    multiplier: float = 1.0
    meta: dict = field(default_factory=dict)

    def fwd_hooks(self, model: Any, multiplier: float | None = None) -> list[tuple[str, Callable]]:
        """``(hook name, hook)`` pairs for ``run_with_hooks``."""
        adapter = get_adapter(model)
        if self.direction.shape != (adapter.d_model,):
            raise ValueError(f"steering direction has shape {tuple(self.direction.shape)}, the model's d_model is {adapter.d_model}")
        delta = (self.multiplier if multiplier is None else multiplier) * self.direction

        def add(resid: Tensor, hook: Any) -> Tensor:
            return resid + delta.to(device=resid.device, dtype=resid.dtype)

        return [(adapter.residual_hook(self.layer), add)]

    @contextlib.contextmanager
    def apply(self, model: Any, multiplier: float | None = None) -> Iterator[Any]:
        """Context manager: the vector is added inside, the hook removed on exit."""
        with model.hooks(fwd_hooks=self.fwd_hooks(model, multiplier)):
            yield model


def answer_residual_means(model: Any, items: Sequence[PersonaItem], layers: Sequence[int], *, side: Side,
                          batch_size: int = 8, max_tokens: int = 256, progress: bool = False) -> Float[Tensor, "n layers d_model"]:
    """Per item, the residual stream entering each of ``layers``, averaged over the answer tokens of ``side``."""
    check_side(side)
    items = list(items)
    if not items:
        raise ValueError("answer_residual_means got no items")
    return residual_means(model, [(it.question, it.answer(side)) for it in items], layers, batch_size=batch_size,
                          max_tokens=max_tokens, progress=progress, desc=f"residuals[{side}]")


def residual_means(model: Any, pairs: Sequence[tuple[str, str]], layers: Sequence[int], *, system: SystemPrompt = None,
                   batch_size: int = 8, max_tokens: int = 256, progress: bool = False,
                   desc: str = "residuals", cut_answers: bool = False) -> Float[Tensor, "n layers d_model"]:
    """Per (question, answer) pair, the residual stream entering each of ``layers``, averaged over the
    answer's tokens (chat-formatted, optionally under a system prompt; padding never counts). Over-long pairs
    are cut as [`encode_batch`][persona_interp.model.chat.encode_batch] says (``cut_answers`` for plain-text answers),
    with a warning.

    Examples:
        >>> residual_means(model, [("Write a paragraph.", texts[0])], layers=[0, 1]).shape     # [n, layers, d_model]
        torch.Size([1, 2, 32])
    """
    adapter = get_adapter(model)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("residual_means got no texts")
    out = torch.zeros(len(pairs), len(layers), adapter.d_model, dtype=torch.float64)
    names = [adapter.residual_hook(layer) for layer in layers]
    budget, n_cut = token_budget(model, max_tokens), 0
    with torch.inference_mode():
        with stage(desc, total=len(range(0, len(pairs), batch_size)), progress=progress) as bar:
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                batch = encode_batch(model.tokenizer, chunk, system=system, max_tokens=budget, cut_answers=cut_answers)
                n_cut += batch.n_cut
                weights = batch.token_mask("answer").double()
                weights = weights / weights.sum(1, keepdim=True)
                captured = capture(model, batch.tokens, names)            # later blocks are not computed
                for i, name in enumerate(names):
                    x = captured[name]
                    out[start:start + len(chunk), i] = torch.einsum("bp,bpd->bd", weights.to(x.device), x.double()).cpu()
                bar.update()
    warn_cut(n_cut, len(pairs), budget, desc, ANSWER_CUT if cut_answers else QUESTION_CUT)
    return out


def paired_differences(model: Any, data: PersonaDataset | Sequence[PersonaItem], layers: Sequence[int],
                       **kw: Any) -> Float[Tensor, "n layers d_model"]:
    """Per item and layer, the seek answer's mean residual minus the reject answer's: the input of
    both steering methods, so one pass can feed both
    ([`vectors_from_differences`][persona_interp.interventions.steering.vectors_from_differences])."""
    seek = answer_residual_means(model, data, layers, side="seek", **kw)
    reject = answer_residual_means(model, data, layers, side="reject", **kw)
    return seek - reject


def vectors_from_differences(method: str, diffs: Float[Tensor, "n layers d_model"], layers: Sequence[int]) -> dict[int, SteeringVector]:
    """``mean_difference`` or ``pca`` vectors from
    [`paired_differences`][persona_interp.interventions.steering.paired_differences]."""
    if method == "mean_difference":
        return {layer: SteeringVector(layer, diffs[:, i].mean(0).float(), meta={"method": method, "n": len(diffs)})
                for i, layer in enumerate(layers)}
    if method == "pca":
        return _pca(diffs, layers)
    raise ValueError(f"unknown steering method {method!r}: use 'mean_difference' or 'pca'")


def mean_difference_vectors(model: Any, data: PersonaDataset | Sequence[PersonaItem], layers: Sequence[int],
                            **kw: Any) -> dict[int, SteeringVector]:
    """CAA vectors for several layers from one pass over the data."""
    return vectors_from_differences("mean_difference", paired_differences(model, data, layers, **kw), layers)


def pca_vectors(model: Any, data: PersonaDataset | Sequence[PersonaItem], layers: Sequence[int],
                **kw: Any) -> dict[int, SteeringVector]:
    """First principal component of the paired differences per layer, scaled to the mean
    difference's projection on it and signed toward the seek pole."""
    return _pca(paired_differences(model, data, layers, **kw), layers)


def _pca(diffs: Tensor, layers: Sequence[int]) -> dict[int, SteeringVector]:
    vectors = {}
    for i, layer in enumerate(layers):
        d = diffs[:, i]
        _, _, vh = torch.linalg.svd(d - d.mean(0), full_matrices=False)
        pc = vh[0]
        scale = float(d.mean(0) @ pc)
        vectors[layer] = SteeringVector(layer, (pc * scale).float(), meta={"method": "pca", "n": len(d)})
    return vectors


def mean_difference_vector(model: Any, data: PersonaDataset | Sequence[PersonaItem], layer: int, **kw: Any) -> SteeringVector:
    """CAA steering vector at one layer (see
    [`mean_difference_vectors`][persona_interp.interventions.steering.mean_difference_vectors])."""
    return mean_difference_vectors(model, data, [layer], **kw)[layer]


def pca_vector(model: Any, data: PersonaDataset | Sequence[PersonaItem], layer: int, **kw: Any) -> SteeringVector:
    """PCA steering vector at one layer (see [`pca_vectors`][persona_interp.interventions.steering.pca_vectors])."""
    return pca_vectors(model, data, [layer], **kw)[layer]
