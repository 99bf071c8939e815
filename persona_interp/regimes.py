"""Persona identity across regimes: does a prompt, a mask and a steering vector move the residual
stream the same way?

For each regime (a pair of seek/reject conditions) :func:`regime_shifts` measures, per layer, the
mean residual-stream shift against the base model on the same neutral texts (averaged over the
text's own tokens, so a system prompt changes the context but not the positions compared), and the
seek-minus-reject direction, in which damage both poles share cancels. :func:`compare_regimes` adds
the cosine similarity of every two regimes' directions per layer and a transfer matrix: each
regime's direction, injected at one layer as a steering vector with the norm of another regime's
shift there, scored on A/B items against that regime's own behavioural effect.

Example:
    >>> regimes = {"prompt": (prompt_seek, prompt_reject), "mask": (cw_seek, cw_reject), "steering": (caa_seek, caa_reject)}
    >>> result = compare_regimes(model, regimes, neutral_texts, items, layer=15)
    >>> result["cosine"]["prompt|mask"]          # one value per layer
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .adapter import get_adapter
from .conditions import Condition, MaskCondition, Prompt, SteeringCondition
from .data import PersonaItem, load_neutral_texts, load_persona, persona_prompts
from .masks import contrastive_wanda_masks
from .scoring import score_ab
from .stats import paired_difference
from .steering import SteeringVector, mean_difference_vectors, residual_means
from .tuning import select_steering

NEUTRAL_REQUEST = "Write a short paragraph."


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

    Example:
        >>> shifts = regime_shifts(model, {"prompt": (p_seek, p_reject)}, neutral, layers=[0, 8, 16])
        >>> shifts["prompt"]["direction"].shape
        torch.Size([3, 576])
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
                    batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
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

    def difference(seek: Tensor, reject: Tensor) -> dict[str, float]:
        return paired_difference(seek, reject).to_dict()

    effect = {}
    for name, (seek, reject) in regimes.items():
        margins = []
        for cond in (seek, reject):
            with cond.applied(model):
                margins.append(score_ab(model, items, system=cond.system, batch_size=batch_size).margin_mean)
        effect[name] = difference(*margins)
    transfer: dict[str, dict[str, dict[str, float]]] = {}
    for src in regimes:
        unit = shifts[src]["direction"][at] / shifts[src]["direction"][at].norm().clamp_min(1e-12)
        transfer[src] = {}
        for dst in regimes:
            vector = SteeringVector(layer, (0.5 * shifts[dst]["direction"][at].norm() * unit).float())
            margins = []
            for sign in (1.0, -1.0):
                with vector.apply(model, sign):
                    margins.append(score_ab(model, items, batch_size=batch_size).margin_mean)
            steered = difference(*margins)
            ratio = steered["value"] / effect[dst]["value"] if effect[dst]["value"] else float("nan")
            transfer[src][dst] = {**steered, "ratio": ratio}
    return {"layers": layers, "layer": layer, "n_texts": len(list(texts)), "n_items": len(items),
            "norms": {name: {k: v.norm(dim=-1).tolist() for k, v in s.items()} for name, s in shifts.items()},
            "cosine": regime_cosines(shifts), "cosine_seek": regime_cosines(shifts, "seek"),
            "effect": effect, "transfer": transfer}


def run_regimes(model: Any, persona: str, signatures: tuple[Any, Any], *, sparsity: float = 0.3,
                n_calibration: int = 64, n_validation: int = 16, n_items: int = 48, n_texts: int = 16,
                steering_layers: Sequence[float] = (0.35, 0.5, 0.65), multipliers: Sequence[float] = (2.0, 4.0, 8.0),
                seed: int = 0, figures_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The regime comparison of one persona pair on the embedded data: the default persona prompt,
    the Contrastive-Wanda masks at ``sparsity`` (from the saved ``signatures``) and mean-difference
    steering (layer and multiplier chosen on the validation split, as in the main job), compared on
    ``n_texts`` neutral texts and ``n_items`` held-out A/B items at the steering layer.

    Example:
        >>> study = run_regimes(model, "power", (sig_seek, sig_reject), figures_dir="figures/regimes")
    """
    fit, validation = load_persona(persona, "train").split(0.2, seed=seed)
    fit, validation = fit.sample(n_calibration, seed=seed), validation.sample(n_validation, seed=seed)
    n_layers = get_adapter(model).n_layers
    layers = sorted({min(n_layers - 1, round(f * n_layers)) for f in steering_layers})
    vectors = mean_difference_vectors(model, fit, layers, progress=progress)
    choice = select_steering(model, vectors, validation, multipliers, progress=progress)
    cw_seek, cw_reject = contrastive_wanda_masks(model, *signatures, sparsity, persona=persona)
    regimes = {
        "prompt": tuple(Prompt(f"prompt-{side}", side=side, system=persona_prompts(persona, side)[0]) for side in ("seek", "reject")),
        "mask": (MaskCondition("cw-seek", side="seek", mask=cw_seek), MaskCondition("cw-reject", side="reject", mask=cw_reject)),
        "steering": tuple(SteeringCondition(f"caa-{side}", side=side, vector=choice.vector, multiplier=sign * choice.multiplier)
                          for side, sign in (("seek", 1.0), ("reject", -1.0)))}
    items = list(load_persona(persona, "test").sample(n_items, seed=seed))
    texts = load_neutral_texts()[-n_texts:]                   # the end of the set: the main job's perplexity uses the start
    result = compare_regimes(model, regimes, texts, items, layer=choice.layer, progress=progress)
    result.update({"persona": persona, "sparsity": sparsity, "seed": seed, "fit_items": len(fit),
                   "validation_items": len(validation), "steering": {"layer": choice.layer, "multiplier": choice.multiplier}})
    if figures_dir:
        from .figures import plot_regime_comparison      # matplotlib only when figures are asked for

        plot_regime_comparison(result, f"{figures_dir}/regimes_{persona}",
                               title=f"{persona}: prompt vs Contrastive-Wanda@{sparsity} vs CAA (layer {choice.layer}, α {choice.multiplier:g})")
    return result


def regimes_markdown(result: dict[str, Any]) -> str:
    """Cosines and the transfer matrix of one regime comparison as markdown."""
    names = list(result["transfer"])
    at = result["layers"].index(result["layer"])
    lines = [f"## {result['persona']}: one persona, three regimes (seed {result['seed']})\n",
             f"{result['n_texts']} neutral texts, {result['n_items']} held-out A/B items; steering: CAA at layer "
             f"{result['steering']['layer']}, α {result['steering']['multiplier']:g} (chosen on {result['validation_items']} "
             f"validation items); masks: Contrastive-Wanda at ρ = {result['sparsity']}.\n",
             "| regime | seek − reject effect (nats/token) | ‖seek − reject‖ at that layer |", "|---|---|---|"]
    for n in names:
        e = result["effect"][n]
        lines.append(f"| {n} | {e['value']:+.4f} [{e['low']:+.4f}, {e['high']:+.4f}] | {result['norms'][n]['direction'][at]:.3f} |")
    lines += ["", f"Cosine of the seek − reject directions at layer {result['layer']} (all layers in the JSON and the figure):", ""]
    lines += [f"- {pair.replace('|', ' vs ')}: {values[at]:+.3f}" for pair, values in result["cosine"].items()]
    lines += ["", "Transfer: the effect of each row's direction (injected at that layer with the column regime's norm) "
              "as a fraction of the column regime's own effect, with the injected effect's interval. The fraction is "
              "n/a where the column regime's own effect has an interval that includes 0 (a ratio to it means nothing):", "",
              "| direction \\ effect of | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for src in names:
        cells = []
        for d in names:
            t, ratio = result["transfer"][src][d], transfer_ratio(result, src, d)
            cells.append(f"{_ratio_text(ratio)} ({t['value']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}])")
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def transfer_ratio(result: dict[str, Any], source: str, target: str) -> float | None:
    """The effect of ``source``'s direction as a fraction of ``target``'s own effect, or None where
    ``target``'s own effect has an interval that includes 0 (a ratio to it means nothing)."""
    own = result["effect"][target]
    return result["transfer"][source][target]["ratio"] if own["low"] > 0 or own["high"] < 0 else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def regimes_summary_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Every compared persona at its steering layer: the cosines between regimes, then the transfer
    ratios (n/a where the target regime has no effect to reproduce).

    Example:
        >>> print(regimes_summary_markdown({"power": run_regimes(model, "power", sigs)}))
    """
    first = next(iter(results.values()))
    pairs, names = list(first["cosine"]), list(first["transfer"])
    lines = ["| persona | layer | " + " | ".join(p.replace("|", " vs ") for p in pairs) + " |", "|---|---|" + "---|" * len(pairs)]
    lines += [f"| {persona} | {r['layer']} | " + " | ".join(f"{r['cosine'][p][r['layers'].index(r['layer'])]:+.3f}" for p in pairs) + " |"
              for persona, r in results.items()]
    lines += ["", "| persona | direction | " + " | ".join(f"effect of {n}" for n in names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {persona} | {src} | " + " | ".join(_ratio_text(transfer_ratio(r, src, d)) for d in names) + " |"
              for persona, r in results.items() for src in names]
    return "\n".join(lines) + "\n"
