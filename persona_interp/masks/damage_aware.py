"""Damage-aware persona masks (issue #35, idea 1): scores that ask what removing a weight costs on neutral text.

Every mask builder so far ranks a weight by how much the two poles differ; these also read a third statistic, the
model on neutral text (a ``side="neutral"`` [`Signature`][persona_interp.signatures.Signature] from
``collect_signatures(model, texts)``, or gradients of the neutral next-token loss). Each pole's mask *removes*, per
output row, the ``n_in − ⌊n_in·(1−ρ)⌋`` weights with the highest removal score (the persona evidence toward the
other pole per unit of neutral importance); ties go to the lower neutral importance. All are
[`MaskFamily`][persona_interp.masks.builders.MaskFamily] rankings, so a sweep ranks each map once.

* [`retain_ratio_masks`][persona_interp.masks.damage_aware.retain_ratio_masks] (Pochinkov & Schoots, arXiv
  2403.01267): ``|W|·φ(∓z) / (|W|·a_neutral + ε)``;
* [`set_difference_masks`][persona_interp.masks.damage_aware.set_difference_masks] (Wei et al., arXiv 2402.05162,
  ``prune_wandg_set_difference``): the highest contrastive Wanda scores ``|W|·φ(∓z)`` outside each row's top
  ``utility`` share by the neutral Wanda score ``|W|·a_neutral``;
  [`snip_set_difference_masks`][persona_interp.masks.damage_aware.snip_set_difference_masks] the same with SNIP scores
  ``|W ⊙ ∇W|``;
* [`gradient_masks`][persona_interp.masks.damage_aware.gradient_masks]: the first-order change of the A/B margin on
  removing a weight, ``Δ = −W ⊙ ∂margin/∂W`` (signed: the seek mask removes ``Δ > 0``, the reject mask ``Δ < 0``),
  over its second-order neutral damage ``½·W²·F`` (``F`` the empirical diagonal Fisher of the neutral next-token
  loss), from one backward pass per batch.

``generic`` (arXiv 2605.12290) is an option of each score: the input channels (units) in the map's top ``generic``
share by neutral importance are removed last. Idea 2, learned unit gates, is
[`persona_interp.masks.learned`][persona_interp.masks.learned]; mean ablation of any mask is
[`MeanWeightAblation`][persona_interp.interventions.ablation.MeanWeightAblation].
[`DAMAGE_AWARE_METHODS`][persona_interp.masks.damage_aware.DAMAGE_AWARE_METHODS] (at the end) names the methods of
both modules this module registers in the method registry
([`persona_interp.masks.registry`][persona_interp.masks.registry]: what each needs, its options and defaults), so
``method_spec("gradient").build(model, MethodInputs(items=fit, neutral_texts=texts), 0.01)`` builds any of them.

Examples:
    >>> neutral = collect_signatures(model, load_neutral_texts()[:4])
    >>> seek, reject = retain_ratio_masks(model, sig_seek, sig_reject, neutral, 0.05)
    >>> seek, reject = gradient_masks(model, fit[:4], load_neutral_texts()[:4], 0.05, modules=["mlp"])
    >>> seek.meta["method"], len(seek.keep)            # the gate, up and down maps of both layers
    ('gradient', 6)
"""
from __future__ import annotations

import hashlib

import math
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from persona_interp.data.files import made_or_read
from persona_interp.data.personas import PersonaItem
from persona_interp.masks.builders import (
    FamilyCache,
    MaskFamily,
    Phi,
    _options_key,
    _by_channel,
    abs_weight,
    check_contrast,
    check_sparsity,
    contrast,
    keep_top_per_row,
    phi_fn,
    row_ranks,
    selected_maps,
)
from persona_interp.masks.mask import Mask
from persona_interp.masks.objectives import ab_margins, frozen_weights, neutral_logprobs, restore_grad
from persona_interp.model.adapter import LinearMap, get_adapter
from persona_interp.signatures import NEUTRAL, Signature


# ---------------------------------------------------------------------- shared pieces
def check_neutral(neutral: Signature, seek: Signature) -> Signature:
    """The neutral signature, with the seek signature's per-sample statistic; refuses a persona signature."""
    if not isinstance(neutral, Signature) or neutral.meta.get("side") != NEUTRAL:
        raise ValueError("the neutral statistic must be a signature of plain texts (collect_signatures(model, texts), "
                         f"side {NEUTRAL!r}), got side {getattr(neutral, 'meta', {}).get('side')!r}")
    return neutral.with_statistic(seek.statistic)


def check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def generic_channels(importance: Float[Tensor, " n_in"], generic: float) -> Bool[Tensor, " n_in"]:
    """The input channels in the top ``generic`` share by neutral ``importance`` (ties: the lower index).

    Examples:
        >>> generic_channels(torch.tensor([3., 1., 2., 0.]), 0.5)
        tensor([ True, False,  True, False])
    """
    check_fraction("generic", generic)
    return keep_top_per_row(importance[None, :], 1 - generic)[0] if generic else torch.zeros_like(importance, dtype=torch.bool)


def removal_ranks(removal: Float[Tensor, "out in"], damage: Float[Tensor, "out in"],
                  generic: Bool[Tensor, " n_in"] | None = None) -> Int[Tensor, "out in"]:
    """Ranks whose ``rank < k`` keeps each row's ``k`` lowest ``removal`` scores: the highest are removed first,
    ties (and the ``generic`` channels, always last) by the lower ``damage``."""
    primary = -removal
    if generic is not None and generic.any():
        primary = torch.where(generic.to(primary.device)[None, :], torch.full_like(primary, math.inf), primary)
    return row_ranks(primary, damage)


def _family(model: Any, method: str, maps: list[LinearMap], ranker: Callable[[Any, str], Any], meta: dict,
            cache: bool) -> MaskFamily:
    return MaskFamily(model, method, maps, ranker, meta, cache=cache)


# ---------------------------------------------------------------------- 1a: retain-aware ratio
def retain_ratio_family(model: Any, seek: Signature, reject: Signature, neutral: Signature, *, phi: Phi = "relu",
                        tau: float = 1.0, eps: float = 1e-8, retain_eps: float = 1e-3, generic: float = 0.0,
                        modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                        persona: str | None = None, cache: bool = False) -> MaskFamily:
    """The ranking of [`retain_ratio_masks`][persona_interp.masks.damage_aware.retain_ratio_masks] (a
    [`MaskFamily`][persona_interp.masks.builders.MaskFamily]: any sparsity, module and layer subset).

    Examples:
        >>> family = retain_ratio_family(model, sig_seek, sig_reject, neutral, cache=True)
        >>> masks = {rho: family.pair(rho) for rho in (0.05, 0.1)}
        >>> masks[0.1][0].meta["method"], masks[0.1][1].meta["side"]
        ('retain_ratio', 'reject')
    """
    check_contrast(seek, reject, eps)
    neutral = check_neutral(neutral, seek)
    check_fraction("generic", generic)
    if not retain_eps > 0:
        raise ValueError(f"retain_eps (the floor of the neutral score, relative to its mean) must be positive, got {retain_eps!r}")
    maps = selected_maps(model, modules, layers, [seek, reject, neutral])
    act = phi_fn(phi, tau)

    def ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
        w, z, a = abs_weight(model, name), contrast(seek, reject, name, eps), neutral.sample_mean(name)
        retain = _by_channel(w, a)
        floor = retain_eps * retain.mean().clamp_min(torch.finfo(retain.dtype).tiny)
        common = generic_channels(a, generic)
        seek_ranks, reject_ranks = (removal_ranks(_by_channel(w, act(sign * z)) / (retain + floor), retain, common)
                                    for sign in (-1, 1))             # seek removes the reject pole's weights
        return seek_ranks, reject_ranks

    meta = {"persona": persona or seek.meta.get("dataset"), "statistic": seek.statistic, "phi": phi, "tau": tau,
            "eps": eps, "retain_eps": retain_eps, "generic": generic, "n_neutral": neutral.n_samples}
    return _family(model, "retain_ratio", maps, ranker, meta, cache)


def retain_ratio_masks(model: Any, seek: Signature, reject: Signature, neutral: Signature, sparsity: float,
                       **options: Any) -> tuple[Mask, Mask]:
    """Retain-aware ratio masks (Pochinkov & Schoots): each pole removes, per row, the weights with the highest
    ``|W|·φ(∓z) / (|W|·a_neutral + ε)``: the contrast toward the other pole per unit of neutral-text activation
    (``a_neutral`` the neutral signature's per-sample statistic, ``ε = retain_eps × the map's mean neutral
    score``). Options as [`retain_ratio_family`][persona_interp.masks.damage_aware.retain_ratio_family].

    Examples:
        >>> seek, reject = retain_ratio_masks(model, sig_seek, sig_reject, neutral, 0.05, modules=["mlp"])
        >>> sorted(seek.keep)[:2]
        ['blocks.0.mlp.down', 'blocks.0.mlp.gate']
    """
    check_sparsity(sparsity)
    return retain_ratio_family(model, seek, reject, neutral, **options).pair(
        sparsity, modules=options.get("modules"), layers=options.get("layers"))


# ---------------------------------------------------------------------- 1b: set difference
def _set_difference_ranks(persona: Float[Tensor, "out in"], utility: Float[Tensor, "out in"], share: float,
                          generic: Bool[Tensor, " n_in"] | None) -> Tensor:
    """Ranks that remove the highest ``persona`` scores outside each row's top ``share`` by ``utility`` first
    (then, past them, the protected weights with the lowest utility)."""
    protected = keep_top_per_row(utility, 1 - share)               # each row's top ⌊n_in·share⌋ by utility
    removal = torch.where(protected, torch.full_like(persona, -math.inf), persona)
    return removal_ranks(removal, utility, generic)


def set_difference_family(model: Any, seek: Signature, reject: Signature, neutral: Signature, *, utility: float = 0.3,
                          phi: Phi = "relu", tau: float = 1.0, eps: float = 1e-8, generic: float = 0.0,
                          modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                          persona: str | None = None, cache: bool = False) -> MaskFamily:
    """The ranking of [`set_difference_masks`][persona_interp.masks.damage_aware.set_difference_masks].

    Examples:
        >>> seek, reject = set_difference_family(model, sig_seek, sig_reject, neutral, utility=0.5).pair(0.05)
        >>> seek.meta["method"], seek.meta["utility"]
        ('set_difference', 0.5)
    """
    check_contrast(seek, reject, eps)
    neutral = check_neutral(neutral, seek)
    check_fraction("utility", utility)
    check_fraction("generic", generic)
    maps = selected_maps(model, modules, layers, [seek, reject, neutral])
    act = phi_fn(phi, tau)

    def ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
        w, z, a = abs_weight(model, name), contrast(seek, reject, name, eps), neutral.sample_mean(name)
        util, common = _by_channel(w, a), generic_channels(a, generic)
        seek_ranks, reject_ranks = (_set_difference_ranks(_by_channel(w, act(sign * z)), util, utility, common) for sign in (-1, 1))
        return seek_ranks, reject_ranks

    meta = {"persona": persona or seek.meta.get("dataset"), "statistic": seek.statistic, "score": "wanda",
            "utility": utility, "phi": phi, "tau": tau, "eps": eps, "generic": generic, "n_neutral": neutral.n_samples}
    return _family(model, "set_difference", maps, ranker, meta, cache)


def set_difference_masks(model: Any, seek: Signature, reject: Signature, neutral: Signature, sparsity: float,
                         **options: Any) -> tuple[Mask, Mask]:
    """Set-difference masks (Wei et al.) with Wanda scores: each pole removes, per row, the weights with the highest
    contrastive score ``|W|·φ(∓z)`` among those outside the row's top ``utility`` share by the neutral Wanda score
    ``|W|·a_neutral`` (top-q by the persona minus top-p by utility, q = ρ, p = ``utility``). Options as
    [`set_difference_family`][persona_interp.masks.damage_aware.set_difference_family].

    Examples:
        >>> seek, reject = set_difference_masks(model, sig_seek, sig_reject, neutral, 0.05, utility=0.3)
        >>> fraction_differ(seek, reject) > 0
        True
    """
    check_sparsity(sparsity)
    return set_difference_family(model, seek, reject, neutral, **options).pair(
        sparsity, modules=options.get("modules"), layers=options.get("layers"))


# ---------------------------------------------------------------------- gradients
@dataclass
class GradientScores:
    """Per map ``[out, in]`` (float32, on the weight's device): ``margin`` the first-order change of the mean A/B
    margin on removing each weight, ``−W ⊙ ∂margin/∂W``; ``utility`` the SNIP score of the neutral loss,
    ``Σ_batches |W ⊙ ∂L_b/∂W| / tokens``; ``fisher`` the empirical diagonal Fisher of the neutral next-token loss,
    ``Σ_batches (∂L_b/∂W)² / tokens`` (``L_b`` a batch's summed token loss: the per-token Fisher where token
    gradients are uncorrelated), so ``½·W²·F`` estimates the KL per token that removing a weight costs.

    Examples:
        >>> scores = gradient_scores(model, fit[:4], texts, modules=["down"])
        >>> damage = scores.damage("blocks.1.mlp.down")
        >>> damage.shape, bool((damage >= 0).all())                # [out, in]; ½·W²·F ≥ 0
        (torch.Size([32, 48]), True)
    """

    margin: dict[str, Tensor]
    utility: dict[str, Tensor]
    fisher: dict[str, Tensor]
    weight_sq: dict[str, Tensor]               # W² of each map when scored
    meta: dict

    def damage(self, name: str) -> Float[Tensor, "out in"]:
        """``½·W²·F``: the second-order neutral damage of removing each weight."""
        return 0.5 * self.weight_sq[name] * self.fisher[name]


def _grad_of(name: str, parameter: Tensor) -> Tensor:
    if parameter.grad is None:
        raise RuntimeError(f"{name}: the objective did not reach this weight (no gradient)")
    return parameter.grad


def gradient_scores(model: Any, items: Sequence[PersonaItem], neutral_texts: Sequence[str], *,
                    modules: Iterable[str] | None = None, layers: Iterable[int] | None = None, batch_size: int = 8,
                    max_tokens: int = 256) -> GradientScores:
    """[`GradientScores`][persona_interp.masks.damage_aware.GradientScores] from one backward pass per batch:
    ``batch_size`` calibration items (their per-token margin, as
    [`score_ab`][persona_interp.evaluation.scoring.score_ab]'s ``margin_mean``) or neutral texts (their summed
    next-token loss). The weights are never changed; every parameter's ``requires_grad`` is restored. Holds four
    float32 tensors per covered weight (16 bytes each, 1.7 GB for SmolLM2-135M's 107 M: restrict ``modules`` /
    ``layers`` on a large model); accumulated in place, one map's gradient at a time.

    Examples:
        >>> scores = gradient_scores(model, fit[:4], load_neutral_texts()[:4], layers=[1])
        >>> sorted(scores.margin)[:3]
        ['blocks.1.attn.k', 'blocks.1.attn.o', 'blocks.1.attn.q']
    """
    items, neutral_texts = list(items), list(neutral_texts)
    if not items or not neutral_texts:
        raise ValueError(f"gradient scores need calibration items and neutral texts, got {len(items)} and {len(neutral_texts)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    adapter = get_adapter(model)
    maps = selected_maps(model, modules, layers)
    params = {m.name: adapter.parameter(m.name) for m in maps}
    weight = {name: adapter.weight(name).float() for name in params}     # read only: the model's own tensor in float32
    sums = {key: {name: torch.zeros_like(w) for name, w in weight.items()} for key in ("margin", "utility", "fisher")}
    states = frozen_weights(model)
    n_tokens = 0

    def accumulate(objective: Tensor, into: Callable[[str, Tensor], None]) -> None:
        """Backward ``objective`` and hand each map's gradient (float32, ``[out, in]``) to ``into``, one map at a time
        (no second copy of every gradient is held)."""
        for p in params.values():
            p.grad = None
        objective.backward()
        for name, p in params.items():
            into(name, adapter.to_out_in(name, _grad_of(name, p)).float())
            p.grad = None

    def margin(name: str, g: Tensor) -> None:
        sums["margin"][name].sub_(weight[name] * g)

    def neutral(name: str, g: Tensor) -> None:
        sums["utility"][name].add_((weight[name] * g).abs_())
        sums["fisher"][name].add_(g.square())

    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for start in range(0, len(items), batch_size):
                accumulate(ab_margins(model, items[start:start + batch_size], max_tokens).sum(), margin)
            for _, observed in neutral_logprobs(model, neutral_texts, batch_size, max_tokens):
                n_tokens += observed.numel()
                accumulate(-observed.sum(), neutral)
    finally:
        for p in params.values():
            p.grad = None
        restore_grad(states)
    for t in sums["margin"].values():
        t.div_(len(items))
    for t in (*sums["utility"].values(), *sums["fisher"].values()):
        t.div_(n_tokens)
    scores = GradientScores(sums["margin"], sums["utility"], sums["fisher"], {n: w.square() for n, w in weight.items()},
                            {"fingerprint": adapter.fingerprint, "n_items": len(items), "n_neutral": len(neutral_texts),
                             "n_neutral_tokens": n_tokens, "batch_size": batch_size})
    return scores


def _gradient_family(model: Any, scores: GradientScores, method: str, rank: Callable[[str, Tensor], Any],
                     modules: Any, layers: Any, meta: dict, cache: bool) -> MaskFamily:
    get_adapter(model).check_fingerprint(scores.meta["fingerprint"], "gradient scores were computed for")
    maps = [m for m in selected_maps(model, modules, layers) if m.name in scores.margin]
    if not maps:
        raise ValueError(f"the gradient scores cover none of the maps modules={modules} layers={layers}")

    def ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
        return tuple(rank(name, sign * scores.margin[name]) for sign in (1, -1))   # seek removes Δ > 0

    return _family(model, method, maps, ranker, {**scores.meta, **meta}, cache)


def gradient_family(model: Any, items: Sequence[PersonaItem] | None = None, neutral_texts: Sequence[str] | None = None,
                    *, scores: GradientScores | None = None, damage_eps: float = 0.1, generic: float = 0.0,
                    modules: Iterable[str] | None = None, layers: Iterable[int] | None = None, batch_size: int = 8,
                    persona: str | None = None, cache: bool = False) -> MaskFamily:
    """The ranking of [`gradient_masks`][persona_interp.masks.damage_aware.gradient_masks] (from ``scores`` when
    given, else computed from the items and texts).

    Examples:
        >>> scores = gradient_scores(model, fit[:4], texts, modules=["mlp"])
        >>> seek, reject = gradient_family(model, scores=scores).pair(0.05)
        >>> seek.meta["method"], seek.meta["side"]
        ('gradient', 'seek')
    """
    scores = scores or gradient_scores(model, items or [], neutral_texts or [], modules=modules, layers=layers,
                                       batch_size=batch_size)
    check_fraction("generic", generic)
    if not damage_eps > 0:
        raise ValueError(f"damage_eps (the floor of the damage, relative to its mean) must be positive, got {damage_eps!r}")

    def rank(name: str, change: Tensor) -> Tensor:
        damage = scores.damage(name)
        floor = damage_eps * damage.mean().clamp_min(torch.finfo(damage.dtype).tiny)
        common = generic_channels(damage.sum(0), generic)
        return removal_ranks(change.clamp_min(0) / (damage + floor), damage, common)

    return _gradient_family(model, scores, "gradient", rank, modules, layers,
                            {"persona": persona, "damage_eps": damage_eps, "generic": generic}, cache)


def gradient_masks(model: Any, items: Sequence[PersonaItem], neutral_texts: Sequence[str], sparsity: float,
                   **options: Any) -> tuple[Mask, Mask]:
    """Gradient masks on the toolkit's own objective: each pole removes, per row, the weights whose removal moves
    the mean A/B margin most toward it per unit of neutral damage, ``max(±Δ, 0) / (½·W²·F + ε)``
    ([`GradientScores`][persona_interp.masks.damage_aware.GradientScores]; ``ε = damage_eps`` × the map's mean
    damage). Options as [`gradient_family`][persona_interp.masks.damage_aware.gradient_family].

    Examples:
        >>> seek, reject = gradient_masks(model, fit[:4], load_neutral_texts()[:4], 0.05, modules=["mlp"])
        >>> seek.sparsity()                 # ⌊n_in·(1−ρ)⌋ kept per row: 30 of 32, 45 of 48
        0.0625
    """
    check_sparsity(sparsity)
    return gradient_family(model, items, neutral_texts, **options).pair(
        sparsity, modules=options.get("modules"), layers=options.get("layers"))


def snip_set_difference_family(model: Any, items: Sequence[PersonaItem] | None = None,
                               neutral_texts: Sequence[str] | None = None, *, scores: GradientScores | None = None,
                               utility: float = 0.3, generic: float = 0.0, modules: Iterable[str] | None = None,
                               layers: Iterable[int] | None = None, batch_size: int = 8, persona: str | None = None,
                               cache: bool = False) -> MaskFamily:
    """The ranking of [`snip_set_difference_masks`][persona_interp.masks.damage_aware.snip_set_difference_masks].

    Examples:
        >>> seek, reject = snip_set_difference_family(model, scores=gradient_scores(model, fit[:4], texts, layers=[1])).pair(0.05)
        >>> seek.meta["method"]
        'snip_set_difference'
    """
    scores = scores or gradient_scores(model, items or [], neutral_texts or [], modules=modules, layers=layers,
                                       batch_size=batch_size)
    check_fraction("utility", utility)
    check_fraction("generic", generic)

    def rank(name: str, change: Tensor) -> Tensor:
        util = scores.utility[name]
        return _set_difference_ranks(change.clamp_min(0), util, utility, generic_channels(util.sum(0), generic))

    return _gradient_family(model, scores, "snip_set_difference", rank, modules, layers,
                            {"persona": persona, "score": "snip", "utility": utility, "generic": generic}, cache)


def snip_set_difference_masks(model: Any, items: Sequence[PersonaItem], neutral_texts: Sequence[str], sparsity: float,
                              **options: Any) -> tuple[Mask, Mask]:
    """Set-difference masks (Wei et al.) with SNIP scores: the persona score is the signed first-order margin change
    toward the pole, ``max(±Δ, 0)``, the utility score ``|W ⊙ ∇W L_neutral|``; each pole removes, per row, the
    highest persona scores outside the row's top ``utility`` share by utility. Options as
    [`snip_set_difference_family`][persona_interp.masks.damage_aware.snip_set_difference_family].

    Examples:
        >>> seek, reject = snip_set_difference_masks(model, fit[:4], texts, 0.05, utility=0.3, layers=[1])
        >>> len(seek.keep)                  # the seven maps of layer 1
        7
    """
    check_sparsity(sparsity)
    return snip_set_difference_family(model, items, neutral_texts, **options).pair(
        sparsity, modules=options.get("modules"), layers=options.get("layers"))


# ---------------------------------------------------------------------- the method registry's entries
from persona_interp.masks.learned import GateConfig, LearnedGates, train_gates  # noqa: E402  (learned.py does not import this module)
from persona_interp.masks.registry import Family, MethodInputs, MethodSpec, Need, register  # noqa: E402


def _signature_key(sig: Signature | None) -> tuple:
    return (None, None) if sig is None else (id(sig.sums), sig.statistic)


def _kept(families: FamilyCache | None, key: tuple, make: Callable[[], Any], *inputs: Any) -> Any:
    """``make()``, or the one ``families`` keeps under ``key`` (made once per study)."""
    return make() if families is None else families.keep(key, make, *inputs)


def _with_neutral(family: Callable[..., MaskFamily]) -> Callable[..., Family]:
    """The registry builder of a ranking from the two poles' signatures and a neutral signature."""
    def build(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None, modules: Any = None,
              layers: Any = None, **options: Any) -> Family:
        key = (family.__name__, *_signature_key(inputs.seek), *_signature_key(inputs.reject), *_signature_key(inputs.neutral),
               inputs.persona, _options_key({**options, "modules": modules, "layers": layers}))
        return _kept(families, key, lambda: family(model, inputs.seek, inputs.reject, inputs.neutral, modules=modules,
                                                   layers=layers, persona=inputs.persona, cache=True, **options),
                     inputs.seek, inputs.reject, inputs.neutral)
    return build


def _from_gradients(family: Callable[..., MaskFamily]) -> Callable[..., Family]:
    """The registry builder of a ranking from [`GradientScores`][persona_interp.masks.damage_aware.GradientScores]:
    with ``families`` (a study's cache) computed once per items, texts and batch size over every map and shared by
    both gradient methods and every map subset (a weight's scores do not depend on which other maps are scored);
    without, computed for the requested maps only (the memory a large model needs)."""
    def build(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None, modules: Any = None,
              layers: Any = None, batch_size: int = 8, **options: Any) -> Family:
        where = (id(inputs.items), id(inputs.neutral_texts), _options_key({"modules": modules, "layers": layers,
                                                                            "batch_size": batch_size}))
        items, texts = inputs.items, inputs.neutral_texts
        assert items is not None and texts is not None   # MethodSpec.check_inputs refused inputs without them
        alive = (items, texts)
        if families is None:
            scores = gradient_scores(model, items, texts, modules=modules, layers=layers, batch_size=batch_size)
        else:
            scores = families.keep(("gradient_scores", id(items), id(texts), batch_size),
                                   lambda: gradient_scores(model, items, texts, batch_size=batch_size), *alive)
        return _kept(families, (family.__name__, *where, inputs.persona, _options_key(options)),
                     lambda: family(model, scores=scores, modules=modules, layers=layers, persona=inputs.persona,
                                    cache=True, **options), *alive)
    return build


def _learned_gates(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None, modules: Any = None,
                   layers: Any = None, **options: Any) -> Family:
    """The registry builder of learned gates: one training per inputs, maps and
    [`GateConfig`][persona_interp.masks.learned.GateConfig] options."""
    items, texts, seek, reject = inputs.items, inputs.neutral_texts, inputs.seek, inputs.reject
    assert items is not None and texts is not None and seek is not None and reject is not None   # MethodSpec.check_inputs
    key = ("learned_gates", id(inputs.items), id(inputs.neutral_texts), *_signature_key(inputs.seek),
           *_signature_key(inputs.reject), inputs.persona, _options_key({**options, "modules": modules, "layers": layers}))

    def trained() -> LearnedGates:
        # in the store: named by what the training reads besides the inputs the store's owner keyed it by
        named = repr([seek.statistic, reject.statistic, seek.meta.get("token_scope"), key[-1]]).encode()
        stored = [] if inputs.store is None else [inputs.store / f"learned_gates-{hashlib.sha256(named).hexdigest()[:16]}.safetensors"]
        return made_or_read(stored, LearnedGates.load, lambda: [train_gates(model, items, texts, seek, reject,
                            config=GateConfig(**options), modules=modules, layers=layers, persona=inputs.persona)])[0]

    return _kept(families, key, lambda: trained().family(model, cache=True), items, texts, seek, reject)


_CONTRAST = {"phi": "relu", "tau": 1.0, "eps": 1e-8}
_NEUTRAL: frozenset[Need] = frozenset({"signatures", "neutral_signatures"})
_GRADIENT: frozenset[Need] = frozenset({"calibration_items", "neutral_texts"})
DAMAGE_AWARE_METHODS = ("retain_ratio", "set_difference", "snip_set_difference", "gradient", "learned_gates")
"""The registered methods of this module and [`learned`][persona_interp.masks.learned], cheapest first."""
register(MethodSpec("retain_ratio", _with_neutral(retain_ratio_family), needs=_NEUTRAL, search=("statistic", "phi"),
                    options={**_CONTRAST, "retain_eps": 1e-3, "generic": 0.0}))
register(MethodSpec("set_difference", _with_neutral(set_difference_family), needs=_NEUTRAL, search=("statistic", "phi"),
                    options={"utility": 0.3, **_CONTRAST, "generic": 0.0}))
register(MethodSpec("snip_set_difference", _from_gradients(snip_set_difference_family), needs=_GRADIENT, search=(),
                    options={"utility": 0.3, "generic": 0.0, "batch_size": 8}))
register(MethodSpec("gradient", _from_gradients(gradient_family), needs=_GRADIENT, search=(),
                    options={"damage_eps": 0.1, "generic": 0.0, "batch_size": 8}))
register(MethodSpec("learned_gates", _learned_gates, needs=frozenset({"signatures", *_GRADIENT}), search=("statistic",),
                    options=dataclasses.asdict(GateConfig())))
