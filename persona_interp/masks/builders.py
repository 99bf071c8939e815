"""Persona masks: a boolean keep-mask per linear map, ``[out, in]`` like the weight.

Builders (sparsity ρ ∈ [0, 1) is the fraction removed, ranked per output row: each row keeps its
top ``k = ⌊n_in·(1−ρ)⌋`` weights):

* [`wanda_mask`][persona_interp.masks.builders.wanda_mask] — score ``|W_ij|·a_j`` with ``a`` the persona's mean
  per-sample input norm;
* [`contrastive_wanda_masks`][persona_interp.masks.builders.contrastive_wanda_masks] —
  ``z_j = (μ⁺_j − μ⁻_j)/sqrt(σ²⁺_j + σ²⁻_j + ε)``, scores ``|W|·φ(z)`` and ``|W|·φ(−z)``;
* [`contrastive_sparse_masks`][persona_interp.masks.builders.contrastive_sparse_masks] — the paper text's disjoint
  rule, or its code's sequential rule;
* [`mask_family`][persona_interp.masks.builders.mask_family] — one method's rankings, from which a sweep takes every
  sparsity, module and layer set;
* [`random_mask`][persona_interp.masks.builders.random_mask] and
  [`magnitude_mask`][persona_interp.masks.builders.magnitude_mask] — controls at the same per-row sparsity.

Examples:
    >>> seek, reject = contrastive_wanda_masks(model, sig_seek, sig_reject, sparsity=0.3)
    >>> 0 < fraction_differ(seek, reject) <= 0.6              # at most 2ρ (relu_differ_range)
    True
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from persona_interp.data.personas import SIDES
from persona_interp.masks.mask import Mask
from persona_interp.model.adapter import LinearMap, get_adapter
from persona_interp.signatures import Signature


# ---------------------------------------------------------------------- ranking
def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be in [0, 1) (fraction of weights removed), got {sparsity!r}")


def row_ranks(primary: Float[Tensor, "out in"], secondary: Float[Tensor, "out in"] | None = None) -> Int[Tensor, "out in"]:
    """Each entry's position in its row sorted from highest to lowest ``primary`` (0 = highest). Ties in
    ``primary`` are broken by ``secondary`` (higher first), then by the lower column index, so the ranks are
    deterministic. Keeping ``rank < k`` keeps a row's top ``k``.

    Examples:
        >>> row_ranks(torch.tensor([[3., 1., 2., 0.]]))
        tensor([[0, 2, 1, 3]], dtype=torch.int16)
    """
    n_out, n_in = primary.shape
    device = primary.device                                          # ranked where the weight lives
    order = torch.arange(n_in, device=device).expand(n_out, n_in)
    if secondary is not None:
        order = torch.argsort(secondary.to(device), dim=1, descending=True, stable=True)
    top = order.gather(1, torch.argsort(primary.gather(1, order), dim=1, descending=True, stable=True))
    ranks = torch.empty(n_out, n_in, dtype=torch.int32 if n_in > 32767 else torch.int16, device=device)
    return ranks.scatter_(1, top, torch.arange(n_in, dtype=ranks.dtype, device=device).expand(n_out, n_in))


def kept_count(n_in: int, sparsity: float) -> int:
    """``⌊n_in·(1−ρ)⌋``: how many weights a row keeps."""
    check_sparsity(sparsity)
    return math.floor(n_in * (1 - sparsity))


def keep_top_per_row(primary: Float[Tensor, "out in"], sparsity: float,
                     secondary: Float[Tensor, "out in"] | None = None) -> Bool[Tensor, "out in"]:
    """Keep the ``⌊n_in·(1−ρ)⌋`` highest entries of each row (ties as in
    [`row_ranks`][persona_interp.masks.builders.row_ranks]).

    Examples:
        >>> keep_top_per_row(torch.tensor([[3., 1., 2., 0.]]), 0.5)
        tensor([[ True, False,  True, False]])
    """
    return row_ranks(primary, secondary) < kept_count(primary.shape[1], sparsity)


MIN_SAMPLES = 2          # per pole: with one sample σ² is 0 and z is a difference divided by sqrt(ε)
FEW_SAMPLES = 16         # per pole: below this, z is noisy (a warning says so)


def check_pole(signature: Signature, side: str) -> None:
    """Refuse a signature passed as the ``side`` pole while it records the other side (seek and reject passed
    the wrong way round would build each pole's mask from the other's answers). A signature saved without a
    side (older files, or collected from plain pairs under no side) is accepted.

    Examples:
        >>> check_pole(sig_reject, "seek")
        Traceback (most recent call last):
        ValueError: the signature passed as the seek pole records side 'reject' ...
    """
    recorded = signature.meta.get("side")
    if recorded is not None and recorded != side:
        raise ValueError(f"the signature passed as the {side} pole records side {recorded!r} "
                         f"(dataset {signature.meta.get('dataset')!r}): seek and reject swapped? pass each pole's own signature")


def check_contrast(seek: Signature, reject: Signature, eps: float) -> None:
    """Refuse statistics that would give inf/NaN or meaningless z: ε ≤ 0, fewer than ``MIN_SAMPLES`` per pole,
    or two identical signatures (the same answers collected twice); warn below ``FEW_SAMPLES``."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps (added to the pooled variance) must be a positive number, got {eps!r}")
    for sig in (seek, reject):
        if sig.n_samples < MIN_SAMPLES:
            raise ValueError(f"the {sig.meta.get('side')} signature of {sig.meta.get('dataset')!r} has {sig.n_samples} "
                             f"sample(s); contrastive statistics need at least {MIN_SAMPLES} per pole (their variance is 0)")
    if min(seek.n_samples, reject.n_samples) < FEW_SAMPLES:
        warnings.warn(f"contrastive statistics from {seek.n_samples} seek and {reject.n_samples} reject samples: "
                      f"z is noisy below {FEW_SAMPLES} per pole", stacklevel=2)
    if seek.sums.keys() == reject.sums.keys() and all(
            torch.equal(seek.sums[site]["norm_sum"], reject.sums[site]["norm_sum"]) for site in seek.sums):
        raise ValueError("the seek and reject signatures are identical (the same answers collected twice?); "
                         "collect each pole from its own answers")


def contrast(seek: Signature, reject: Signature, map_name: str, eps: float = 1e-8) -> Float[Tensor, " n_in"]:
    """``z_j = (μ⁺_j − μ⁻_j) / sqrt(σ²⁺_j + σ²⁻_j + ε)`` over the signatures' per-sample statistic (the
    input norm, or its RMS: [`Signature.statistic`][persona_interp.signatures.Signature.statistic]; float64, CPU)."""
    if seek.statistic != reject.statistic:
        raise ValueError(f"the two signatures use different statistics ({seek.statistic} vs {reject.statistic})")
    diff = seek.sample_mean(map_name) - reject.sample_mean(map_name)
    return diff / torch.sqrt(seek.sample_var(map_name) + reject.sample_var(map_name) + eps)


def token_contrast(seek: Signature, reject: Signature, map_name: str, eps: float = 1e-8) -> Float[Tensor, " n_in"]:
    """The paper code's Contrastive-Sparse statistic: ``|μ⁺_j − μ⁻_j| / sqrt(σ²⁺_j + σ²⁻_j + ε)`` over the
    signed per-token activations (per-token mean and variance over all covered tokens, not per sample)."""
    diff = seek.token_mean(map_name) - reject.token_mean(map_name)
    return diff.abs() / torch.sqrt(seek.token_var(map_name) + reject.token_var(map_name) + eps)


RANKINGS = ("wanda", "contrastive_wanda", "contrastive_sparse")    # what mask_family ranks by
Phi = Literal["relu", "softplus"]
PHIS: tuple[Phi, ...] = ("relu", "softplus")    # φ of Contrastive-Wanda scores |W|·φ(±z)
RULES = ("disjoint", "paper_code")          # Contrastive-Sparse: the paper's text, the paper's code


def check_phi(phi: object) -> None:
    """A ValueError listing [`PHIS`][persona_interp.masks.builders.PHIS] unless ``phi`` is one of them."""
    if phi not in PHIS:
        raise ValueError(f"phi must be one of {list(PHIS)}, got {phi!r}")


def phi_fn(phi: Phi, tau: float) -> Callable[[Tensor], Tensor]:
    """φ as a function (softplus at temperature ``tau``)."""
    check_phi(phi)
    if phi == "relu":
        return torch.relu
    if tau <= 0:
        raise ValueError(f"softplus temperature tau must be positive, got {tau}")
    return lambda z: F.softplus(z / tau)


def selected_maps(model: Any, modules: Iterable[str] | None, layers: Iterable[int] | None,
              signatures: Iterable[Signature] = ()) -> list[LinearMap]:
    adapter = get_adapter(model)
    for sig in signatures:
        sig.check_model(adapter)
    maps = adapter.select_maps(list(modules) if modules is not None else None, list(layers) if layers is not None else None)
    if not maps:
        raise ValueError(f"no linear maps match modules={modules} layers={layers}")
    return maps


def mask_meta(model: Any, method: str, sparsity: float, maps: list[LinearMap], modules: Any, layers: Any, **extra: Any) -> dict:
    return {"method": method, "sparsity": sparsity, "fingerprint": get_adapter(model).fingerprint,
            "modules": list(modules) if modules is not None else None,
            "layers": list(layers) if layers is not None else None, "n_maps": len(maps), **extra}


def abs_weight(model: Any, name: str) -> Float[Tensor, "out in"]:
    """``|W|`` of one map in float64, on the weight's device."""
    return get_adapter(model).weight(name).abs().double()


def _by_channel(w: Float[Tensor, "out in"], channel: Float[Tensor, " in"]) -> Float[Tensor, "out in"]:
    """``w`` scaled per input channel (a signature statistic, moved to ``w``'s device)."""
    return w * channel.to(device=w.device, dtype=w.dtype)[None, :]


# ---------------------------------------------------------------------- builders
Ranker = Callable[[Any, str], "tuple[Tensor, Tensor]"]   # (model, map name) -> (seek ranks, reject ranks)


@dataclass
class MaskFamily:
    """One method's per-row rankings of every covered weight, for both poles: the masks at any sparsity and on
    any subset of its maps come from the same ranking (``rank < ⌊n_in·(1−ρ)⌋``), so a sweep over sparsity,
    modules and layers ranks each map once (``cache=True`` keeps the ranks: 2 bytes per weight and pole).

    Examples:
        >>> family = mask_family(model, "contrastive_wanda", sig_seek, sig_reject)
        >>> seek, reject = family.pair(0.1, modules=["mlp"])
        >>> round(seek.sparsity(), 3), seek.meta["side"]
        (0.118, 'seek')
    """

    model: Any
    method: str
    maps: list[LinearMap]
    ranker: Ranker
    meta: dict[str, Any]
    sequential: bool = False             # the reject pole takes the next k after the seek pole's (paper code)
    cache: bool = False
    _ranks: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def ranks(self, name: str) -> tuple[Tensor, Tensor]:
        if name in self._ranks:
            return self._ranks[name]
        ranks = self.ranker(self.model, name)
        if self.cache:
            self._ranks[name] = ranks
        return ranks

    def pair(self, sparsity: float, *, modules: Iterable[str] | None = None,
             layers: Iterable[int] | None = None) -> tuple[Mask, Mask]:
        """The (seek, reject) masks at ``sparsity`` on the family's maps that match ``modules`` and ``layers``."""
        check_sparsity(sparsity)
        wanted = {m.name for m in get_adapter(self.model).select_maps(
            list(modules) if modules is not None else None, list(layers) if layers is not None else None)}
        maps = [m for m in self.maps if m.name in wanted]
        if not maps:
            raise ValueError(f"no linear maps of this {self.method} mask family match modules={modules} layers={layers}")
        keep: tuple[dict, dict] = ({}, {})
        for m in maps:
            seek_rank, reject_rank = self.ranks(m.name)
            k = kept_count(m.n_in, sparsity)
            keep[0][m.name] = seek_rank < k
            keep[1][m.name] = _next_k(seek_rank, k) if self.sequential else reject_rank < k
        seek, reject = (Mask(kept, mask_meta(self.model, self.method, sparsity, maps, modules, layers, side=side, **self.meta))
                        for side, kept in zip(SIDES, keep))
        return seek, reject


def _next_k(rank: Int[Tensor, "out in"], k: int) -> Bool[Tensor, "out in"]:
    """The top ``k`` of a row once its first ``k`` are set to −∞ (the paper code's reject mask): ranks
    ``k … 2k−1``, and when ``2k > n_in`` the lowest-index ``2k − n_in`` of the first ``k`` as well."""
    n_in = rank.shape[1]
    rank = rank.long()
    nxt = (rank >= k) & (rank < 2 * k)
    if 2 * k > n_in:
        first = rank < k
        nxt |= first & (first.cumsum(1) <= 2 * k - n_in)
    return nxt


def mask_family(model: Any, method: str, seek: Signature, reject: Signature | None = None, *,
                phi: Phi = "relu", tau: float = 1.0, eps: float = 1e-8, rule: str = "disjoint",
                modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                persona: str | None = None, cache: bool = False) -> MaskFamily:
    """The ranking behind one method's masks (``method`` one of [`RANKINGS`][persona_interp.masks.builders.RANKINGS];
    the named methods built from them are in the method registry,
    [`method_names`][persona_interp.masks.registry.method_names]): ``wanda`` ranks ``|W|·a`` of each pole's own
    signature; ``contrastive_wanda`` ``|W|·φ(±z)``; ``contrastive_sparse`` by ``rule`` (see
    [`contrastive_sparse_masks`][persona_interp.masks.builders.contrastive_sparse_masks]).

    Examples:
        >>> family = mask_family(model, "wanda", sig_seek, sig_reject, cache=True)
        >>> masks = {rho: family.pair(rho) for rho in (0.01, 0.1, 0.3)}
        >>> fraction_differ(masks[0.1][0] & masks[0.3][0], masks[0.3][0])     # nested: ρ = 0.3 removes what 0.1 does
        0.0
    """
    if method not in RANKINGS:
        raise ValueError(f"unknown mask ranking {method!r}: use one of {RANKINGS}")
    check_phi(phi)
    sigs = [seek] if reject is None else [seek, reject]
    if reject is None and method != "wanda":
        raise ValueError(f"{method} needs a seek and a reject signature")
    if reject is not None:
        check_pole(seek, "seek")
        check_pole(reject, "reject")
    maps = selected_maps(model, modules, layers, sigs)
    extra: dict[str, Any] = {"persona": persona or seek.meta.get("dataset"), "statistic": seek.statistic}
    if method == "wanda":
        def wanda_ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
            ranks = [row_ranks(_by_channel(abs_weight(model, name), sig.sample_mean(name))) for sig in sigs]
            return ranks[0], ranks[-1]
        return MaskFamily(model, method, maps, wanda_ranker, extra, cache=cache)
    assert reject is not None   # only wanda takes one signature (checked above)
    check_contrast(seek, reject, eps)
    if method == "contrastive_sparse" and rule == "paper_code":
        def paper_code_ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
            ranks = row_ranks(_by_channel(abs_weight(model, name), token_contrast(seek, reject, name, eps)))
            return ranks, ranks
        return MaskFamily(model, method, maps, paper_code_ranker, {**extra, "statistic": "token", "rule": rule, "eps": eps},
                          sequential=True, cache=cache)
    if method == "contrastive_sparse" and rule != "disjoint":
        raise ValueError(f"contrastive_sparse rule must be one of {RULES} (the paper's text, its code), got {rule!r}")
    act = phi_fn(phi, tau)

    def ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
        w, z = abs_weight(model, name), contrast(seek, reject, name, eps)
        score = (_by_channel(w, act(z)), _by_channel(w, act(-z)))
        plain = (_by_channel(w, seek.sample_mean(name)), _by_channel(w, reject.sample_mean(name)))
        if method == "contrastive_wanda":
            return row_ranks(score[0], plain[0]), row_ranks(score[1], plain[1])
        s_seek, s_reject = row_normalise(score[0]), row_normalise(score[1])
        p_seek, p_reject = row_normalise(plain[0]), row_normalise(plain[1])
        to_seek = (s_seek > s_reject) | ((s_seek == s_reject) & (p_seek >= p_reject))
        sentinel = w.shape[1]                                        # never < k: the other pole's weights
        return (row_ranks(torch.where(to_seek, s_seek, -1.0), p_seek).masked_fill(~to_seek, sentinel),
                row_ranks(torch.where(~to_seek, s_reject, -1.0), p_reject).masked_fill(to_seek, sentinel))

    if method == "contrastive_sparse":
        extra["rule"] = rule
    return MaskFamily(model, method, maps, ranker, {**extra, "phi": phi, "tau": tau, "eps": eps}, cache=cache)


@dataclass
class FamilyCache:
    """Ranked mask families reused within one study: the same method, options and signatures (same sums and
    statistic) rank each map once however many tables ask for them (paper rows, searches, their picks,
    diagnostics). What it keeps is bounded by ``max_bytes`` of tensors (least recently used dropped first, never the
    entry just asked for): a family holds 2 bytes per covered weight and pole once ranked (424 MB for SmolLM2-135M),
    gradient scores 16 bytes per weight; a dropped family is ranked again if asked for again.

    Examples:
        >>> families = FamilyCache(model)
        >>> seek, reject = families.get(sig_seek, sig_reject, method="contrastive_wanda").pair(0.3)      # ranked here
        >>> families.get(sig_seek, sig_reject, method="contrastive_wanda") is families.get(sig_seek, sig_reject, method="contrastive_wanda")
        True
    """

    model: Any
    max_bytes: int = 3 * 2**30
    _families: dict[tuple, tuple[Any, tuple]] = field(default_factory=dict, repr=False)

    def get(self, seek: Signature, reject: Signature, **options: Any) -> MaskFamily:
        """[`mask_family`][persona_interp.masks.builders.mask_family] with these signatures and options (``method=…``;
        for a registered method name pass ``**method_spec(name).fixed``,
        [`method_spec`][persona_interp.masks.registry.method_spec]), ranked once and kept (``cache=True``)."""
        bound = inspect.signature(mask_family).bind(self.model, seek=seek, reject=reject, **options)
        bound.apply_defaults()
        chosen = {k: v for k, v in bound.arguments.items() if k not in ("model", "seek", "reject", "cache")}
        key = (id(seek.sums), seek.statistic, id(reject.sums), reject.statistic, _options_key(chosen))
        return self.keep(key, lambda: mask_family(self.model, seek=seek, reject=reject, cache=True, **options), seek, reject)

    def keep(self, key: tuple, make: Callable[[], Any], *inputs: Any) -> Any:
        """What ``make()`` gives (a family of another kind, or what one is ranked from, e.g. gradient scores), made
        once per ``key`` and kept like [`get`][persona_interp.masks.builders.FamilyCache.get]'s; ``inputs``: the
        objects whose ``id`` is in ``key``, kept alive with it (so an id is never reused while its entry is kept).

        Examples:
            >>> from persona_interp.masks.damage_aware import gradient_family
            >>> families = FamilyCache(model)
            >>> family = families.keep(("gradient", id(fit), id(texts)), lambda: gradient_family(model, fit, texts), fit, texts)
            >>> families.keep(("gradient", id(fit), id(texts)), lambda: None) is family        # made once
            True
        """
        if key in self._families:
            self._families[key] = self._families.pop(key)                       # most recently used last
        else:
            self._families[key] = (make(), inputs)
        while len(self._families) > 1 and self.nbytes > self.max_bytes:      # ranks fill in as families are used
            del self._families[next(iter(self._families))]
        return self._families[key][0]

    @property
    def nbytes(self) -> int:
        """The bytes of the tensors its entries hold now ([`held_bytes`][persona_interp.masks.builders.held_bytes])."""
        return held_bytes([value for value, _ in self._families.values()])


def held_bytes(value: Any, seen: set[int] | None = None) -> int:
    """The bytes of the tensors ``value`` holds, each counted once: through dataclass fields (a ``model`` field
    excepted: not the cache's), dicts, lists and tuples.

    Examples:
        >>> held_bytes({"a": torch.zeros(4), "b": [torch.zeros(2, dtype=torch.int16)]})
        20
    """
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(held_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value) if f.name != "model")
    return 0


def _options_key(options: dict[str, Any]) -> tuple:
    """A hashable key of keyword options (tuples and ranges as lists)."""
    return tuple(sorted((k, repr(list(v) if isinstance(v, (tuple, range)) else v)) for k, v in options.items()))


def wanda_mask(model: Any, signature: Signature, sparsity: float, *, modules: Iterable[str] | None = None,
               layers: Iterable[int] | None = None, persona: str | None = None) -> Mask:
    """Wanda persona mask: keep the top ``(1−ρ)`` of ``|W_ij|·a_j`` per output row (``a``: the signature's
    per-sample statistic, [`Signature.statistic`][persona_interp.signatures.Signature.statistic]).

    Examples:
        >>> mask = wanda_mask(model, sig_seek, 0.3, modules=["mlp"])
    """
    check_sparsity(sparsity)
    mask = mask_family(model, "wanda", signature, modules=modules, layers=layers, persona=persona).pair(
        sparsity, modules=modules, layers=layers)[0]
    mask.meta["side"] = signature.meta.get("side")
    return mask


def contrastive_wanda_masks(model: Any, seek: Signature, reject: Signature, sparsity: float, *,
                            phi: Phi = "relu", tau: float = 1.0, eps: float = 1e-8,
                            modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                            persona: str | None = None) -> tuple[Mask, Mask]:
    """Contrastive-Wanda: scores ``|W|·φ(z)`` (seek) and ``|W|·φ(−z)`` (reject), top ``(1−ρ)`` per row.

    Under φ = ReLU every channel with ``z ≤ 0`` scores 0 for the seek side, so many scores tie at
    zero; ties are broken by the plain Wanda score of the same side (``|W|·μ⁺`` for seek, ``|W|·μ⁻``
    for reject), then by column index. So each pole removes ρ of a row among the channels whose z
    points to the other pole: when the share p of channels with z > 0 lies in [ρ, 1−ρ] the two removed
    sets are disjoint and the masks differ in exactly 2ρ of their entries
    ([`relu_differ_range`][persona_interp.masks.builders.relu_differ_range]).

    Examples:
        >>> seek, reject = contrastive_wanda_masks(model, sig_seek, sig_reject, 0.3, modules=["mlp"], layers=[1])
        >>> sorted(seek.keep), seek.meta["method"]
        (['blocks.1.mlp.down', 'blocks.1.mlp.gate', 'blocks.1.mlp.up'], 'contrastive_wanda')
    """
    check_sparsity(sparsity)
    return mask_family(model, "contrastive_wanda", seek, reject, phi=phi, tau=tau, eps=eps, modules=modules,
                       layers=layers, persona=persona).pair(sparsity, modules=modules, layers=layers)


def relu_differ_range(sparsity: float, positive_share: float, zero_share: float = 0.0) -> tuple[float, float]:
    """The fraction of entries in which two ReLU Contrastive-Wanda masks of a map differ, by construction
    (p: the map's share of input channels with z > 0, no z exactly 0). Each pole removes ρ of every row, so they
    differ in at most 2ρ; when ``ρ ≤ p ≤ 1−ρ`` each removes only the other pole's channels, the removals are
    disjoint and they differ in exactly 2ρ; otherwise in at least ``2·min(p, 1−p)``.

    ``zero_share`` (q): the share of entries whose weight is exactly 0, counted per row up to the ρ of it that a
    row removes ([`removed_zero_share`][persona_interp.masks.builders.removed_zero_share]). Such a weight scores 0
    for both poles and 0 on the plain Wanda score that breaks ties, so both masks remove it: the range becomes
    ``[max(0, low − 2q), high − 2q]`` (exactly ``2ρ − 2q`` when ``ρ ≤ p ≤ 1−ρ``).

    Examples:
        >>> relu_differ_range(0.3, 0.5), relu_differ_range(0.3, 0.9)
        ((0.6, 0.6), (0.2, 0.6))
        >>> [round(x, 6) for x in relu_differ_range(0.3, 0.5, zero_share=0.001)]
        [0.598, 0.598]
    """
    check_sparsity(sparsity)
    if not 0 <= zero_share <= sparsity:
        raise ValueError(f"zero_share must lie in [0, sparsity={sparsity}] (a row removes at most ρ), got {zero_share}")
    if sparsity <= positive_share <= 1 - sparsity:
        low, high = 2 * sparsity, 2 * sparsity
    else:
        low, high = 2 * min(positive_share, 1 - positive_share), 2 * sparsity
    return max(0.0, low - 2 * zero_share), high - 2 * zero_share


def removed_zero_share(weight: Float[Tensor, "out in"], sparsity: float) -> float:
    """The share of a map's entries that are exactly 0 and removed by every ReLU Contrastive-Wanda mask at
    ``sparsity``: per row, its zero weights up to the ``n_in − ⌊n_in·(1−ρ)⌋`` it removes
    (``zero_share`` of [`relu_differ_range`][persona_interp.masks.builders.relu_differ_range]).

    Examples:
        >>> removed_zero_share(torch.tensor([[0., 0., 0., 1.], [1., 2., 3., 0.]]), 0.5)   # rows: 2 of 3 zeros, 1
        0.375
    """
    n_out, n_in = weight.shape
    removed = n_in - kept_count(n_in, sparsity)
    zeros = (weight == 0).sum(1).clamp_max(removed)
    return float(zeros.sum()) / (n_out * n_in)


def row_normalise(score: Tensor) -> Tensor:
    return score / score.sum(1, keepdim=True).clamp_min(torch.finfo(score.dtype).tiny)


def contrastive_sparse_masks(model: Any, seek: Signature, reject: Signature, sparsity: float, *,
                             phi: Phi = "relu", tau: float = 1.0, eps: float = 1e-8, rule: str = "disjoint",
                             modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                             persona: str | None = None) -> tuple[Mask, Mask]:
    """Contrastive-Sparse, by one of two rules (recorded in ``meta["rule"]``):

    * ``"disjoint"`` (the rule stated in the paper's text, arXiv 2602.07164): both sides' contrastive scores
      ``|W|·φ(±z)`` are normalised by their row sums; every weight goes to the side whose normalised score is
      higher (ties: the higher row-normalised plain Wanda score, then seek). Each side then keeps, per row, its
      top ``⌊n_in·(1−ρ)⌋`` among the weights it was given (all of them if fewer), so the two keep-masks never
      share a weight and the actual sparsity is at least ρ. Under ReLU a pole keeps whole input channels of its
      own sign, which removes far more than ρ of some rows (very damaging).
    * ``"paper_code"`` (what the paper's public ``contra.py`` computes): another statistic, the signed
      per-token activation's ``|μ⁺ − μ⁻| / sqrt(σ²⁺ + σ²⁻ + ε)`` (per-token mean and variance, not the
      per-sample norm; ``phi`` and ``tau`` unused), scores ``|W|·that``; the seek mask keeps each row's top k,
      the reject mask the top k of the rest (``−∞`` on seek's), which wraps into seek's weights when
      ``2k > n_in`` (ρ < 0.5): sequential and not disjoint; neither pole is tied to a sign of the contrast.

    Examples:
        >>> seek, reject = contrastive_sparse_masks(model, sig_seek, sig_reject, 0.3, rule="paper_code")
    """
    check_sparsity(sparsity)
    return mask_family(model, "contrastive_sparse", seek, reject, phi=phi, tau=tau, eps=eps, rule=rule,
                       modules=modules, layers=layers, persona=persona).pair(sparsity, modules=modules, layers=layers)


def random_mask(model: Any, sparsity: float, *, seed: int = 0, modules: Iterable[str] | None = None,
                layers: Iterable[int] | None = None, like: Mask | None = None, per_row: bool = True) -> Mask:
    """A seeded random control: each row keeps ``⌊n_in·(1−ρ)⌋`` uniformly chosen weights; with ``per_row=False``
    each weight is removed independently with probability ρ instead (no floor of one weight per row below
    ρ = 1/n_in, so damage is continuous in ρ; one seed gives nested masks as ρ grows).

    With ``like``, it covers the same maps and matches that mask's removed count row by row.

    Examples:
        >>> round(random_mask(model, 0.01, modules=["mlp"], per_row=False).sparsity(), 2)     # each weight with p = 0.01
        0.01
    """
    check_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    adapter = get_adapter(model)
    if like is not None:
        like.check_model(adapter)
        keep = {}
        for name, ref in like.keep.items():
            order = torch.rand(ref.shape, generator=generator).argsort(1)          # a random order per row
            first = torch.arange(ref.shape[1]).expand_as(order) < ref.sum(1, keepdim=True)
            keep[name] = torch.zeros_like(ref).scatter_(1, order, first)          # its first ``kept`` entries
        return Mask(keep, {**mask_meta(model, "random", like.sparsity(), [adapter.map_by_name[n] for n in keep],
                                   like.meta.get("modules"), like.meta.get("layers")), "seed": seed, "like": like.meta.get("method")})
    maps = selected_maps(model, modules, layers)
    scores = {m.name: torch.rand(m.n_out, m.n_in, generator=generator) for m in maps}
    keep = {name: keep_top_per_row(score, sparsity) if per_row else score >= sparsity for name, score in scores.items()}
    return Mask(keep, {**mask_meta(model, "random", sparsity, maps, modules, layers), "seed": seed,
                       **({} if per_row else {"per_row": False})})


def magnitude_mask(model: Any, sparsity: float, *, modules: Iterable[str] | None = None,
                   layers: Iterable[int] | None = None) -> Mask:
    """Plain magnitude pruning (``|W|`` per row): the persona-free reference for localisation.

    Examples:
        >>> magnitude_mask(model, 0.5, modules=["down"]).sparsity()       # ⌊n_in·(1−ρ)⌋ kept in every row
        0.5
    """
    check_sparsity(sparsity)
    maps = selected_maps(model, modules, layers)
    return Mask({m.name: keep_top_per_row(abs_weight(model, m.name), sparsity) for m in maps},
                mask_meta(model, "magnitude", sparsity, maps, modules, layers))
