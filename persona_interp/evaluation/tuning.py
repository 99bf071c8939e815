"""Hyper-parameter searches on a validation split of the calibration data (never on test items).

Steering (layer, multiplier), masks (sparsity, modules, layers, token scope), LoRA (epochs) and prompts
(phrasing) each get their candidates searched by the one loop of
[`persona_interp.evaluation.search`][persona_interp.evaluation.search] (damage first, then the seek-minus-reject
separation of the per-token margin for those within the limit).

Examples:
    >>> fit, validation = load_persona("power").sample(12).split(0.3, seed=0)
    >>> choice = select_steering(model, mean_difference_vectors(model, fit, [0, 1]), validation, [2, 8])
    >>> len(choice.table), choice.layer in (0, 1), choice.multiplier in (2, 8)
    (4, True, True)
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Mapping, Sequence, TypeVar

from persona_interp.data.files import made_or_read
from persona_interp.data.personas import SIDES, PersonaItem, Side
from persona_interp.evaluation.checkpoint import SearchCheckpoint
from persona_interp.evaluation.rows import LoRASearchRow, MaskConfig, MaskSearchRow, PromptSearchRow, SteeringSearchRow
from persona_interp.evaluation.scoring import DamageReference
from persona_interp.evaluation.search import Candidate, Pole, Racing, fallback, pick_within, search
from persona_interp.interventions.ablation import ablate
from persona_interp.interventions.base import DosedIntervention
from persona_interp.interventions.lora import LoRA, LoRAConfig, train_lora
from persona_interp.masks.builders import FamilyCache, Phi
from persona_interp.masks.mask import Mask
from persona_interp.masks.registry import Family, MethodInputs, method_spec
from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import TokenScope
from persona_interp.progress import stage
from persona_interp.signatures import Signature, Statistic


V = TypeVar("V", bound=DosedIntervention)   # a steering vector, an ODE flow, a weight edit


@dataclass
class SteeringChoice(Generic[V]):
    """The chosen layer and multiplier, and the whole search table."""

    layer: int
    multiplier: float
    vector: V
    table: list[SteeringSearchRow]


def select_steering(model: Any, vectors: Mapping[int, V], validation: Sequence[PersonaItem],
                    multipliers: Sequence[float], *, reference: DamageReference | None = None,
                    stop_above: float | None = None, budgets: Sequence[float] = (), racing: Racing | None = None,
                    batch_size: int = 8, progress: bool = False,
                    checkpoint: SearchCheckpoint | None = None) -> SteeringChoice[V]:
    """For each layer and multiplier α, score the validation items with +α and −α; choose the pair
    with the largest mean seek-minus-reject difference of the per-token margin. With ``reference`` each
    row records the damage on neutral text (``kl``: the larger of ±α, measured first) for budgeted picks
    ([`pick_within`][persona_interp.evaluation.search.pick_within]); with ``stop_above`` (default: the largest of
    ``budgets``) a multiplier over that damage is not scored and ends its layer's sweep (ascending α); when no
    candidate is scored the least damaging one is chosen. ``racing``, ``checkpoint``:
    [`search`][persona_interp.evaluation.search.search]."""
    if not vectors or not multipliers:
        raise ValueError("select_steering needs at least one vector and one multiplier")
    if any(m <= 0 for m in multipliers):
        raise ValueError(f"multipliers must be positive (the reject side uses −α), got {list(multipliers)}")

    def steered(vector: V, alpha: float) -> tuple[Pole, Pole]:
        return Pole(lambda: vector.apply(model, alpha)), Pole(lambda: vector.apply(model, -alpha))

    candidates = [Candidate(SteeringSearchRow(layer=layer, multiplier=alpha), partial(steered, vector, alpha), group=layer)
                  for layer, vector in vectors.items() for alpha in sorted(multipliers)]
    table = search(model, candidates, validation, reference=reference, limit=stop_above, budgets=budgets, racing=racing,
                   batch_size=batch_size, progress=progress, desc="steering search", checkpoint=checkpoint)
    best = table[fallback(table)]
    return SteeringChoice(best.layer, best.multiplier, vectors[best.layer], table)


@dataclass
class MaskSpace:
    """The candidates of a mask search: sparsity (the dose), modules (``None`` = attention and MLP), layer
    band (``all``, ``early`` or ``late`` half), the tokens the signatures cover, the per-sample statistic
    (``norm`` or ``rms``) and φ (``relu`` or ``softplus`` with τ = ``tau``; Contrastive-Wanda and the disjoint
    Contrastive-Sparse only). ``design="grid"`` tries every combination; ``"one_at_a_time"`` tries the first
    value of every factor and then each other value of one factor with the rest at their first, each at every
    sparsity. ``vary`` names the methods whose factors vary (``None``: every method); the others sweep sparsity at
    the first value of every factor. With ``stop_above`` (nats/token) a sparsity over that damage is not scored and
    ends its configuration's sweep. The factors a method's masks do not depend on (its
    [`search`][persona_interp.masks.registry.MethodSpec.search]) stay at ``norm`` and ``relu``.

    Examples:
        >>> space = MaskSpace(sparsities=[0.01, 0.1, 0.3], statistics=["norm", "rms"], design="one_at_a_time")
        >>> len(space.configurations("contrastive_wanda"))      # the first value of each factor, then each other alone
        6
    """

    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    modules: list[str | None] = field(default_factory=lambda: [None, "attn", "mlp"])
    layer_ranges: list[str] = field(default_factory=lambda: ["all", "late"])
    token_scopes: list[TokenScope] = field(default_factory=lambda: ["all", "answer"])
    statistics: list[Statistic] = field(default_factory=lambda: ["norm"])
    phis: list[Phi] = field(default_factory=lambda: ["relu"])
    tau: float = 2.0
    design: str = "grid"
    vary: list[str] | None = None
    stop_above: float | None = None

    def configurations(self, method: str) -> list[MaskSetting]:
        """The (modules, layers, token scope, statistic, φ) configurations of ``method`` (a registered name,
        [`method_spec`][persona_interp.masks.registry.method_spec]), without the factors that do not change its masks
        (φ for Wanda and the code's rule, the statistic for the code's rule, the token scope for a method that
        reads no signatures).

        Examples:
            >>> MaskSpace(modules=[None], layer_ranges=["all", "late"], token_scopes=["all"]).configurations("wanda")[1]
            MaskSetting(modules=None, layers='late', token_scope='all', statistic='norm', phi='relu')
        """
        spec = method_spec(method)
        factors: dict[str, Sequence[Any]] = {"modules": self.modules, "layers": self.layer_ranges,
                                             "token_scope": self.token_scopes, "statistic": self.statistics, "phi": self.phis}
        for factor, default in (("statistic", "norm"), ("phi", "relu")):
            if factor not in spec.search:
                factors[factor] = [default]
        if "signatures" not in spec.needs:
            factors["token_scope"] = self.token_scopes[:1]
        if self.vary is not None and method not in self.vary:
            factors = {key: values[:1] for key, values in factors.items()}
        if self.design == "grid":
            combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
        elif self.design == "one_at_a_time":
            first = {key: values[0] for key, values in factors.items()}
            combos = [first] + [{**first, key: value} for key, values in factors.items() for value in values[1:]]
        else:
            raise ValueError(f"design must be 'grid' or 'one_at_a_time', got {self.design!r}")
        return [MaskSetting(**combo) for combo in combos]


@dataclass(frozen=True)
class MaskSetting:
    """One configuration of a [`MaskSpace`][persona_interp.evaluation.tuning.MaskSpace] without its sparsity: the
    modules (``None``: attention and MLP), the layer band, the token scope of the signatures, the per-sample statistic
    and φ.

    Examples:
        >>> setting = MaskSetting(None, "late", "all")
        >>> setting.row(0.1).modules, MaskSetting.of(setting.row(0.1)) == setting
        ('attn+mlp', True)
    """

    modules: str | None
    layers: str
    token_scope: TokenScope
    statistic: Statistic = "norm"
    phi: Phi = "relu"

    def row(self, sparsity: float) -> MaskSearchRow:
        """This setting at ``sparsity`` as a mask search's row, not yet measured (``modules`` ``"attn+mlp"``
        for None)."""
        return MaskSearchRow(sparsity=sparsity, modules=self.modules or "attn+mlp", layers=self.layers,
                             token_scope=self.token_scope, statistic=self.statistic, phi=self.phi)

    @classmethod
    def of(cls, config: MaskConfig) -> MaskSetting:
        """The setting of a mask search's configuration (or row): ``config`` without its sparsity."""
        return cls(None if config.modules == "attn+mlp" else config.modules, config.layers, config.token_scope,
                   config.statistic, config.phi)


@dataclass
class MaskChoice:
    """The chosen configuration, its two masks (seek, reject) and the whole search table."""

    config: MaskConfig
    masks: tuple[Mask, Mask]
    table: list[MaskSearchRow]


def _layers(model: Any, layer_range: str) -> range | None:
    n = get_adapter(model).n_layers
    ranges = {"all": None, "early": range(0, n // 2), "late": range(n // 2, n)}
    if layer_range not in ranges:
        raise ValueError(f"layer range must be one of {sorted(ranges)}, got {layer_range!r}")
    return ranges[layer_range]


def candidate_family(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                     config: MaskSetting, *, tau: float = 2.0, persona: str | None = None,
                     families: FamilyCache | None = None, inputs: MethodInputs | None = None) -> Family:
    """The family of a registered method ([`method_spec`][persona_interp.masks.registry.method_spec]) for one search
    configuration (token scope, statistic, φ; see [`MaskSpace`][persona_interp.evaluation.tuning.MaskSpace]), from
    ``families`` when given (ranked once however often it is asked for), else ranked anew. ``inputs``: what else the
    method needs (a neutral signature, calibration items, neutral texts); its seek, reject and persona are this
    configuration's."""
    spec = method_spec(method)
    seek, reject = (sig.with_statistic(config.statistic) for sig in signatures[config.token_scope])
    options: dict[str, Any] = {}
    if "phi" in spec.search:
        options.update(phi=config.phi, tau=tau if config.phi == "softplus" else 1.0)
    inputs = dataclasses.replace(inputs or MethodInputs(), seek=seek, reject=reject, persona=persona)
    return spec.family(model, inputs, families=families, **options)


def build_candidate(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                    row: MaskConfig, *, tau: float = 2.0, persona: str | None = None,
                    families: FamilyCache | None = None, inputs: MethodInputs | None = None) -> tuple[Mask, Mask]:
    """The (seek, reject) masks of one row of a mask search table (or of its configuration).

    Examples:
        >>> row = MaskSetting("mlp", "late", "all").row(0.1)
        >>> seek, reject = build_candidate(model, "contrastive_wanda", {"all": (sig_seek, sig_reject)}, row)
        >>> sorted(seek.keep)
        ['blocks.1.mlp.down', 'blocks.1.mlp.gate', 'blocks.1.mlp.up']
    """
    setting = MaskSetting.of(row)
    return candidate_family(model, method, signatures, setting, tau=tau, persona=persona, families=families, inputs=inputs).pair(
        row.sparsity, modules=None if setting.modules is None else [setting.modules], layers=_layers(model, row.layers))


def select_masks(model: Any, method: str, signatures: dict[str, tuple[Signature, Signature]],
                 validation: Sequence[PersonaItem], space: MaskSpace, *, reference: DamageReference | None = None,
                 max_kl: float | None = None, persona: str | None = None, batch_size: int = 8,
                 families: FamilyCache | None = None, inputs: MethodInputs | None = None, budgets: Sequence[float] = (),
                 racing: Racing | None = None, progress: bool = False,
                 checkpoint: SearchCheckpoint | None = None) -> MaskChoice:
    """Search ``space`` for the mask pair of ``method`` (a registered name with poles,
    [`persona_interp.masks.registry`][persona_interp.masks.registry]) with the largest seek-minus-reject separation of
    the per-token margin on the validation items. ``signatures`` maps each token scope to the (seek, reject)
    signatures collected with it. With ``reference`` each row records the damage (KL on neutral text, the larger of
    the two masks, measured before the scoring); ``max_kl`` chooses only among configurations within it
    ([`pick_within`][persona_interp.evaluation.search.pick_within]); a sparsity over ``space.stop_above`` is not
    scored (when none is scored, the least damaging is chosen). Each configuration is ranked once for all its
    sparsities (and kept in ``families``, when given, for the picks built afterwards). ``inputs``: what else
    the method needs ([`candidate_family`][persona_interp.evaluation.tuning.candidate_family]). ``budgets``,
    ``racing`` and ``checkpoint``: [`search`][persona_interp.evaluation.search.search].

    Examples:
        >>> space = MaskSpace(sparsities=[0.1], modules=["mlp"], token_scopes=["all"])
        >>> choice = select_masks(model, "contrastive_wanda", {"all": (sig_seek, sig_reject)}, validation, space)
        >>> len(choice.table), choice.config.modules, choice.config.layers in ("all", "late")
        (2, 'mlp', True)
    """
    if not method_spec(method).poles:
        raise ValueError(f"method {method!r} has no poles: a mask search needs a seek and a reject mask")
    missing = [scope for scope in space.token_scopes if scope not in signatures]
    if missing:
        raise ValueError(f"no signatures for token scope(s) {missing}; have {sorted(signatures)}")
    if (max_kl is not None or space.stop_above is not None) and reference is None:
        raise ValueError("max_kl and stop_above need a damage reference")
    configs = space.configurations(method)
    current: dict[int, Family] = {}                  # one configuration's family at a time (its ranks are freed after)

    def family(i: int) -> Family:
        if i not in current:
            current.clear()
            current[i] = candidate_family(model, method, signatures, configs[i], tau=space.tau, persona=persona,
                                          families=families, inputs=inputs)
        return current[i]

    def poles(i: int, rho: float) -> tuple[Pole, ...]:
        modules = configs[i].modules
        pair = family(i).pair(rho, modules=[modules] if modules else None, layers=_layers(model, configs[i].layers))
        return tuple(Pole(partial(ablate, model, mask)) for mask in pair)

    candidates = [Candidate(config.row(rho), partial(poles, i, rho), group=i)
                  for i, config in enumerate(configs) for rho in sorted(space.sparsities)]
    table = search(model, candidates, validation, reference=reference, limit=space.stop_above, budgets=budgets,
                   racing=racing, batch_size=batch_size, progress=progress, desc=f"mask search ({method})",
                   checkpoint=checkpoint)
    current.clear()
    best = pick_within(table, max_kl) if max_kl is not None else fallback(table)
    if best is None:
        raise ValueError(f"no configuration has KL <= {max_kl}; the least damaging has {min(r.kl or 0.0 for r in table):.4f}")
    return MaskChoice(table[best].config(), build_candidate(model, method, signatures, table[best], tau=space.tau,
                                                            persona=persona, families=families, inputs=inputs), table)


@dataclass
class PromptChoice:
    """The chosen phrasing per pole and the search table."""

    seek: str
    reject: str
    table: list[PromptSearchRow]


def select_prompts(model: Any, seek_prompts: Sequence[str], reject_prompts: Sequence[str],
                   validation: Sequence[PersonaItem], *, batch_size: int = 8, progress: bool = False,
                   checkpoint: SearchCheckpoint | None = None) -> PromptChoice:
    """Score every phrasing on the validation items; keep the seek phrasing with the highest mean
    margin and the reject phrasing with the lowest (the pair with the largest separation). Prompts leave the
    weights unchanged, so no damage is measured. ``checkpoint``: [`search`][persona_interp.evaluation.search.search].

    Examples:
        >>> from persona_interp.data.personas import persona_prompts
        >>> choice = select_prompts(model, persona_prompts("power", "seek")[:2], persona_prompts("power", "reject")[:1], validation)
        >>> choice.seek in persona_prompts("power", "seek"), len(choice.table)
        (True, 3)
    """
    if not seek_prompts or not reject_prompts:
        raise ValueError("select_prompts needs at least one phrasing per pole")

    def prompted(prompt: str) -> tuple[Pole]:
        return (Pole(system=prompt),)

    def margin(row: PromptSearchRow) -> float:
        assert row.margin is not None                   # no damage limit: every phrasing is scored
        return row.margin

    candidates = [Candidate(PromptSearchRow(side=side, prompt=prompt), partial(prompted, prompt))
                  for side, prompts in zip(SIDES, (seek_prompts, reject_prompts)) for prompt in prompts]
    table = search(model, candidates, validation, batch_size=batch_size, progress=progress, desc="prompt search",
                   checkpoint=checkpoint)
    seek = max((r for r in table if r.side == "seek"), key=margin)
    reject = min((r for r in table if r.side == "reject"), key=margin)
    return PromptChoice(seek.prompt, reject.prompt, table)


@dataclass
class LoRAChoice:
    """The epoch chosen on the validation split and both poles' LoRAs at that epoch."""

    epochs: int
    seek: LoRA
    reject: LoRA
    table: list[LoRASearchRow]
    runs: dict[str, list[LoRA]] = field(default_factory=dict)    # each pole's LoRA after every epoch (budgeted picks)


def _trained_lora(model: Any, fit: Sequence[PersonaItem], side: Side, config: LoRAConfig,
                  checkpoint: SearchCheckpoint | None, progress: bool) -> list[LoRA]:
    """``side``'s adapter after each epoch: read back from ``checkpoint``'s artefacts when all are there, else
    trained (and kept there)."""
    paths = ([checkpoint.artefacts / f"{checkpoint.name}-{side}-epoch{epoch + 1}.safetensors" for epoch in range(config.epochs)]
             if checkpoint is not None else [])
    return made_or_read(paths, LoRA.load, lambda: train_lora(model, fit, side, config, snapshots=True, progress=progress))


def select_lora(model: Any, fit: Sequence[PersonaItem], validation: Sequence[PersonaItem], config: LoRAConfig | None = None,
                *, reference: DamageReference | None = None, stop_above: float | None = None, budgets: Sequence[float] = (),
                racing: Racing | None = None, batch_size: int = 8, progress: bool = True,
                checkpoint: SearchCheckpoint | None = None) -> LoRAChoice:
    """Train a seek and a reject LoRA on ``fit`` and choose the number of epochs by the largest mean
    seek-minus-reject per-token margin on ``validation`` (the criterion of the steering search). With
    ``reference`` every epoch's row records its damage on neutral text (``kl``, the larger pole's, measured
    first); an epoch over ``stop_above`` (default: the largest of ``budgets``) is not scored and ends the sweep
    (when none is scored, the least damaging is chosen). ``racing``, ``checkpoint``:
    [`search`][persona_interp.evaluation.search.search]; with a checkpoint each epoch's adapters are kept in its
    [`artefacts`][persona_interp.evaluation.checkpoint.SearchCheckpoint.artefacts] and read back, not trained again.

    Examples:
        >>> choice = select_lora(model, fit[:4], validation, LoRAConfig(epochs=2, rank=2), progress=False)
        >>> [row.epochs for row in choice.table], choice.epochs in (1, 2)
        ([1, 2], True)
    """
    config = config or LoRAConfig()
    validation = list(validation)
    if not validation:
        raise ValueError("select_lora needs validation items")
    with stage("LoRA search", total=len(SIDES) + 1, progress=progress) as bar:   # both trainings, then the epochs
        runs: dict[str, list[LoRA]] = {}
        for side in SIDES:
            runs[side] = _trained_lora(model, fit, side, config, checkpoint, progress)
            bar.update()

        def trained(epoch: int) -> tuple[Pole, ...]:
            return tuple(Pole(partial(runs[side][epoch].apply, model)) for side in SIDES)

        candidates = [Candidate(LoRASearchRow(epochs=epoch + 1, seek_train_loss=runs["seek"][epoch].meta["train_loss"][-1],
                                              reject_train_loss=runs["reject"][epoch].meta["train_loss"][-1]),
                                partial(trained, epoch), group="epochs")
                      for epoch in range(config.epochs)]
        table = search(model, candidates, validation, reference=reference, limit=stop_above, budgets=budgets, racing=racing,
                       batch_size=batch_size, progress=progress, desc="LoRA epochs", checkpoint=checkpoint)
        bar.update()
    epoch = table[fallback(table)].epochs - 1
    return LoRAChoice(epoch + 1, runs["seek"][epoch], runs["reject"][epoch], table, runs)
