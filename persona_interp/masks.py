"""Persona masks: a boolean keep-mask per linear map, ``[out, in]`` like the weight.

Builders (sparsity ρ ∈ [0, 1) is the fraction removed, ranked per output row: each row keeps its
top ``k = ⌊n_in·(1−ρ)⌋`` weights):

* :func:`wanda_mask` — score ``|W_ij|·a_j`` with ``a`` the persona's mean per-sample input norm;
* :func:`contrastive_wanda_masks` — ``z_j = (μ⁺_j − μ⁻_j)/sqrt(σ²⁺_j + σ²⁻_j + ε)``, scores
  ``|W|·φ(z)`` and ``|W|·φ(−z)``;
* :func:`contrastive_sparse_masks` — disjoint masks from row-normalised contrastive scores;
* :func:`random_mask` and :func:`magnitude_mask` — controls at the same per-row sparsity.

Example:
    >>> seek, reject = contrastive_wanda_masks(model, sig_seek, sig_reject, sparsity=0.3)
    >>> fraction_differ(seek, reject)
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from safetensors.numpy import load_file, save_file
from torch import Tensor

from .adapter import LinearMap, ModelMismatchError, get_adapter
from .signatures import Signature
from .storage import read_header, write_tagged

FORMAT = "persona_interp.mask/1"


@dataclass
class Mask:
    """Keep-masks per linear map (``True`` = weight kept) plus metadata.

    Maps without an entry are left untouched. ``&``, ``|``, ``~`` and ``-`` combine masks
    map by map (a missing map counts as all-kept).

    Example:
        >>> both = seek & reject; only_seek = seek - reject
    """

    keep: dict[str, Bool[Tensor, "out in"]]
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ measures
    def sparsity(self) -> float:
        """Fraction of the covered weights that are removed."""
        total = sum(k.numel() for k in self.keep.values())
        return 1.0 - sum(int(k.sum()) for k in self.keep.values()) / max(total, 1)

    def check_model(self, model: Any) -> None:
        """Raise unless this mask fits ``model``: same fingerprint, every map present with its shape."""
        adapter = get_adapter(model)
        adapter.check_fingerprint(self.meta.get("fingerprint"), f"mask {self.meta.get('method')!r} was built for")
        for name, keep in self.keep.items():
            if name not in adapter.map_by_name:
                raise ModelMismatchError(f"mask has map {name!r}, which the model lacks")
            spec = adapter.map_by_name[name]
            if tuple(keep.shape) != (spec.n_out, spec.n_in):
                raise ModelMismatchError(f"mask for {name} has shape {tuple(keep.shape)}, the weight is {(spec.n_out, spec.n_in)}")

    # ------------------------------------------------------------------ set operations
    def _combine(self, other: "Mask", op: Callable[[Tensor, Tensor], Tensor], symbol: str) -> "Mask":
        if not isinstance(other, Mask):
            return NotImplemented
        for fp in (self.meta.get("fingerprint"), other.meta.get("fingerprint")):
            if fp and fp != (self.meta.get("fingerprint") or fp):
                raise ModelMismatchError("cannot combine masks built for different models")
        keep = {}
        for name in dict.fromkeys([*self.keep, *other.keep]):
            ref = self.keep.get(name, other.keep.get(name))
            a = self.keep.get(name, torch.ones_like(ref))
            b = other.keep.get(name, torch.ones_like(ref)).to(a.device)
            if a.shape != b.shape:
                raise ModelMismatchError(f"masks disagree on the shape of {name}: {tuple(a.shape)} vs {tuple(b.shape)}")
            keep[name] = op(a, b)
        meta = {"method": f"({self.meta.get('method')} {symbol} {other.meta.get('method')})",
                "fingerprint": self.meta.get("fingerprint") or other.meta.get("fingerprint")}
        return Mask(keep, meta)

    def __and__(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_and, "&")

    def __or__(self, other: "Mask") -> "Mask":
        return self._combine(other, torch.logical_or, "|")

    def __sub__(self, other: "Mask") -> "Mask":
        """Kept here and removed there."""
        return self._combine(other, lambda a, b: a & ~b, "-")

    def __invert__(self) -> "Mask":
        return Mask({n: ~k for n, k in self.keep.items()}, {**self.meta, "method": f"~{self.meta.get('method')}"})

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save bit-packed (1 bit per weight) as safetensors with JSON metadata; never overwrites
        unless ``overwrite=True``."""
        arrays = {name: np.packbits(keep.cpu().numpy().reshape(-1)) for name, keep in self.keep.items()}
        shapes = {name: list(keep.shape) for name, keep in self.keep.items()}
        return write_tagged(path, arrays, FORMAT, {"shapes": json.dumps(shapes), "meta": json.dumps(self.meta)}, save_file, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mask":
        """Load a mask saved by :meth:`save` (safetensors: no unpickling)."""
        header = read_header(path, FORMAT, "mask")
        shapes = json.loads(header["shapes"])
        keep = {}
        for name, packed in load_file(str(path)).items():
            if name not in shapes:
                raise ValueError(f"{path}: map {name!r} has packed bits but no shape in the header")
            count = math.prod(shapes[name])
            if packed.size != math.ceil(count / 8):
                raise ValueError(f"{path}: map {name!r} holds {packed.size} bytes of packed bits, its shape "
                                 f"{shapes[name]} needs {math.ceil(count / 8)}: the file is damaged")
            keep[name] = torch.from_numpy(np.unpackbits(packed, count=count).astype(bool)).reshape(shapes[name])
        if set(shapes) - set(keep):
            raise ValueError(f"{path}: the header names maps with no data: {sorted(set(shapes) - set(keep))[:3]}")
        return cls(keep, json.loads(header["meta"]))


# ---------------------------------------------------------------------- ranking
def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be in [0, 1) (fraction of weights removed), got {sparsity!r}")


def keep_top_per_row(primary: Float[Tensor, "out in"], sparsity: float,
                     secondary: Float[Tensor, "out in"] | None = None) -> Bool[Tensor, "out in"]:
    """Keep the ``⌊n_in·(1−ρ)⌋`` highest entries of each row. Ties in ``primary`` are broken by
    ``secondary`` (higher wins), then by the lower column index, so the result is deterministic.

    Example:
        >>> keep_top_per_row(torch.tensor([[3., 1., 2., 0.]]), 0.5)
        tensor([[ True, False,  True, False]])
    """
    check_sparsity(sparsity)
    n_out, n_in = primary.shape
    k = math.floor(n_in * (1 - sparsity))
    device = primary.device                                          # ranked where the weight lives
    if k >= n_in:
        return torch.ones(n_out, n_in, dtype=torch.bool, device=device)
    order = torch.arange(n_in, device=device).expand(n_out, n_in)
    if secondary is not None:
        order = torch.argsort(secondary.to(device), dim=1, descending=True, stable=True)
    ranked = torch.argsort(primary.gather(1, order), dim=1, descending=True, stable=True)
    top = order.gather(1, ranked)[:, :k]
    return torch.zeros(n_out, n_in, dtype=torch.bool, device=device).scatter_(1, top, True)


MIN_SAMPLES = 2          # per pole: with one sample σ² is 0 and z is a difference divided by sqrt(ε)
FEW_SAMPLES = 16         # per pole: below this, z is noisy (a warning says so)


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
                      f"z is noisy below {FEW_SAMPLES} per pole")
    if seek.sums.keys() == reject.sums.keys() and all(
            torch.equal(seek.sums[site]["norm_sum"], reject.sums[site]["norm_sum"]) for site in seek.sums):
        raise ValueError("the seek and reject signatures are identical (the same answers collected twice?); "
                         "collect each pole from its own answers")


def contrast(seek: Signature, reject: Signature, map_name: str, eps: float = 1e-8) -> Float[Tensor, " n_in"]:
    """``z_j = (μ⁺_j − μ⁻_j) / sqrt(σ²⁺_j + σ²⁻_j + ε)`` over the per-sample input norms (float64, CPU)."""
    diff = seek.norm_mean(map_name) - reject.norm_mean(map_name)
    return diff / torch.sqrt(seek.norm_var(map_name) + reject.norm_var(map_name) + eps)


def phi_fn(phi: str, tau: float) -> Callable[[Tensor], Tensor]:
    if phi == "relu":
        return torch.relu
    if phi == "softplus":
        if tau <= 0:
            raise ValueError(f"softplus temperature tau must be positive, got {tau}")
        return lambda z: F.softplus(z / tau)
    raise ValueError(f"phi must be 'relu' or 'softplus', got {phi!r}")


def _selected(model: Any, modules: Iterable[str] | None, layers: Iterable[int] | None,
              signatures: Iterable[Signature] = ()) -> list[LinearMap]:
    adapter = get_adapter(model)
    for sig in signatures:
        sig.check_model(adapter)
    maps = adapter.select_maps(list(modules) if modules is not None else None, list(layers) if layers is not None else None)
    if not maps:
        raise ValueError(f"no linear maps match modules={modules} layers={layers}")
    return maps


def _meta(model: Any, method: str, sparsity: float, maps: list[LinearMap], modules: Any, layers: Any, **extra: Any) -> dict:
    return {"method": method, "sparsity": sparsity, "fingerprint": get_adapter(model).fingerprint,
            "modules": list(modules) if modules is not None else None,
            "layers": list(layers) if layers is not None else None, "n_maps": len(maps), **extra}


def _mask_pair(model: Any, method: str, keep_seek: dict, keep_reject: dict, sparsity: float, maps: list[LinearMap],
               modules: Any, layers: Any, **extra: Any) -> tuple[Mask, Mask]:
    return (Mask(keep_seek, _meta(model, method, sparsity, maps, modules, layers, side="seek", **extra)),
            Mask(keep_reject, _meta(model, method, sparsity, maps, modules, layers, side="reject", **extra)))


def _abs_weight(model: Any, name: str) -> Float[Tensor, "out in"]:
    """``|W|`` of one map in float64, on the weight's device."""
    return get_adapter(model).weight(name).abs().double()


def _by_channel(w: Float[Tensor, "out in"], channel: Float[Tensor, " in"]) -> Float[Tensor, "out in"]:
    """``w`` scaled per input channel (a signature statistic, moved to ``w``'s device)."""
    return w * channel.to(device=w.device, dtype=w.dtype)[None, :]


# ---------------------------------------------------------------------- builders
def wanda_mask(model: Any, signature: Signature, sparsity: float, *, modules: Iterable[str] | None = None,
               layers: Iterable[int] | None = None, persona: str | None = None) -> Mask:
    """Wanda persona mask: keep the top ``(1−ρ)`` of ``|W_ij|·a_j`` per output row.

    Example:
        >>> mask = wanda_mask(model, sig_seek, 0.3, modules=["mlp"])
    """
    check_sparsity(sparsity)
    maps = _selected(model, modules, layers, [signature])
    keep = {m.name: keep_top_per_row(_by_channel(_abs_weight(model, m.name), signature.norm_mean(m.name)), sparsity)
            for m in maps}
    return Mask(keep, _meta(model, "wanda", sparsity, maps, modules, layers,
                            persona=persona or signature.meta.get("dataset"), side=signature.meta.get("side")))


def contrastive_wanda_masks(model: Any, seek: Signature, reject: Signature, sparsity: float, *,
                            phi: str = "relu", tau: float = 1.0, eps: float = 1e-8,
                            modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                            persona: str | None = None) -> tuple[Mask, Mask]:
    """Contrastive-Wanda: scores ``|W|·φ(z)`` (seek) and ``|W|·φ(−z)`` (reject), top ``(1−ρ)`` per row.

    Under φ = ReLU every channel with ``z ≤ 0`` scores 0 for the seek side, so many scores tie at
    zero; ties are broken by the plain Wanda score of the same side (``|W|·μ⁺`` for seek, ``|W|·μ⁻``
    for reject), then by column index.
    """
    def rule(w: Tensor, score_seek: Tensor, score_reject: Tensor, wanda_seek: Tensor, wanda_reject: Tensor):
        return keep_top_per_row(score_seek, sparsity, wanda_seek), keep_top_per_row(score_reject, sparsity, wanda_reject)

    return _contrastive(model, "contrastive_wanda", rule, seek, reject, sparsity, phi, tau, eps, modules, layers, persona)


def _contrastive(model: Any, method: str, rule: Callable, seek: Signature, reject: Signature, sparsity: float,
                 phi: str, tau: float, eps: float, modules: Any, layers: Any, persona: str | None) -> tuple[Mask, Mask]:
    """Shared loop of the contrastive builders: ``rule(|W|, |W|·φ(z), |W|·φ(−z), |W|·μ⁺, |W|·μ⁻)``
    returns the two keep-masks of one map."""
    check_sparsity(sparsity)
    check_contrast(seek, reject, eps)
    maps = _selected(model, modules, layers, [seek, reject])
    act = phi_fn(phi, tau)
    keep_seek, keep_reject = {}, {}
    for m in maps:
        w, z = _abs_weight(model, m.name), contrast(seek, reject, m.name, eps)
        keep_seek[m.name], keep_reject[m.name] = rule(
            w, _by_channel(w, act(z)), _by_channel(w, act(-z)),
            _by_channel(w, seek.norm_mean(m.name)), _by_channel(w, reject.norm_mean(m.name)))
    return _mask_pair(model, method, keep_seek, keep_reject, sparsity, maps, modules, layers,
                      phi=phi, tau=tau, eps=eps, persona=persona or seek.meta.get("dataset"))


def _row_normalise(score: Tensor) -> Tensor:
    return score / score.sum(1, keepdim=True).clamp_min(torch.finfo(score.dtype).tiny)


def contrastive_sparse_masks(model: Any, seek: Signature, reject: Signature, sparsity: float, *,
                             phi: str = "relu", tau: float = 1.0, eps: float = 1e-8,
                             modules: Iterable[str] | None = None, layers: Iterable[int] | None = None,
                             persona: str | None = None) -> tuple[Mask, Mask]:
    """Contrastive-Sparse: two disjoint masks.

    Both sides' contrastive scores ``|W|·φ(±z)`` are normalised by their row sums; every weight goes
    to the side whose normalised score is higher (ties: the higher row-normalised plain Wanda score,
    then seek). Each side then keeps, per row, its top ``⌊n_in·(1−ρ)⌋`` among the weights it was given
    (all of them if it was given fewer), so the two keep-masks never share a weight and the actual
    sparsity is at least ρ. This follows the rule stated in the paper (arXiv 2602.07164); the paper's
    public code does something else (it does not produce disjoint masks).
    """
    def rule(w: Tensor, score_seek: Tensor, score_reject: Tensor, wanda_seek: Tensor, wanda_reject: Tensor):
        s_seek, s_reject = _row_normalise(score_seek), _row_normalise(score_reject)
        p_seek, p_reject = _row_normalise(wanda_seek), _row_normalise(wanda_reject)
        to_seek = (s_seek > s_reject) | ((s_seek == s_reject) & (p_seek >= p_reject))
        return (keep_top_per_row(torch.where(to_seek, s_seek, -1.0), sparsity, p_seek) & to_seek,
                keep_top_per_row(torch.where(~to_seek, s_reject, -1.0), sparsity, p_reject) & ~to_seek)

    return _contrastive(model, "contrastive_sparse", rule, seek, reject, sparsity, phi, tau, eps, modules, layers, persona)


def random_mask(model: Any, sparsity: float, *, seed: int = 0, modules: Iterable[str] | None = None,
                layers: Iterable[int] | None = None, like: Mask | None = None) -> Mask:
    """A seeded random control: each row keeps ``⌊n_in·(1−ρ)⌋`` uniformly chosen weights.

    With ``like``, it covers the same maps and matches that mask's removed count row by row.
    """
    check_sparsity(sparsity)
    generator = torch.Generator().manual_seed(seed)
    adapter = get_adapter(model)
    if like is not None:
        like.check_model(adapter)
        keep = {}
        for name, ref in like.keep.items():
            ranks = torch.rand(ref.shape, generator=generator).argsort(1).argsort(1)
            keep[name] = ranks < ref.sum(1, keepdim=True)
        return Mask(keep, {**_meta(model, "random", like.sparsity(), [adapter.map_by_name[n] for n in keep],
                                   like.meta.get("modules"), like.meta.get("layers")), "seed": seed, "like": like.meta.get("method")})
    maps = _selected(model, modules, layers)
    keep = {m.name: keep_top_per_row(torch.rand(m.n_out, m.n_in, generator=generator), sparsity) for m in maps}
    return Mask(keep, {**_meta(model, "random", sparsity, maps, modules, layers), "seed": seed})


def magnitude_mask(model: Any, sparsity: float, *, modules: Iterable[str] | None = None,
                   layers: Iterable[int] | None = None) -> Mask:
    """Plain magnitude pruning (``|W|`` per row): the persona-free reference for localisation."""
    check_sparsity(sparsity)
    maps = _selected(model, modules, layers)
    return Mask({m.name: keep_top_per_row(_abs_weight(model, m.name), sparsity) for m in maps},
                _meta(model, "magnitude", sparsity, maps, modules, layers))


# ---------------------------------------------------------------------- comparisons
def _group_key(name: str, by: str) -> str:
    _, layer, module, kind = name.split(".")
    return {"map": name, "layer": layer, "module": module, "kind": kind, "all": "all"}[by]


def _grouped(a: Mask, b: Mask, by: str, count: Callable[[Tensor, Tensor], tuple[int, int]]) -> dict[str, float]:
    if by not in ("map", "layer", "module", "kind", "all"):
        raise ValueError(f"group by must be map, layer, module, kind or all, got {by!r}")
    totals: dict[str, list[int]] = {}
    for name in dict.fromkeys([*a.keep, *b.keep]):
        ref = a.keep.get(name, b.keep.get(name))
        x = a.keep.get(name, torch.ones_like(ref))
        num, den = count(x, b.keep.get(name, torch.ones_like(ref)).to(x.device))
        entry = totals.setdefault(_group_key(name, by), [0, 0])
        entry[0] += num
        entry[1] += den
    return {key: num / den if den else float("nan") for key, (num, den) in totals.items()}


def fraction_differ(a: Mask, b: Mask, by: str = "all") -> dict[str, float] | float:
    """Fraction of entries where two masks differ, overall (``by="all"``) or per map/layer/module/kind."""
    result = _grouped(a, b, by, lambda x, y: (int((x != y).sum()), x.numel()))
    return result["all"] if by == "all" else result


def iou(a: Mask, b: Mask, by: str = "all", of: str = "kept") -> dict[str, float] | float:
    """Intersection over union of the ``kept`` (or ``removed``) weights of two masks."""
    if of not in ("kept", "removed"):
        raise ValueError(f"of must be 'kept' or 'removed', got {of!r}")
    flip = (lambda t: t) if of == "kept" else (lambda t: ~t)
    result = _grouped(a, b, by, lambda x, y: (int((flip(x) & flip(y)).sum()), int((flip(x) | flip(y)).sum())))
    return result["all"] if by == "all" else result
