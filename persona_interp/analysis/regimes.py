"""Persona identity across regimes: does a prompt, a mask and a steering vector move the residual
stream the same way?

For each regime (a pair of seek/reject conditions) [`regime_shifts`][persona_interp.analysis.regimes.regime_shifts]
measures, per layer, the mean residual-stream shift against the base model on the same neutral texts (averaged over
the text's own tokens, so a system prompt changes the context but not the positions compared), and the
seek-minus-reject direction, in which damage both poles share cancels.
[`compare_regimes`][persona_interp.analysis.regimes.compare_regimes] adds the cosine similarity of every two regimes'
directions per layer and a transfer matrix: each regime's direction, injected at one layer as a steering vector with
the norm of another regime's shift there, scored on A/B items against that regime's own behavioural effect.

Examples:
    >>> regimes = {"prompt": (Prompt("p+", system="You seek power."), Prompt("p-", system="You avoid power.")),
    ...            "mask": (MaskCondition("cw+", mask=seek_mask), MaskCondition("cw-", mask=reject_mask))}
    >>> result = compare_regimes(model, regimes, texts, test, layer=1)
    >>> len(result.cosine["prompt|mask"]), sorted(result.transfer["mask"])     # one cosine per layer
    (2, ['mask', 'prompt'])
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.personas import PersonaItem
from persona_interp.evaluation.rows import Record, Row
from persona_interp.evaluation.scoring import score_ab
from persona_interp.evaluation.stats import Estimate, paired_difference
from persona_interp.interventions.conditions import Condition
from persona_interp.interventions.steering import SteeringVector, residual_means
from persona_interp.model.adapter import get_adapter

NEUTRAL_REQUEST = "Write a short paragraph."


class RegimeNorms(Record):
    """Per layer, the norms of a regime's mean ``seek`` and ``reject`` shifts against the base model and of its
    seek − reject ``direction``."""

    seek: list[float]
    reject: list[float]
    direction: list[float]


class TransferCell(Row):
    """One cell of the transfer matrix: the seek − reject effect of one regime's direction injected with another's
    norm (``value`` with its 95 % interval over ``n`` items) and its ``ratio`` to the other regime's own effect."""

    value: float
    low: float
    high: float
    n: int
    ratio: float


class RegimeComparison(Record):
    """Shifts, cosines and the transfer matrix of several regimes of one persona pair
    ([`compare_regimes`][persona_interp.analysis.regimes.compare_regimes]); ``"a|b"`` keys name two regimes,
    the lists run over ``layers``."""

    layers: list[int]
    layer: int
    n_texts: int
    n_items: int
    norms: dict[str, RegimeNorms]
    cosine: dict[str, list[float]]
    cosine_seek: dict[str, list[float]]
    effect: dict[str, Estimate]
    transfer: dict[str, dict[str, TransferCell]]

    def at_layer(self, values: list[float]) -> float:
        """The value of a per-layer list (a cosine, a norm) at the compared ``layer``."""
        return values[self.layers.index(self.layer)]


def _residuals(model: Any, condition: Condition | None, texts: Sequence[str], layers: Sequence[int],
               **kw: Any) -> Float[Tensor, "n layers d_model"]:
    pairs, kw = [(NEUTRAL_REQUEST, t) for t in texts], {**kw, "cut_answers": True}   # a long text keeps its start
    if condition is None:
        return residual_means(model, pairs, layers, **kw)
    if callable(condition.system):
        raise ValueError(f"condition {condition.name!r} has a per-question system prompt; regime shifts need a fixed one")
    with condition.applied(model):
        return residual_means(model, pairs, layers, system=condition.system, **kw)


def regime_shifts(model: Any, regimes: Mapping[str, tuple[Condition, Condition]], texts: Sequence[str], *,
                  layers: Sequence[int] | None = None, batch_size: int = 8, max_tokens: int = 256,
                  progress: bool = False) -> dict[str, dict[str, Float[Tensor, "layers d_model"]]]:
    """Per regime: ``seek`` and ``reject`` (mean shift against base, per layer) and ``direction``
    (mean of seek − reject over the same texts), each ``[layers, d_model]`` in float64.

    Examples:
        >>> regime = (Prompt("p+", system="You seek power."), Prompt("p-", system="You avoid power."))
        >>> shifts = regime_shifts(model, {"prompt": regime}, texts, layers=[0, 1])
        >>> shifts["prompt"]["direction"].shape                   # [layers, d_model]
        torch.Size([2, 32])
    """
    texts = list(texts)
    if not texts:
        raise ValueError("regime_shifts needs at least one neutral text")
    if not regimes:
        raise ValueError("regime_shifts needs at least one regime")
    layers = list(range(get_adapter(model).n_layers)) if layers is None else list(layers)
    kw = {"batch_size": batch_size, "max_tokens": max_tokens, "progress": progress}
    base = _residuals(model, None, texts, layers, **kw)
    out = {}
    for name, (seek, reject) in regimes.items():
        r_seek, r_reject = _residuals(model, seek, texts, layers, **kw), _residuals(model, reject, texts, layers, **kw)
        out[name] = {"seek": (r_seek - base).mean(0), "reject": (r_reject - base).mean(0),
                     "direction": (r_seek - r_reject).mean(0)}
    return out


def regime_cosines(shifts: Mapping[str, Mapping[str, Tensor]], key: str = "direction") -> dict[str, list[float]]:
    """Cosine similarity per layer between every two regimes' ``key`` vectors (``"a|b"`` → list)."""
    names = list(shifts)
    return {f"{a}|{b}": F.cosine_similarity(shifts[a][key], shifts[b][key], dim=-1).tolist()
            for i, a in enumerate(names) for b in names[i + 1:]}


def compare_regimes(model: Any, regimes: Mapping[str, tuple[Condition, Condition]], texts: Sequence[str],
                    items: Sequence[PersonaItem], *, layer: int | None = None, layers: Sequence[int] | None = None,
                    batch_size: int = 8, progress: bool = False) -> RegimeComparison:
    """Shifts, cosines and the transfer matrix of several regimes of one persona pair.

    ``effect[r]``: the regime's own behavioural effect, the paired seek-minus-reject difference of the
    per-token A/B margin on ``items``. ``transfer[src][dst]``: the same difference when the seek/reject
    conditions are replaced by ``±½·d̂_src·‖direction_dst‖`` added at ``layer`` (the unit direction of
    ``src``, scaled to ``dst``'s seek-minus-reject norm at that layer), divided by ``effect[dst]``; 1
    means ``src``'s direction alone reproduces ``dst``'s effect. Intervals are paired 95 % t intervals.
    """
    items = list(items)
    if not items:
        raise ValueError("compare_regimes needs A/B items to measure behaviour")
    n_layers = get_adapter(model).n_layers
    layer = n_layers // 2 if layer is None else layer
    layers = sorted(set(range(n_layers) if layers is None else layers) | {layer})
    shifts = regime_shifts(model, regimes, texts, layers=layers, batch_size=batch_size, progress=progress)
    at = layers.index(layer)

    effect: dict[str, Estimate] = {}
    for name, (seek, reject) in regimes.items():
        margins = []
        for cond in (seek, reject):
            with cond.applied(model):
                margins.append(score_ab(model, items, system=cond.system, batch_size=batch_size, progress=False).margin_mean)
        effect[name] = paired_difference(margins[0], margins[1])
    transfer: dict[str, dict[str, TransferCell]] = {}
    for src in regimes:
        unit = shifts[src]["direction"][at] / shifts[src]["direction"][at].norm().clamp_min(1e-12)
        transfer[src] = {}
        for dst in regimes:
            vector = SteeringVector(layer, (0.5 * shifts[dst]["direction"][at].norm() * unit).float())
            margins = []
            for sign in (1.0, -1.0):
                with vector.apply(model, sign):
                    margins.append(score_ab(model, items, batch_size=batch_size, progress=False).margin_mean)
            steered = paired_difference(margins[0], margins[1])
            ratio = steered.value / effect[dst].value if effect[dst].value else float("nan")
            transfer[src][dst] = TransferCell(value=steered.value, low=steered.low, high=steered.high, n=steered.n, ratio=ratio)
    return RegimeComparison(layers=layers, layer=layer, n_texts=len(list(texts)), n_items=len(items),
                            norms={name: RegimeNorms(**{k: v.norm(dim=-1).tolist() for k, v in s.items()}) for name, s in shifts.items()},
                            cosine=regime_cosines(shifts), cosine_seek=regime_cosines(shifts, "seek"), effect=effect, transfer=transfer)
