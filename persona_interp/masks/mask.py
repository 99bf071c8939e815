"""The Mask type (kept entries per linear map, with metadata) and how two masks compare."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from jaxtyping import Bool
from safetensors.numpy import load_file, save_file
from torch import Tensor

from persona_interp.data.files import read_header, write_tagged
from persona_interp.model.adapter import ModelMismatchError, get_adapter, parse_map_name

FORMAT = "persona_interp.mask/1"


class PackedKeep(Mapping[str, Tensor]):
    """Keep-masks held at one bit per weight (``numpy.packbits``), each map unpacked to a boolean tensor on the
    CPU when read: an eighth of a boolean mask's memory, for the many masks a run holds until it scores them
    ([`Mask.compact`][persona_interp.masks.mask.Mask.compact]).

    Examples:
        >>> keep = PackedKeep({"blocks.0.mlp.down": torch.tensor([[True, False, True]])})
        >>> keep["blocks.0.mlp.down"], keep.nbytes
        (tensor([[ True, False,  True]]), 1)
    """

    def __init__(self, keep: Mapping[str, Tensor] | None = None, *, bits: Mapping[str, np.ndarray] | None = None,
                 shapes: Mapping[str, tuple[int, ...]] | None = None):
        if keep is not None:
            bits = {name: np.packbits(k.cpu().numpy().reshape(-1)) for name, k in keep.items()}
            shapes = {name: tuple(k.shape) for name, k in keep.items()}
        self._bits, self._shapes = dict(bits or {}), {name: tuple(shape) for name, shape in (shapes or {}).items()}

    def __getitem__(self, name: str) -> Tensor:
        shape = self._shapes[name]
        flat = np.unpackbits(self._bits[name], count=math.prod(shape)).view(np.bool_)
        return torch.from_numpy(flat).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def packed(self) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
        """The packed bits and shapes of each map (what [`Mask.save`][persona_interp.masks.mask.Mask.save] writes)."""
        return dict(self._bits), dict(self._shapes)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bits.values())


@dataclass
class Mask:
    """Keep-masks per linear map (``True`` = weight kept) plus metadata.

    Maps without an entry are left untouched. ``&``, ``|``, ``~`` and ``-`` combine masks
    map by map (a missing map counts as all-kept).

    Examples:
        >>> both = seek_mask & reject_mask; only_seek = seek_mask - reject_mask
        >>> both.sparsity() >= seek_mask.sparsity()       # kept by both: no more than by one
        True
    """

    keep: Mapping[str, Bool[Tensor, "out in"]]
    meta: dict[str, Any] = field(default_factory=dict)

    def compact(self) -> "Mask":
        """The same mask held at one bit per weight ([`PackedKeep`][persona_interp.masks.mask.PackedKeep]); each map
        is unpacked when read, so it acts as this mask everywhere (``ablate``, comparisons, ``save``).

        Examples:
            >>> small = seek_mask.compact()
            >>> small.keep.nbytes * 8 >= sum(k.numel() for k in seek_mask.keep.values()), fraction_differ(small, seek_mask)
            (True, 0.0)
        """
        return self if isinstance(self.keep, PackedKeep) else Mask(PackedKeep(self.keep), dict(self.meta))

    def digest(self) -> str:
        """A hash of the entries the mask keeps (each map's name, shape and bits; not the metadata): equal for two
        masks that remove the same weights from the same maps, however they were built or held.

        Examples:
            >>> seek_mask.digest() == seek_mask.compact().digest(), seek_mask.digest() == reject_mask.digest()
            (True, False)
        """
        keep = self.compact().keep
        assert isinstance(keep, PackedKeep)
        bits, shapes = keep.packed()
        hashed = hashlib.sha256()
        for name in sorted(bits):
            hashed.update(f"{name}{shapes[name]}".encode())
            hashed.update(bits[name].tobytes())
        return hashed.hexdigest()

    # ------------------------------------------------------------------ measures
    def sparsity(self) -> float:
        """Fraction of the covered weights that are removed."""
        total = sum(k.numel() for k in self.keep.values())
        return 1.0 - sum(int(k.sum()) for k in self.keep.values()) / max(total, 1)

    def check_model(self, model: Any) -> None:
        """Raise unless this mask fits ``model``: same fingerprint, every map present with its shape."""
        get_adapter(model).check_fits(self.meta.get("fingerprint"), f"mask {self.meta.get('method')!r}",
                                      {name: tuple(keep.shape) for name, keep in self.keep.items()})

    # ------------------------------------------------------------------ set operations
    def _combine(self, other: "Mask", op: Callable[[Tensor, Tensor], Tensor], symbol: str) -> "Mask":
        if not isinstance(other, Mask):
            return NotImplemented
        _check_same_model(self, other, "combine")
        keep = {}
        for name in dict.fromkeys([*self.keep, *other.keep]):
            ref = self.keep[name] if name in self.keep else other.keep[name]
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
        arrays, shapes = self.compact().keep.packed()     # type: ignore[attr-defined]   # compact() holds a PackedKeep
        return write_tagged(path, arrays, FORMAT, {"shapes": json.dumps({n: list(s) for n, s in shapes.items()}),
                                                   "meta": json.dumps(self.meta)}, save_file, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mask":
        """Load a mask saved by [`save`][persona_interp.masks.mask.Mask.save] (safetensors: no unpickling)."""
        header = read_header(path, FORMAT, "mask")
        shapes = json.loads(header["shapes"])
        bits = load_file(str(path))
        for name, packed in bits.items():
            if name not in shapes:
                raise ValueError(f"{path}: map {name!r} has packed bits but no shape in the header")
            count = math.prod(shapes[name])
            if packed.size != math.ceil(count / 8):
                raise ValueError(f"{path}: map {name!r} holds {packed.size} bytes of packed bits, its shape "
                                 f"{shapes[name]} needs {math.ceil(count / 8)}: the file is damaged")
        if set(shapes) - set(bits):
            raise ValueError(f"{path}: the header names maps with no data: {sorted(set(shapes) - set(bits))[:3]}")
        keep = PackedKeep(bits=bits, shapes={name: tuple(shapes[name]) for name in bits})
        return cls({name: keep[name] for name in keep}, json.loads(header["meta"]))


# ---------------------------------------------------------------------- comparisons
def _check_same_model(a: Mask, b: Mask, doing: str) -> None:
    """Refuse two masks whose recorded fingerprints differ (one without a fingerprint is accepted)."""
    fa, fb = a.meta.get("fingerprint"), b.meta.get("fingerprint")
    if fa and fb and fa != fb:
        raise ModelMismatchError(f"cannot {doing} masks built for different models: {a.meta.get('method')!r} "
                                 f"(fingerprint {fa[:12]}…) and {b.meta.get('method')!r} (fingerprint {fb[:12]}…)")


def _group_key(name: str, by: str) -> str:
    layer, module, kind = parse_map_name(name)
    return {"map": name, "layer": str(layer), "module": module, "kind": kind, "all": "all"}[by]


GROUPS = ("map", "layer", "module", "kind")


def _grouped(a: Mask, b: Mask, by: str, count: Callable[[Tensor, Tensor], tuple[int, int]]) -> dict[str, float]:
    if by not in (*GROUPS, "all"):
        raise ValueError(f"group by must be one of {list(GROUPS)}, got {by!r}")
    _check_same_model(a, b, "compare")
    totals: dict[str, list[int]] = {}
    for name in dict.fromkeys([*a.keep, *b.keep]):
        ref = a.keep[name] if name in a.keep else b.keep[name]
        x = a.keep.get(name, torch.ones_like(ref))
        num, den = count(x, b.keep.get(name, torch.ones_like(ref)).to(x.device))
        entry = totals.setdefault(_group_key(name, by), [0, 0])
        entry[0] += num
        entry[1] += den
    return {key: num / den if den else float("nan") for key, (num, den) in totals.items()}


def fraction_differ(a: Mask, b: Mask) -> float:
    """Fraction of entries where two masks (of one model) differ, over every map of either.

    Examples:
        >>> fraction_differ(seek_mask, seek_mask), fraction_differ(seek_mask, ~seek_mask)
        (0.0, 1.0)
    """
    return _grouped(a, b, "all", _differ)["all"]


def fraction_differ_by(a: Mask, b: Mask, by: str) -> dict[str, float]:
    """[`fraction_differ`][persona_interp.masks.mask.fraction_differ] per ``map``, ``layer``, ``module`` (attn / mlp)
    or ``kind`` (q, k, …, down).

    Examples:
        >>> fraction_differ_by(seek_mask, reject_mask, "module")     # at most 2ρ = 0.6 for a ρ = 0.3 pair
        {'attn': 0.3..., 'mlp': 0.3...}
    """
    if by == "all":
        raise ValueError("fraction_differ_by groups by map, layer, module or kind; use fraction_differ for the overall fraction")
    return _grouped(a, b, by, _differ)


def iou(a: Mask, b: Mask, of: str = "kept") -> float:
    """Intersection over union of the ``kept`` (or ``removed``) weights of two masks (of one model)."""
    return _grouped(a, b, "all", _iou_count(of))["all"]


def iou_by(a: Mask, b: Mask, by: str, of: str = "kept") -> dict[str, float]:
    """[`iou`][persona_interp.masks.mask.iou] per ``map``, ``layer``, ``module`` or ``kind``."""
    if by == "all":
        raise ValueError("iou_by groups by map, layer, module or kind; use iou for the overall value")
    return _grouped(a, b, by, _iou_count(of))


def _differ(x: Tensor, y: Tensor) -> tuple[int, int]:
    return int((x != y).sum()), x.numel()


def _iou_count(of: str) -> Callable[[Tensor, Tensor], tuple[int, int]]:
    if of not in ("kept", "removed"):
        raise ValueError(f"of must be 'kept' or 'removed', got {of!r}")
    flip = (lambda t: t) if of == "kept" else (lambda t: ~t)
    return lambda x, y: (int((flip(x) & flip(y)).sum()), int((flip(x) | flip(y)).sum()))
