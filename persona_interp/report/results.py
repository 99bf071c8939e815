"""What a main-job run records beside its numbers: which model, weights, dtype, device and machine computed them.

Example:
    >>> provenance = Provenance.collect(model, "SmolLM2-135M-Instruct", seed=0, revision="1e901ef", started=now())
    >>> provenance.dtype, provenance.cpu.kind
    ('float32', 'no bf16 instructions')
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from persona_interp.model.machine import CPU, cpu_info

NOT_RECORDED = "not recorded"          # what a file from before a field existed shows for it: never a guess
NotRecorded = Literal["not recorded"]


def now() -> str:
    """The current UTC time as the results record it, e.g. ``'2026-12-06T21:27:39+00:00'``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_name(model: Any) -> str:
    """How a run names its model: the embedded model's name (``None``), a folder or hub name as given, or a built
    model's configured name (its class name when it has none).

    Example:
        >>> model_name("/models/tiny"), model_name(None)
        ('/models/tiny', 'SmolLM2-135M-Instruct')
    """
    from persona_interp.model.load import EMBEDDED_NAME

    if model is None:
        return EMBEDDED_NAME
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    configured = getattr(getattr(model, "cfg", None), "model_name", None)
    return str(configured) if configured else type(model).__name__


class Provenance(BaseModel):
    """Which model, weights, dtype, device, machine and code computed a run (or a persona of it).
    Fields a file from before they existed never recorded read ``"not recorded"``."""

    model_config = ConfigDict(extra="forbid")

    model: str                                        # name or folder as given (see :func:`model_name`)
    fingerprint: str                                  # the weights' (``get_adapter(model).fingerprint``)
    dtype: str                                        # the dtype that ran (``"auto"`` resolved), e.g. ``"bfloat16"``
    device: str                                       # where token ids go in, e.g. ``"cpu"``, ``"cuda:0"``
    device_map: dict[str, Any] | NotRecorded | None   # accelerate's map of a sharded model; None: one device
    seed: int | NotRecorded
    revision: str                                     # :func:`~persona_interp.studies.reproduce.git_revision`
    torch: str
    transformers: str
    cpu: CPU | NotRecorded
    started: str
    finished: str | None = None                       # None while the run is going

    @classmethod
    def collect(cls, model: Any, name: str, *, seed: int, revision: str, started: str) -> Provenance:
        """This process's record of ``model`` (loaded under ``name``)."""
        import torch
        import transformers

        from persona_interp.model.adapter import get_adapter

        adapter = get_adapter(model)
        return cls(model=name, fingerprint=adapter.fingerprint, dtype=str(adapter.dtype).removeprefix("torch."),
                   device=str(adapter.input_device), device_map=adapter.device_map, seed=seed, revision=revision,
                   torch=torch.__version__, transformers=transformers.__version__, cpu=cpu_info(), started=started)

    def header(self) -> str:
        """One line for a report: ``Model: `x` (weights 1a2b…), float32 on cpu; CPU …; torch …, transformers …``."""
        cpu = (f"CPU {self.cpu.model} ({', '.join(self.cpu.flags) or 'none of amx_bf16, avx512_bf16, avx512f, avx2'})"
               if isinstance(self.cpu, CPU) else f"CPU {NOT_RECORDED}")
        placement = self.device if self.device_map is None else f"{self.device} (device map: {self.device_map})"
        return (f"Model: `{self.model}` (weights' fingerprint {self.fingerprint}), {self.dtype} on {placement}; {cpu}; "
                f"torch {self.torch}, transformers {self.transformers}.")


def recorded_provenance(record: dict[str, Any], config: dict[str, Any], revision: str) -> Provenance:
    """The provenance a results record (the run, or one persona's entry) holds, or, for a file from before it was
    recorded, what the file did record (``config``'s dtype and seed, the ``revision``, start and finish times)
    with everything else ``"not recorded"``."""
    if "provenance" in record:
        return Provenance.model_validate(record["provenance"])
    return Provenance(model=NOT_RECORDED, fingerprint=NOT_RECORDED, dtype=config.get("dtype", NOT_RECORDED),
                      device=NOT_RECORDED, device_map=NOT_RECORDED, seed=config.get("seed", NOT_RECORDED),
                      revision=record.get("revision", revision), torch=NOT_RECORDED, transformers=NOT_RECORDED,
                      cpu=NOT_RECORDED, started=record.get("started", NOT_RECORDED), finished=record.get("finished"))
