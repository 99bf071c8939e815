"""Safetensors files with a format tag and JSON metadata: written without clobbering, read
without unpickling.

Example:
    >>> write_tagged(path, {"x": array}, "persona_interp.mask/1", {"meta": "{}"}, save_file)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from safetensors import safe_open


def write_tagged(path: str | os.PathLike, tensors: dict[str, Any], fmt: str, header: dict[str, str],
                 save: Callable[..., None], overwrite: bool = False) -> Path:
    """Save ``tensors`` with ``save`` (numpy or torch flavour of safetensors); refuses to replace an
    existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    save(tensors, str(path), metadata={"format": fmt, **header})
    return path


def read_header(path: str | os.PathLike, fmt: str, what: str) -> dict[str, str]:
    """The metadata of a tagged file; raises ``ValueError`` when the tag is not ``fmt``."""
    with safe_open(str(path), framework="numpy") as handle:
        header = handle.metadata() or {}
    if header.get("format") != fmt:
        raise ValueError(f"{path} is not a persona_interp {what} (format {header.get('format')!r})")
    return header
