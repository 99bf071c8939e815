"""The one registry of weight-level methods: each named method's builder, options, inputs and output.

A [`MethodSpec`][persona_interp.masks.registry.MethodSpec] says what a method needs (signatures of the two poles, a
neutral signature, calibration items, neutral texts), what it gives (a boolean
[`Mask`][persona_interp.masks.mask.Mask], gains in [0, 1] or a dense weight edit), whether it gives one intervention
per pole and whether it contrasts the poles. The command line's ``build-mask`` choices and inputs, the mask search
([`MaskSpace`][persona_interp.evaluation.tuning.MaskSpace]), the main job's mask rows and the diagnostics' overlap
variants all read it; no other list of method names exists.

It lives in ``masks/`` because every method in it changes the model's ``[out, in]`` linear maps (what a mask,
gains or an edit keeps); steering vectors, prompts and LoRA are regimes with their own modules.

Adding a method (e.g. in a new module ``masks/my_method.py``)::

    def my_builder(model, inputs: MethodInputs, *, families=None, modules=None, layers=None, **options) -> Family:
        ...                                    # an object whose .pair(dose, modules=, layers=) gives (seek, reject)
    register(MethodSpec("my_method", my_builder, options={"steps": 100}, needs=frozenset({"signatures"})))

and, for a method of the package, add its name to [`MethodName`][persona_interp.masks.registry.MethodName] (the type
checker's list; the registry is the run-time truth) and import the module in ``persona_interp/masks/__init__.py`` so
it registers on import (as [`persona_interp.masks.damage_aware`][persona_interp.masks.damage_aware] registers the
damage-aware methods, which need a neutral signature, calibration items or neutral texts beside the poles'
signatures).

Examples:
    >>> method_spec("contrastive_sparse_code").fixed
    {'method': 'contrastive_sparse', 'rule': 'paper_code'}
    >>> [spec.name for spec in methods(poles=True, available={"signatures"})]
    ['wanda', 'contrastive_wanda', 'contrastive_sparse', 'contrastive_sparse_code']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence, runtime_checkable

from persona_interp.data.personas import SIDES, PersonaItem
from persona_interp.masks.builders import FamilyCache, magnitude_mask, mask_family, random_mask
from persona_interp.signatures import Signature

MethodName = Literal["wanda", "contrastive_wanda", "contrastive_sparse", "contrastive_sparse_code", "random", "magnitude",
                     "retain_ratio", "set_difference", "snip_set_difference", "gradient", "learned_gates"]
Need = Literal["signatures", "neutral_signatures", "calibration_items", "neutral_texts"]
Gives = Literal["mask", "gains", "dense_edit"]
SearchFactor = Literal["statistic", "phi"]
NEEDS: tuple[Need, ...] = ("signatures", "neutral_signatures", "calibration_items", "neutral_texts")
GIVES: tuple[Gives, ...] = ("mask", "gains", "dense_edit")


@dataclass(frozen=True)
class MethodInputs:
    """What a builder may read: the poles' signatures, a neutral-text signature, calibration items, neutral
    texts, and the persona's name (recorded in the masks' metadata). A method reads only what it ``needs``.
    ``store``: a folder where a method that trains keeps what it trained, read back instead of training again
    (the caller names the folder by everything the training depends on; the main job: its search checkpoint's)."""

    seek: Signature | None = None
    reject: Signature | None = None
    neutral: Signature | None = None
    items: Sequence[PersonaItem] | None = None
    neutral_texts: Sequence[str] | None = None
    persona: str | None = None
    store: Path | None = None


@runtime_checkable
class Family(Protocol):
    """What a builder returns: the method's interventions at any dose on any subset of its maps (a
    [`MaskFamily`][persona_interp.masks.builders.MaskFamily] is one). A method with poles gives ``(seek, reject)``,
    one without a 1-tuple."""

    def pair(self, sparsity: float, *, modules: Iterable[str] | None = None,
             layers: Iterable[int] | None = None) -> tuple[Any, ...]: ...


Builder = Callable[..., Family]      # (model, inputs, *, families=None, modules=None, layers=None, **options)


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``builder(model, inputs, *, families, modules, layers, **options)`` returns its
    [`Family`][persona_interp.masks.registry.Family]. ``options`` are the options a caller may set, with their
    defaults; ``fixed`` the [`mask_family`][persona_interp.masks.builders.mask_family] options that define a ranked
    method (empty for others); ``needs`` its inputs; ``gives`` its output; ``poles``: one intervention per pole (else
    one for both); ``contrast``: built from both poles together (so it needs both); ``search``: the mask search's
    optional factors that change its output; ``variants``: the labelled option sets the overlap diagnostics
    compare."""

    name: str
    builder: Builder
    options: dict[str, Any] = field(default_factory=dict)
    needs: frozenset[Need] = frozenset({"signatures"})
    gives: Gives = "mask"
    poles: bool = True
    contrast: bool = True
    fixed: dict[str, Any] = field(default_factory=dict)
    search: tuple[SearchFactor, ...] = ("statistic",)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a method needs a name, got {self.name!r}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"method {self.name!r} needs unknown input(s) {sorted(unknown)}: use {list(NEEDS)}")
        if self.gives not in GIVES:
            raise ValueError(f"method {self.name!r} gives {self.gives!r}: use one of {list(GIVES)}")
        if self.contrast and not self.poles:
            raise ValueError(f"method {self.name!r}: a contrast gives one intervention per pole (poles=True)")

    def family(self, model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None,
               modules: Iterable[str] | None = None, layers: Iterable[int] | None = None, **options: Any) -> Family:
        """The method's family on ``model`` from ``inputs`` (options not given take
        [`options`][persona_interp.masks.registry.MethodSpec]' defaults; an option the method does not take is an
        error naming the ones it takes)."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option(s) {sorted(unknown)}; its options: {sorted(self.options)}")
        self.check_inputs(inputs)
        return self.builder(model, inputs, families=families, modules=modules, layers=layers, **{**self.options, **options})

    def check_inputs(self, inputs: MethodInputs) -> None:
        """Refuse inputs that lack what the method needs, naming it."""
        missing = []
        if "signatures" in self.needs and (inputs.seek is None and inputs.reject is None
                                           or self.contrast and (inputs.seek is None or inputs.reject is None)):
            missing.append("the seek and reject signatures" if self.contrast else "a seek or reject signature")
        missing += [what for need, what, value in (("neutral_signatures", "a neutral signature", inputs.neutral),
                                                    ("calibration_items", "calibration items", inputs.items),
                                                    ("neutral_texts", "neutral texts", inputs.neutral_texts))
                    if need in self.needs and value is None]
        if missing:
            raise ValueError(f"method {self.name!r} needs {', '.join(missing)}")

    def build(self, model: Any, inputs: MethodInputs, dose: float, *, modules: Iterable[str] | None = None,
              layers: Iterable[int] | None = None, **options: Any) -> dict[str, Any]:
        """The method's interventions at ``dose``, keyed by pole (``seek``/``reject``; a method without a
        contrast built from one pole's signature gives that pole only) or by the method's name when it has no
        poles.

        Examples:
            >>> built = method_spec("contrastive_wanda").build(model, MethodInputs(sig_seek, sig_reject), 0.3)
            >>> sorted(built), built["reject"].meta["side"]
            (['reject', 'seek'], 'reject')
        """
        family = self.family(model, inputs, modules=modules, layers=layers, **options)
        built = family.pair(dose, modules=modules, layers=layers)
        if not self.poles:
            return {self.name: built[0]}
        given = [side for side, sig in zip(SIDES, (inputs.seek, inputs.reject)) if sig is not None or "signatures" not in self.needs]
        return {side: intervention for side, intervention in zip(SIDES, built) if side in given}


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry (after the ones before it: order is the order of the report's rows); a name
    already taken is an error unless ``replace``.

    Examples:
        >>> def wanda_poles(model, inputs, *, families=None, modules=None, layers=None):
        ...     return mask_family(model, "wanda", inputs.seek, inputs.reject, modules=modules, layers=layers)
        >>> spec = register(MethodSpec("wanda_poles", wanda_poles, contrast=False))
        >>> sorted(method_spec("wanda_poles").build(model, MethodInputs(seek=sig_seek), 0.3))    # one pole given
        ['seek']
        >>> _ = unregister("wanda_poles")
    """
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"method {spec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> MethodSpec:
    """Remove a method (e.g. one a test registered) and return its spec."""
    method_spec(name)
    return _REGISTRY.pop(name)


def method_names() -> list[str]:
    """Every registered method's name, in registration order."""
    return list(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method; an unknown name is an error that lists the known ones.

    Examples:
        >>> method_spec("wanda").contrast
        False
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}: use one of {method_names()}")
    return _REGISTRY[name]


def methods(*, poles: bool | None = None, gives: Gives | None = None,
            available: Iterable[Need] | None = None) -> list[MethodSpec]:
    """The registered methods with (or without) poles, giving ``gives``, whose needs are all ``available``
    (``None``: any), in registration order.

    Examples:
        >>> [s.name for s in methods(poles=False)]
        ['random', 'magnitude']
    """
    have = None if available is None else set(available)
    return [spec for spec in _REGISTRY.values() if (poles is None or spec.poles == poles)
            and (gives is None or spec.gives == gives) and (have is None or spec.needs <= have)]


# ---------------------------------------------------------------------- today's methods
def _ranked(fixed: dict[str, Any]) -> Builder:
    """The builder of a method ranked by [`mask_family`][persona_interp.masks.builders.mask_family] with ``fixed``
    options: taken from ``families`` when given (ranked once per study), else ranked here (``cache=True``)."""
    def build(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None,
              modules: Iterable[str] | None = None, layers: Iterable[int] | None = None, **options: Any) -> Family:
        seek, reject = inputs.seek, inputs.reject
        if seek is None:                                             # one pole's own signature (per-pole Wanda)
            seek, reject = reject, None
        assert seek is not None   # MethodSpec.check_inputs refused inputs without a signature
        kw = {**fixed, **options, "persona": inputs.persona, "modules": modules, "layers": layers}
        if families is not None and reject is not None:
            return families.get(seek, reject, **kw)
        return mask_family(model, seek=seek, reject=reject, cache=True, **kw)
    return build


@dataclass
class _Control:
    """A persona-free control mask at any sparsity (a 1-tuple, like a family without poles)."""

    make: Callable[..., Any]

    def pair(self, sparsity: float, *, modules: Iterable[str] | None = None,
             layers: Iterable[int] | None = None) -> tuple[Any]:
        return (self.make(sparsity, modules=modules, layers=layers),)


def _random(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None, modules: Any = None,
            layers: Any = None, seed: int = 0) -> Family:
    return _Control(lambda rho, **kw: random_mask(model, rho, seed=seed, **kw))


def _magnitude(model: Any, inputs: MethodInputs, *, families: FamilyCache | None = None, modules: Any = None,
               layers: Any = None) -> Family:
    return _Control(lambda rho, **kw: magnitude_mask(model, rho, **kw))


_CONTRAST_OPTIONS = {"phi": "relu", "tau": 1.0, "eps": 1e-8}
register(MethodSpec("wanda", _ranked({"method": "wanda"}), contrast=False,
                    fixed={"method": "wanda"}, variants={"wanda (per pole)": {}}))
register(MethodSpec("contrastive_wanda", _ranked({"method": "contrastive_wanda"}), options=dict(_CONTRAST_OPTIONS),
                    fixed={"method": "contrastive_wanda"}, search=("statistic", "phi"),
                    variants={"contrastive_wanda relu": {"phi": "relu"},
                              "contrastive_wanda softplus τ=2": {"phi": "softplus", "tau": 2.0}}))
register(MethodSpec("contrastive_sparse", _ranked({"method": "contrastive_sparse"}),
                    options={**_CONTRAST_OPTIONS, "rule": "disjoint"}, fixed={"method": "contrastive_sparse", "rule": "disjoint"},
                    search=("statistic", "phi"), variants={"contrastive_sparse (text: disjoint)": {"rule": "disjoint"}}))
register(MethodSpec("contrastive_sparse_code", _ranked({"method": "contrastive_sparse", "rule": "paper_code"}),
                    options={"eps": 1e-8}, fixed={"method": "contrastive_sparse", "rule": "paper_code"}, search=(),
                    variants={"contrastive_sparse (code: sequential)": {}}))
register(MethodSpec("random", _random, options={"seed": 0}, needs=frozenset(), poles=False, contrast=False, search=()))
register(MethodSpec("magnitude", _magnitude, needs=frozenset(), poles=False, contrast=False, search=()))
