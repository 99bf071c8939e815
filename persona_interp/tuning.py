"""Hyper-parameter searches on a validation split of the calibration data (never on test items).

Steering (layer, multiplier), masks (sparsity, modules, layers, token scope) and prompts (phrasing)
each get a search scored the same way: the seek-minus-reject separation of the per-token margin.

Example:
    >>> fit, val = load_persona("power").split(0.2, seed=0)
    >>> choice = select_steering(model, mean_difference_vectors(model, fit, range(4, 28, 4)), val, [2, 4, 8])
    >>> choice.layer, choice.multiplier
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

from tqdm.auto import tqdm

from .ablation import ablate
from .adapter import get_adapter
from .data import PersonaItem
from .masks import Mask, contrastive_sparse_masks, contrastive_wanda_masks, wanda_mask
from .scoring import DamageReference, score_ab
from .signatures import Signature
from .steering import SteeringVector


@dataclass
class SteeringChoice:
    """The chosen layer and multiplier, and the whole search table."""

    layer: int
    multiplier: float
    vector: SteeringVector
    table: list[dict[str, float]]


def select_steering(model: Any, vectors: dict[int, SteeringVector], validation: Sequence[PersonaItem],
                    multipliers: Sequence[float], *, batch_size: int = 8, progress: bool = False) -> SteeringChoice:
    """For each layer and multiplier α, score the validation items with +α and −α; choose the pair
    with the largest mean seek-minus-reject difference of the per-token margin."""
    if not vectors or not multipliers:
        raise ValueError("select_steering needs at least one vector and one multiplier")
    if any(m <= 0 for m in multipliers):
        raise ValueError(f"multipliers must be positive (the reject side uses −α), got {list(multipliers)}")
    validation = list(validation)
    table = []
    for layer, vector in vectors.items():
        for alpha in multipliers:
            margins = {}
            for sign in (1, -1):
                with vector.apply(model, sign * alpha):
                    margins[sign] = score_ab(model, validation, batch_size=batch_size, progress=progress).margin_mean
            table.append({"layer": layer, "multiplier": alpha, "separation": float((margins[1] - margins[-1]).mean()),
                          "seek_margin": float(margins[1].mean()), "reject_margin": float(margins[-1].mean())})
    best = max(table, key=lambda row: row["separation"])
    return SteeringChoice(int(best["layer"]), float(best["multiplier"]), vectors[int(best["layer"])], table)


MASK_BUILDERS = {
    "wanda": lambda model, seek, reject, rho, **kw: (wanda_mask(model, seek, rho, **kw), wanda_mask(model, reject, rho, **kw)),
    "contrastive_wanda": contrastive_wanda_masks,
    "contrastive_sparse": contrastive_sparse_masks,
}


@dataclass
class MaskSpace:
    """The grid of a mask search: sparsity, modules (``None`` = attention and MLP), layer range
    (``all``, ``early`` or ``late`` half) and which tokens the signatures cover."""

    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    modules: list[str | None] = field(default_factory=lambda: [None, "attn", "mlp"])
    layer_ranges: list[str] = field(default_factory=lambda: ["all", "late"])
    token_scopes: list[str] = field(default_factory=lambda: ["all", "answer"])


@dataclass
class MaskChoice:
    """The chosen configuration, its two masks (seek, reject) and the whole search table."""

    config: dict[str, Any]
    masks: tuple[Mask, Mask]
    table: list[dict[str, Any]]


def _layers(model: Any, layer_range: str) -> range | None:
    n = get_adapter(model).n_layers
    ranges = {"all": None, "early": range(0, n // 2), "late": range(n // 2, n)}
    if layer_range not in ranges:
        raise ValueError(f"layer range must be one of {sorted(ranges)}, got {layer_range!r}")
    return ranges[layer_range]


def select_masks(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                 validation: Sequence[PersonaItem], space: MaskSpace, *, reference: DamageReference | None = None,
                 max_kl: float | None = None, persona: str | None = None, batch_size: int = 8,
                 progress: bool = False) -> MaskChoice:
    """Search ``space`` for the mask pair of ``method`` (``wanda``: one mask per pole's signature;
    ``contrastive_wanda`` / ``contrastive_sparse``) with the largest seek-minus-reject separation of
    the per-token margin on the validation items. ``signatures`` maps each token scope to the
    (seek, reject) signatures collected with it. With ``reference`` each row records the damage
    (KL on neutral text, the larger of the two masks); ``max_kl`` excludes configurations above it.

    Example:
        >>> choice = select_masks(model, "contrastive_wanda", {"all": (s, r)}, val, MaskSpace(token_scopes=["all"]))
        >>> choice.config        # {"sparsity": 0.1, "modules": "mlp", "layers": "late", "token_scope": "all"}
    """
    if method not in MASK_BUILDERS:
        raise ValueError(f"unknown mask method {method!r}: use one of {sorted(MASK_BUILDERS)}")
    missing = [scope for scope in space.token_scopes if scope not in signatures]
    if missing:
        raise ValueError(f"no signatures for token scope(s) {missing}; have {sorted(signatures)}")
    if max_kl is not None and reference is None:
        raise ValueError("max_kl needs a damage reference")
    validation = list(validation)
    grid = list(itertools.product(space.sparsities, space.modules, space.layer_ranges, space.token_scopes))
    table, built = [], {}
    for rho, modules, layer_range, scope in tqdm(grid, desc=f"mask search ({method})", disable=not progress):
        seek_sig, reject_sig = signatures[scope]
        pair = MASK_BUILDERS[method](model, seek_sig, reject_sig, rho, modules=[modules] if modules else None,
                                     layers=_layers(model, layer_range), persona=persona)
        margins, kls = [], []
        for mask in pair:
            with ablate(model, mask):
                margins.append(score_ab(model, validation, batch_size=batch_size, progress=False).margin_mean)
                if reference is not None:
                    kls.append(reference.measure(model)["kl"])
        row = {"sparsity": rho, "modules": modules or "attn+mlp", "layers": layer_range, "token_scope": scope,
               "separation": float((margins[0] - margins[1]).mean()), "seek_margin": float(margins[0].mean()),
               "reject_margin": float(margins[1].mean())}
        if kls:
            row["kl"] = max(kls)
        table.append(row)
        built[len(table) - 1] = pair
    allowed = [i for i, row in enumerate(table) if max_kl is None or row["kl"] <= max_kl]
    if not allowed:
        raise ValueError(f"no configuration has KL <= {max_kl}; the least damaging has {min(r['kl'] for r in table):.4f}")
    best = max(allowed, key=lambda i: table[i]["separation"])
    config = {key: table[best][key] for key in ("sparsity", "modules", "layers", "token_scope")}
    return MaskChoice(config, built[best], table)


@dataclass
class PromptChoice:
    """The chosen phrasing per pole and the search table."""

    seek: str
    reject: str
    table: list[dict[str, Any]]


def select_prompts(model: Any, seek_prompts: Sequence[str], reject_prompts: Sequence[str],
                   validation: Sequence[PersonaItem], *, batch_size: int = 8) -> PromptChoice:
    """Score every phrasing on the validation items; keep the seek phrasing with the highest mean
    margin and the reject phrasing with the lowest (the pair with the largest separation).

    Example:
        >>> choice = select_prompts(model, persona_prompts("power", "seek"), persona_prompts("power", "reject"), val)
    """
    if not seek_prompts or not reject_prompts:
        raise ValueError("select_prompts needs at least one phrasing per pole")
    validation = list(validation)
    table = [{"side": side, "prompt": prompt,
              "margin": float(score_ab(model, validation, system=prompt, batch_size=batch_size, progress=False).margin_mean.mean())}
             for side, prompts in (("seek", seek_prompts), ("reject", reject_prompts)) for prompt in prompts]
    seek = max((r for r in table if r["side"] == "seek"), key=lambda r: r["margin"])
    reject = min((r for r in table if r["side"] == "reject"), key=lambda r: r["margin"])
    return PromptChoice(seek["prompt"], reject["prompt"], table)
