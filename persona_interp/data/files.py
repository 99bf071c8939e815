"""Safetensors files with a format tag and JSON metadata: written without clobbering, read
without unpickling.

Examples:
    >>> import numpy as np; from safetensors.numpy import save_file
    >>> write_tagged("x.safetensors", {"x": np.zeros(3)}, "persona_interp.mask/1", {"meta": "{}"}, save_file)
    PosixPath('x.safetensors')
    >>> read_metadata("x.safetensors")["format"]
    'persona_interp.mask/1'
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar, runtime_checkable

from safetensors import safe_open


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed over ``path`` when the block finishes and removed if
    it raises, so ``path`` holds either its old content or the complete new one, never a partial file. The file
    gets the mode a new file would (``0o666`` less the umask), whatever the writer created the temporary with.

    Examples:
        >>> with atomic("report.md") as tmp:
        ...     n = tmp.write_text("# Report")
        >>> Path("report.md").read_text()
        '# Report'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through [`atomic`][persona_interp.data.files.atomic]."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_tagged(path: str | os.PathLike, tensors: dict[str, Any], fmt: str, header: dict[str, str],
                 save: Callable[..., None], overwrite: bool = False) -> Path:
    """Save ``tensors`` with ``save`` (numpy or torch flavour of safetensors); refuses to replace an
    existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    with atomic(path) as tmp:
        save(tensors, str(tmp), metadata={"format": fmt, **header})
    return path


def read_metadata(path: str | os.PathLike, what: str = "file") -> dict[str, str]:
    """The metadata of a safetensors file; raises ``FileNotFoundError`` when there is none, ``ValueError`` when it
    is not a readable safetensors file (truncated, or another format).

    Examples:
        >>> read_metadata(mask.save("cw_seek.safetensors"))["format"]
        'persona_interp.mask/1'
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.metadata() or {}
    except Exception as error:                       # safetensors raises its own error type for a broken file
        raise ValueError(f"{path} is not a readable persona_interp {what}: not a complete safetensors file "
                         f"(truncated or another format: {error})") from None


def read_header(path: str | os.PathLike, fmt: str, what: str) -> dict[str, str]:
    """The metadata of a tagged file (see [`read_metadata`][persona_interp.data.files.read_metadata]); ``ValueError``
    when its tag is not ``fmt``."""
    header = read_metadata(path, what)
    if header.get("format") != fmt:
        raise ValueError(f"{path} is not a persona_interp {what} (format {header.get('format')!r})")
    return header


@runtime_checkable
class Saveable(Protocol):
    """What [`made_or_read`][persona_interp.data.files.made_or_read] keeps: an object that saves itself to a file."""

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path: ...


S = TypeVar("S", bound=Saveable)


def made_or_read(paths: Sequence[Path], load: Callable[[Path], S], make: Callable[[], Sequence[S]]) -> list[S]:
    """What ``make`` makes, one object per path: read back with ``load`` when every path is a file, else made and each
    saved to its path (a partial set is made again and replaced), so a run resumed with the same paths does not make it
    again (LoRA epochs, learned gates). No paths: made and not kept.

    Examples:
        >>> first = made_or_read([Path("kept.safetensors")], Mask.load, lambda: [mask])
        >>> again = made_or_read([Path("kept.safetensors")], Mask.load, lambda: 1 / 0)   # read back, not made
        >>> again[0].sparsity() == first[0].sparsity()
        True
    """
    if paths and all(path.is_file() for path in paths):
        return [load(path) for path in paths]
    made = list(make())
    if paths and len(made) != len(paths):
        raise ValueError(f"made {len(made)} objects for {len(paths)} paths")
    for thing, path in zip(made, paths):
        thing.save(path, overwrite=True)
    return made
