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

from persona_interp.data.personas import PersonaItem
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.interventions.ablation import ablate
from persona_interp.interventions.steering import SteeringVector
from persona_interp.masks.builders import MASK_METHODS, FamilyCache, MaskFamily, mask_family
from persona_interp.masks.mask import Mask
from persona_interp.model.adapter import get_adapter
from persona_interp.progress import stage
from persona_interp.signatures import Signature


def budget_picks(table: list[dict[str, Any]], budgets: list[float]) -> list[tuple[list[float], int]]:
    """The row each damage budget picks (:func:`~persona_interp.evaluation.tuning.pick_within`), one entry per distinct row
    with the budgets that picked it (ascending); budgets that no row fits are left out.

    Example:
        >>> budget_picks([{"separation": 0.2, "kl": 0.3}, {"separation": 0.1, "kl": 0.01}], [0.02, 0.1, 0.5])
        [([0.02, 0.1], 1), ([0.5], 0)]
    """
    picks: dict[int, list[float]] = {}
    for budget in sorted(budgets):
        index = pick_within(table, budget)
        if index is not None:
            picks.setdefault(index, []).append(budget)
    return [(chosen, index) for index, chosen in picks.items()]


@dataclass
class SteeringChoice:
    """The chosen layer and multiplier, and the whole search table."""

    layer: int
    multiplier: float
    vector: SteeringVector
    table: list[dict[str, float]]


def select_steering(model: Any, vectors: dict[int, SteeringVector], validation: Sequence[PersonaItem],
                    multipliers: Sequence[float], *, reference: DamageReference | None = None,
                    stop_above: float | None = None, batch_size: int = 8, progress: bool = False) -> SteeringChoice:
    """For each layer and multiplier α, score the validation items with +α and −α; choose the pair
    with the largest mean seek-minus-reject difference of the per-token margin. With ``reference`` each
    row records the damage on neutral text (``kl``: the larger of ±α) for budgeted picks (:func:`pick_within`);
    with ``stop_above`` a layer's multipliers (ascending) stop once one exceeds that damage."""
    if stop_above is not None and reference is None:
        raise ValueError("stop_above needs a damage reference")
    if not vectors or not multipliers:
        raise ValueError("select_steering needs at least one vector and one multiplier")
    if any(m <= 0 for m in multipliers):
        raise ValueError(f"multipliers must be positive (the reject side uses −α), got {list(multipliers)}")
    validation = list(validation)
    table = []
    with stage("steering search", total=len(vectors) * len(multipliers), progress=progress) as bar:
        for layer, vector in vectors.items():
            for i, alpha in enumerate(sorted(multipliers)):
                margins, kls = {}, []
                for sign in (1, -1):
                    with vector.apply(model, sign * alpha):
                        margins[sign] = score_ab(model, validation, batch_size=batch_size, progress=progress).margin_mean
                        if reference is not None:
                            kls.append(reference.measure(model)["kl"])
                table.append({"layer": layer, "multiplier": alpha, "separation": float((margins[1] - margins[-1]).mean()),
                              "seek_margin": float(margins[1].mean()), "reject_margin": float(margins[-1].mean()),
                              **({"kl": max(kls)} if kls else {})})
                bar.update()
                if stop_above is not None and table[-1]["kl"] > stop_above:
                    bar.update(len(multipliers) - i - 1)
                    break
    best = max(table, key=lambda row: row["separation"])
    return SteeringChoice(int(best["layer"]), float(best["multiplier"]), vectors[int(best["layer"])], table)


def pick_within(table: Sequence[dict[str, Any]], budget: float | None) -> int | None:
    """Index of the row with the largest ``separation`` among those whose ``kl`` (validation damage) is at most
    ``budget`` (``None``: no limit; rows without ``kl`` count as 0, e.g. prompts); ``None`` when none is.

    Example:
        >>> pick_within([{"separation": 0.2, "kl": 0.3}, {"separation": 0.1, "kl": 0.01}], 0.1)
        1
    """
    allowed = [i for i, row in enumerate(table) if budget is None or row.get("kl", 0.0) <= budget]
    return max(allowed, key=lambda i: table[i]["separation"]) if allowed else None


@dataclass
class MaskSpace:
    """The candidates of a mask search: sparsity (the dose), modules (``None`` = attention and MLP), layer
    band (``all``, ``early`` or ``late`` half), the tokens the signatures cover, the per-sample statistic
    (``norm`` or ``rms``) and φ (``relu`` or ``softplus`` with τ = ``tau``; Contrastive-Wanda and the disjoint
    Contrastive-Sparse only). ``design="grid"`` tries every combination; ``"one_at_a_time"`` tries the first
    value of every factor and then each other value of one factor with the rest at their first, each at every
    sparsity. ``vary`` names the methods whose factors vary (``None``: every method); the others sweep sparsity at
    the first value of every factor. With ``stop_above`` (nats/token) a configuration's sparsities stop once one
    exceeds that damage.

    Example:
        >>> MaskSpace(sparsities=[0.01, 0.1, 0.3], statistics=["norm", "rms"], design="one_at_a_time")
    """

    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    modules: list[str | None] = field(default_factory=lambda: [None, "attn", "mlp"])
    layer_ranges: list[str] = field(default_factory=lambda: ["all", "late"])
    token_scopes: list[str] = field(default_factory=lambda: ["all", "answer"])
    statistics: list[str] = field(default_factory=lambda: ["norm"])
    phis: list[str] = field(default_factory=lambda: ["relu"])
    tau: float = 2.0
    design: str = "grid"
    vary: list[str] | None = None
    stop_above: float | None = None

    def configurations(self, method: str) -> list[dict[str, Any]]:
        """The (modules, layers, token scope, statistic, φ) configurations of ``method``, without the factors
        that do not change its masks (φ for Wanda and the code's rule, the statistic for the code's rule)."""
        factors = {"modules": self.modules, "layers": self.layer_ranges, "token_scope": self.token_scopes,
                   "statistic": self.statistics, "phi": self.phis}
        if method in ("wanda", "contrastive_sparse_code"):
            factors["phi"] = ["relu"]
        if method == "contrastive_sparse_code":
            factors["statistic"] = ["norm"]
        if self.vary is not None and method not in self.vary:
            factors = {key: values[:1] for key, values in factors.items()}
        if self.design == "grid":
            combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
        elif self.design == "one_at_a_time":
            first = {key: values[0] for key, values in factors.items()}
            combos = [first] + [{**first, key: value} for key, values in factors.items() for value in values[1:]]
        else:
            raise ValueError(f"design must be 'grid' or 'one_at_a_time', got {self.design!r}")
        return combos


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


CANDIDATE_KEYS = ("sparsity", "modules", "layers", "token_scope", "statistic", "phi")


def candidate_family(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                     config: dict[str, Any], *, tau: float = 2.0, persona: str | None = None,
                     families: FamilyCache | None = None) -> MaskFamily:
    """The mask family of one search configuration (token scope, statistic, φ; see :class:`MaskSpace`), from
    ``families`` when given (ranked once however often it is asked for), else ranked anew (``cache=True``)."""
    seek, reject = (sig.with_statistic(config.get("statistic", "norm")) for sig in signatures[config["token_scope"]])
    options: dict[str, Any] = {**MASK_METHODS[method], "persona": persona}
    if method in ("contrastive_wanda", "contrastive_sparse"):
        options.update(phi=config.get("phi", "relu"), tau=tau if config.get("phi") == "softplus" else 1.0)
    if families is not None:
        return families.get(seek, reject, **options)
    return mask_family(model, seek=seek, reject=reject, cache=True, **options)


def build_candidate(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                    row: dict[str, Any], *, tau: float = 2.0, persona: str | None = None,
                    families: FamilyCache | None = None) -> tuple[Mask, Mask]:
    """The (seek, reject) masks of one row of a mask search table.

    Example:
        >>> seek, reject = build_candidate(model, "wanda", {"all": (s, r)}, choice.table[pick_within(choice.table, 0.1)])
    """
    modules = row["modules"]
    return candidate_family(model, method, signatures, row, tau=tau, persona=persona, families=families).pair(
        row["sparsity"], modules=None if modules == "attn+mlp" else [modules], layers=_layers(model, row["layers"]))


def select_masks(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                 validation: Sequence[PersonaItem], space: MaskSpace, *, reference: DamageReference | None = None,
                 max_kl: float | None = None, persona: str | None = None, batch_size: int = 8,
                 families: FamilyCache | None = None, progress: bool = False) -> MaskChoice:
    """Search ``space`` for the mask pair of ``method`` (a name of :data:`~persona_interp.masks.builders.MASK_METHODS`)
    with the largest seek-minus-reject separation of the per-token margin on the validation items.
    ``signatures`` maps each token scope to the (seek, reject) signatures collected with it. With ``reference``
    each row records the damage (KL on neutral text, the larger of the two masks); ``max_kl`` chooses only among
    configurations within it (:func:`pick_within`). Each configuration is ranked once for all its sparsities
    (and kept in ``families``, when given, for the picks built afterwards).

    Example:
        >>> choice = select_masks(model, "contrastive_wanda", {"all": (s, r)}, val, MaskSpace(token_scopes=["all"]))
        >>> choice.config        # {"sparsity": 0.1, "modules": "mlp", "layers": "late", "token_scope": "all", ...}
    """
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}: use one of {sorted(MASK_METHODS)}")
    missing = [scope for scope in space.token_scopes if scope not in signatures]
    if missing:
        raise ValueError(f"no signatures for token scope(s) {missing}; have {sorted(signatures)}")
    if (max_kl is not None or space.stop_above is not None) and reference is None:
        raise ValueError("max_kl and stop_above need a damage reference")
    validation = list(validation)
    configs = space.configurations(method)
    table: list[dict[str, Any]] = []
    with stage(f"mask search ({method})", total=len(configs) * len(space.sparsities), progress=progress) as bar:
        for config in configs:
            family = candidate_family(model, method, signatures, config, tau=space.tau, persona=persona, families=families)
            for rho in sorted(space.sparsities):
                modules = config["modules"]
                pair = family.pair(rho, modules=[modules] if modules else None, layers=_layers(model, config["layers"]))
                margins, kls = [], []
                for mask in pair:
                    with ablate(model, mask):
                        margins.append(score_ab(model, validation, batch_size=batch_size, progress=progress).margin_mean)
                        if reference is not None:
                            kls.append(reference.measure(model)["kl"])
                row = {**config, "sparsity": rho, "modules": modules or "attn+mlp",
                       "separation": float((margins[0] - margins[1]).mean()), "seek_margin": float(margins[0].mean()),
                       "reject_margin": float(margins[1].mean())}
                if kls:
                    row["kl"] = max(kls)
                table.append(row)
                bar.update()
                if space.stop_above is not None and row["kl"] > space.stop_above:
                    bar.update(len([r for r in space.sparsities if r > rho]))
                    break
            del family
    best = pick_within(table, max_kl)
    if best is None:
        raise ValueError(f"no configuration has KL <= {max_kl}; the least damaging has {min(r['kl'] for r in table):.4f}")
    config = {key: table[best][key] for key in CANDIDATE_KEYS}
    return MaskChoice(config, build_candidate(model, method, signatures, table[best], tau=space.tau, persona=persona,
                                              families=families), table)


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
