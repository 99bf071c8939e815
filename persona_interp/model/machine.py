"""The machine a run computes on: the CPU's model and the instruction-set flags that decide its speed and numerics
in bfloat16, and the dtype ``"auto"`` resolves to there.

Examples:
    >>> cpu = cpu_info()                    # e.g. CPU(model='AMD EPYC 7B13', flags=('avx2',))
    >>> auto_dtype("cpu") == (torch.bfloat16 if cpu.bf16 else torch.float32)   # float32 without AMX-BF16 or AVX512-BF16
    True
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

SPEED_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")   # recorded: what changes speed and numerics
BF16_FLAGS = ("amx_bf16", "avx512_bf16")                        # bfloat16 in hardware: fast, and its own rounding


@dataclass(frozen=True)
class CPU:
    """A CPU's model name and which of [`SPEED_FLAGS`][persona_interp.model.machine.SPEED_FLAGS] it has."""

    model: str
    flags: tuple[str, ...]

    @property
    def bf16(self) -> tuple[str, ...]:
        """The bfloat16 instructions it has ([`BF16_FLAGS`][persona_interp.model.machine.BF16_FLAGS]): two runs in
        bfloat16 agree only on the same kind."""
        return tuple(f for f in BF16_FLAGS if f in self.flags)

    @property
    def kind(self) -> str:
        """``"amx_bf16+avx512_bf16"``, or ``"no bf16 instructions"``: what ``--resume`` compares."""
        return "+".join(self.bf16) or "no bf16 instructions"


def parse_cpuinfo(text: str) -> CPU:
    """The first processor's model name and speed flags from the text of ``/proc/cpuinfo``.

    Examples:
        >>> parse_cpuinfo("model name : Xeon\\nflags : fpu avx2 amx_bf16\\n")
        CPU(model='Xeon', flags=('amx_bf16', 'avx2'))
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    present = set(fields.get("flags", "").split())
    return CPU(fields.get("model name") or platform.processor() or "unknown",
               tuple(f for f in SPEED_FLAGS if f in present))


@functools.cache
def cpu_info(path: str | Path = "/proc/cpuinfo") -> CPU:
    """This machine's CPU (read once); without ``/proc/cpuinfo`` (not Linux) the flags are unknown, so empty."""
    try:
        return parse_cpuinfo(Path(path).read_text())
    except OSError:
        return CPU(platform.processor() or "unknown", ())


def auto_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """What ``dtype="auto"`` means on ``device`` (default: the CPU): bfloat16 on a GPU that supports it and on a CPU
    with AMX-BF16 or AVX512-BF16 (2–4× faster there), float32 elsewhere (bfloat16 is emulated, 5–6× slower, on a
    CPU with AVX2 only).

    Examples:
        >>> auto_dtype("mps")                 # neither a GPU with bfloat16 nor a CPU with it
        torch.float32
    """
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if cpu_info().bf16 else torch.float32
    return torch.float32
