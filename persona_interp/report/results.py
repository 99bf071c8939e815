"""The main job's results as typed, versioned records: the run
([`RunResults`][persona_interp.report.results.RunResults]), each persona's
([`PersonaResult`][persona_interp.report.results.PersonaResult]) and which model, weights, dtype, device and machine
computed them ([`Provenance`][persona_interp.report.results.Provenance]), and
[`load_results`][persona_interp.report.results.load_results], which reads any ``results.json`` the main job wrote,
older versions included.

Everything is typed down to the rows ([`persona_interp.evaluation.rows`][persona_interp.evaluation.rows]: the tables,
contrasts, controls, budget picks, damage, search tables) and what the searches used
([`Used`][persona_interp.report.results.Used]), and validated on load, so a damaged, partial or misspelt file is an
error naming the file and the field.

Examples:
    >>> results = load_results("reports/results.json")
    >>> results.schema_version, results.personas["power"].n_test, results.personas["power"].provenance.dtype
    (2, 100, 'bfloat16')
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from persona_interp.analysis.diagnostics import OverlapRow, Stability, StatisticRow
from persona_interp.data.personas import REPO_ROOT, Side
from persona_interp.evaluation.controls import MatchedControlConfig, MatchedControlRecord
from persona_interp.evaluation.rows import (
    BudgetWinner,
    ConditionRow,
    ContrastRow,
    ControlRow,
    Damage,
    EqualDamage,
    FrontierRow,
    LoRASearchRow,
    MaskConfig,
    MaskSearchRow,
    PerItem,
    PromptAdditionRow,
    PromptSearchRow,
    Record,
    Row,
    SteeringSearchRow,
)
from persona_interp.evaluation.search import Racing
from persona_interp.evaluation.tuning import MaskSpace
from persona_interp.interventions.lora import LoRAConfig
from persona_interp.model.chat import TokenScope
from persona_interp.model.machine import CPU, cpu_info

SCHEMA_VERSION: Literal[2] = 2         # 1: the files before provenance (no ``schema_version``); 2: provenance
NOT_RECORDED = "not recorded"          # what a file from before a field existed shows for it: never a guess
NotRecorded = Literal["not recorded"]


COMPUTED_WITH = ("persona_interp", "data", "pyproject.toml")   # what a result depends on, for git_revision


def now() -> str:
    """The current UTC time as the results record it, e.g. ``'2026-12-06T21:27:39+00:00'``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision(root: str | Path = REPO_ROOT) -> str:
    """Short git revision of the repository at ``root``, with ``-dirty`` when the code or data that the results
    are computed with (``persona_interp/``, ``data/``, ``pyproject.toml``) has uncommitted changes; the run's own
    outputs (``reports/``, ``figures/``, which a resumed run has already rewritten) do not count.

    Examples:
        >>> git_revision()                     # e.g. '97d6afb', '97d6afb-dirty' with uncommitted code changes
        '...'
        >>> git_revision(".")                  # not a git checkout
        'unknown'
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *COMPUTED_WITH],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_name(model: Any) -> str:
    """How a run names its model: the embedded model's name (``None``), a folder or hub name as given, or a built
    model's configured name (its class name when it has none).

    Examples:
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

    model: str                                        # name or folder as given (see [`model_name`][persona_interp.report.results.model_name])
    fingerprint: str                                  # the weights' (``get_adapter(model).fingerprint``)
    dtype: str                                        # the dtype that ran (``"auto"`` resolved), e.g. ``"bfloat16"``
    device: str                                       # where token ids go in, e.g. ``"cpu"``, ``"cuda:0"``
    device_map: dict[str, Any] | NotRecorded | None   # accelerate's map of a sharded model; None: one device
    seed: int | NotRecorded
    revision: str                                     # [`git_revision`][persona_interp.report.results.git_revision]
    torch: str
    transformers: str
    cpu: CPU | NotRecorded
    started: str
    finished: str | None = None                       # None while the run is going

    @classmethod
    def collect(cls, model: Any, name: str | None = None, *, seed: int, revision: str | None = None,
                started: str | None = None) -> Provenance:
        """This process's record of ``model`` (loaded under ``name``, default: the model's own name), computed at
        ``revision`` (default: this checkout's, with ``-dirty`` for uncommitted code) from ``started`` (default: now).

        Examples:
            >>> prov = Provenance.collect(model, seed=0)
            >>> prov.dtype, prov.finished is None
            ('float32', True)
        """
        import torch
        import transformers

        from persona_interp.model.adapter import get_adapter

        adapter = get_adapter(model)
        return cls(model=name or model_name(model), fingerprint=adapter.fingerprint, dtype=str(adapter.dtype).removeprefix("torch."),
                   device=str(adapter.input_device), device_map=adapter.device_map, seed=seed,
                   revision=revision or git_revision(), torch=torch.__version__, transformers=transformers.__version__,
                   cpu=cpu_info(), started=started or now())

    def done(self) -> Provenance:
        """This record with ``finished`` set to now (a study's last step)."""
        return self.model_copy(update={"finished": now()})

    def header(self) -> str:
        """One line for a report: ``Model: `x` (weights 1a2b…), float32 on cpu; CPU …; torch …, transformers …``."""
        cpu = (f"CPU {self.cpu.model} ({', '.join(self.cpu.flags) or 'none of amx_bf16, avx512_bf16, avx512f, avx2'})"
               if isinstance(self.cpu, CPU) else f"CPU {NOT_RECORDED}")
        model = f"`{self.model}`" if self.model != NOT_RECORDED else NOT_RECORDED
        placement = (f"device {NOT_RECORDED}" if self.device == NOT_RECORDED else f"on {self.device}" +
                     (f" (device map: {self.device_map})" if self.device_map else ""))
        return (f"Model: {model} (weights' fingerprint {self.fingerprint}), {self.dtype}, {placement}; {cpu}; "
                f"torch {self.torch}, transformers {self.transformers}.")


def recorded_provenance(record: dict[str, Any], config: dict[str, Any], revision: str) -> Provenance:
    """The provenance a results record (the run, or one persona's entry) holds, or, for a file from before it was
    recorded, what the file did record (``config``'s dtype and seed, the ``revision``, start and finish times)
    with everything else ``"not recorded"``."""
    return Provenance.model_validate(record["provenance"] if "provenance" in record else _recorded(record, config, revision))


def _recorded(record: dict[str, Any], config: dict[str, Any], revision: str) -> dict[str, Any]:
    """[`recorded_provenance`][persona_interp.report.results.recorded_provenance]'s fields for a record from before
    provenance, not yet validated."""
    return {"model": NOT_RECORDED, "fingerprint": NOT_RECORDED, "dtype": config.get("dtype", NOT_RECORDED),
            "device": NOT_RECORDED, "device_map": NOT_RECORDED, "seed": config.get("seed", NOT_RECORDED),
            "revision": record.get("revision", revision), "torch": NOT_RECORDED, "transformers": NOT_RECORDED,
            "cpu": NOT_RECORDED, "started": record.get("started", NOT_RECORDED), "finished": record.get("finished")}


class Split(Row):
    """Which calibration items formed the validation split
    ([`split`][persona_interp.data.personas.PersonaDataset.split])."""

    seed: int
    fraction: float
    validation_indices: list[int]


class SteeringSearch(Record):
    """A steering method's search: its unbudgeted pick (layer, multiplier) and the whole table."""

    layer: int
    multiplier: float
    table: list[SteeringSearchRow]


class LoRASearch(Record):
    """The LoRA search: the epochs picked without a budget, the table and the training configuration."""

    epochs: int
    table: list[LoRASearchRow]
    config: LoRAConfig


class MaskSearch(Record):
    """A mask method's search: its unbudgeted pick and the whole table."""

    chosen: MaskConfig
    table: list[MaskSearchRow]


class Diagnostics(Record):
    """What the masks are made of at the first paper sparsity
    ([`mask_diagnostics`][persona_interp.studies.reproduce.mask_diagnostics])."""

    sparsity: float
    overlap: list[OverlapRow]
    statistics: list[StatisticRow]
    stability: Stability


class Used(Record):
    """What a persona's conditions were built with: the fit and validation sizes, the neutral texts of each use,
    every search table, the damage-matched controls' searches and the mask diagnostics. Assignments are validated
    (a search table of dicts becomes typed rows). Fields a run did not produce (or a file from before they existed
    never recorded) are None.

    Examples:
        >>> used = Used(fit_items=8, validation_items=4)
        >>> used.prompt_search = [{"side": "seek", "prompt": "You seek power.", "margin": 0.4, "scored": True}]
        >>> used.prompt_search[0].margin
        0.4
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fit_items: int
    validation_items: int
    split: Split | None = None
    test_leaks_dropped: int | None = None
    duplicate_questions: int | None = None
    signature_tokens: dict[Side, int] | None = None
    selection_neutral_texts: int | None = None
    fit_neutral_texts: int | None = None
    other_texts: int | None = None
    prompt_search: list[PromptSearchRow] | None = None
    steering_search: dict[str, SteeringSearch] | None = None
    lora_search: LoRASearch | None = None
    mask_search: dict[str, MaskSearch] | None = None
    matched_controls: dict[str, MatchedControlRecord] | None = None
    diagnostics: Diagnostics | None = None


class StageTime(Row):
    """The wall time of one outermost stage of a persona's run (as its progress line reports it): its name, seconds,
    the steps it counted, the model forwards run in it (``forwards`` calls, ``rows`` sequences, ``tokens`` positions
    with padding; 0, left out of the JSON: not counted, as in files from before 2026-12-08) and the process's peak
    resident memory at its end and how much the stage raised it (MB; absent: not recorded).

    Examples:
        >>> StageTime(name="steering", seconds=61.2, steps=6).model_dump()
        {'name': 'steering', 'seconds': 61.2, 'steps': 6}
    """

    name: str
    seconds: float
    steps: int
    forwards: int = 0
    rows: int = 0
    tokens: int = 0
    peak_mb: float | None = None         # the process's peak resident memory at the stage's end
    peak_rise_mb: float | None = None    # how much the stage raised that peak


class PersonaResult(Record):
    """One persona's results: what computed them, what the searches used, the test-set tables and (``stages``, from
    files written since 2026-12-07) how long each stage of it took."""

    revision: str
    finished: str
    provenance: Provenance
    used: Used
    n_test: int
    table: list[ConditionRow]              # one row per condition and side
    contrasts: list[ContrastRow]           # seek − reject per pair
    controls: list[ControlRow]             # each mask against its random mask
    equal_damage: list[EqualDamage]        # per damage budget
    prompt_additions: list[PromptAdditionRow]
    frontier: list[FrontierRow]
    budget_winners: list[BudgetWinner]     # per damage budget
    per_item: dict[str, PerItem]           # per condition
    damage: dict[str, Damage]              # per condition
    stages: list[StageTime] | None = None  # each outermost stage's wall time, in order (report and figures excluded)

    @property
    def seconds(self) -> float | None:
        """The persona's compute time: the sum of its stages' (``None`` for a file that did not record them)."""
        return sum(stage.seconds for stage in self.stages) if self.stages is not None else None


class RecordedConfig(Record):
    """[`ReproduceConfig`][persona_interp.studies.config.ReproduceConfig] as ``results.json`` records it (the report sits
    below the studies and does not import them). ``personas`` and ``seed`` are always there; an option a file from
    before it existed lacks is ``None`` and left out of the JSON again (``dtype`` absent: not recorded); a key that
    is no option is an error naming it.

    Examples:
        >>> config = load_results("reports/results.json").config
        >>> config.seed, config.dtype, config.n_fit_neutral is None, "n_fit_neutral" in config.model_dump()
        (0, 'bfloat16', True, False)
    """

    personas: list[str]
    sparsities: list[float] | None = None
    n_calibration: int | None = None
    n_test: int | None = None
    validation_fraction: float | None = None
    seed: int
    token_scope: TokenScope | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    n_neutral: int | None = None
    n_selection_neutral: int | None = None
    n_fit_neutral: int | None = None
    stability_draws: int | None = None
    diagnostics: bool | None = None
    modules: list[str] | None = None
    rag_k: int | None = None
    steering_layers: list[float] | None = None
    steering_multipliers: list[float] | None = None
    n_validation: int | None = None
    ode_features: int | None = None
    weight_edit_strengths: list[float] | None = None
    matched_controls: MatchedControlConfig | None = None
    mask_search: MaskSpace | None = None
    n_other_texts: int | None = None
    damage_aware_methods: list[str] | None = None
    prompt_search: bool | None = None
    lora: LoRAConfig | None = None
    damage_budgets: list[float] | None = None
    racing: Racing | None = None
    dtype: str | None = None


class RunResults(BaseModel):
    """A main-job run: its configuration, provenance and the personas finished so far (``complete`` when all are)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2]
    config: RecordedConfig
    revision: str
    started: str
    finished: str | None = None
    complete: bool = False
    provenance: Provenance
    personas: dict[str, PersonaResult]

    def only(self, personas: Sequence[str]) -> RunResults:
        """These results with only ``personas`` (in that order; each must be there), e.g. one notebook's share.

        Examples:
            >>> list(load_results("reports/results.json").only(["wealth", "power"]).personas)
            ['wealth', 'power']
        """
        missing = [p for p in personas if p not in self.personas]
        if missing:
            raise KeyError(f"no results for {missing}; these results hold {list(self.personas)}")
        return self.model_copy(update={"personas": {p: self.personas[p] for p in personas}})

    def save(self, path: str | Path) -> Path:
        """Write the results as JSON (atomically; read back with
        [`load_results`][persona_interp.report.results.load_results])."""
        from persona_interp.data.files import write_text

        write_text(Path(path), json.dumps(self.model_dump(), indent=1))
        return Path(path)


class ResultsError(ValueError):
    """A results file that cannot be read: not JSON, not a run's results, or a field missing or of the wrong type."""


def load_results(path: str | Path) -> RunResults:
    """A ``results.json`` of the main job, validated; a file from before provenance was recorded (schema 1) reads
    with what it never recorded as ``"not recorded"``. Anything else is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming the file and the field.

    Examples:
        >>> load_results("reports/results.json").personas["power"].provenance.dtype
        'bfloat16'
        >>> _ = Path("other.json").write_text('{"schema_version": 2}')
        >>> load_results("other.json")
        Traceback (most recent call last):
        persona_interp.report.results.ResultsError: other.json is not a persona-interp results file (no 'personas'): ...
    """
    return parse_results(read_json(path, "a results file of persona-interp reproduce"), str(path))


def parse_results(data: Any, source: str = "results") -> RunResults:
    """[`load_results`][persona_interp.report.results.load_results] of an already-parsed JSON value (``source`` names
    it in errors)."""
    if not isinstance(data, dict) or "personas" not in data:
        got = f"a JSON {type(data).__name__}" if not isinstance(data, dict) else "an object without 'personas'"
        raise ResultsError(f"{source} is not a persona-interp results file (no 'personas'): it holds {got}")
    version = data.get("schema_version", 1)
    if version == 1:
        data = _from_version_1(data)
    elif version != SCHEMA_VERSION:
        raise ResultsError(f"{source}: schema_version {version!r} is not one this persona_interp reads "
                           f"(1 to {SCHEMA_VERSION}); a newer persona_interp wrote it?")
    return validated(RunResults, data, source)


ModelT = TypeVar("ModelT", bound=BaseModel)


def validated(cls: type[ModelT], data: Any, source: str) -> ModelT:
    """``data`` validated as ``cls``; a missing, misspelt or ill-typed field is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming ``source`` and the field (the first three)."""
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        problems = [f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ResultsError(f"{source}: {'; '.join(problems[:3])}{more}") from None


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``; a file that is not JSON text is a
    [`ResultsError`][persona_interp.report.results.ResultsError] saying it is not ``what``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path} is not JSON ({error}): not {what}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not text: not {what}") from None


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 file (before provenance) as schema 2: the run's and each persona's provenance from what the file
    recorded ([`recorded_provenance`][persona_interp.report.results.recorded_provenance]), everything else
    ``"not recorded"``. Fields of the wrong type are left for validation to name."""
    config: dict[str, Any] = data["config"] if isinstance(data.get("config"), dict) else {}
    revision: str = data["revision"] if isinstance(data.get("revision"), str) else NOT_RECORDED
    out = {**data, "schema_version": SCHEMA_VERSION}
    out.setdefault("provenance", _recorded(data, config, revision))
    if isinstance(data["personas"], dict):
        out["personas"] = {p: ({**e, "provenance": _recorded(e, config, revision)}
                               if isinstance(e, dict) and "provenance" not in e else e)
                           for p, e in data["personas"].items()}
    return out
