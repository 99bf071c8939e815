"""Checkpoints of work in progress, written as each part is measured, so that a run cut off (a session's end, a
crash) resumes where it stopped: an evaluation's conditions (each condition's test scores and damage,
[`EvaluationCheckpoint`][persona_interp.evaluation.checkpoint.EvaluationCheckpoint]) and the searches' rows (each
candidate's damage and validation effect, [`SearchCheckpoint`][persona_interp.evaluation.checkpoint.SearchCheckpoint]).

The file (JSON; loading never unpickles) holds a ``key``: a digest of everything the scores depend on (the caller
decides: the main job uses the configuration, the model's provenance, the code, the persona's test items and every
search table that chose its conditions). A file with another key is ignored with a warning and replaced, so a
checkpoint is only ever read back into the evaluation that wrote it. Scores are float64 and read back bit-exact.

Examples:
    >>> ckpt = EvaluationCheckpoint(Path("ckpt.json"), key=checkpoint_key({"persona": "power", "seed": 0}))
    >>> ev = evaluate(model, test, [Prompt("p+", system="Seek power.")], persona="power", checkpoint=ckpt, progress=False)
    >>> sorted(ckpt.load())                       # written as each condition was scored
    ['base', 'p+']
    >>> again = evaluate(model, test, [Prompt("p+", system="Seek power.")], persona="power", checkpoint=ckpt, progress=False)
    >>> bool((again.scores["p+"].margin_sum == ev.scores["p+"].margin_sum).all())   # read back, not scored again
    True
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from pydantic import ValidationError

from persona_interp.data.files import write_text
from persona_interp.evaluation.rows import Damage, Record, SearchRow
from persona_interp.evaluation.scoring import ABScores


class ScoredCondition(Record):
    """One condition's per-item A/B log-prob sums and answer lengths, and its damage where it was measured."""

    seek_logprob: list[float]
    reject_logprob: list[float]
    seek_tokens: list[int]
    reject_tokens: list[int]
    damage: Damage | None = None

    @classmethod
    def of(cls, scores: ABScores, damage: Damage | None) -> ScoredCondition:
        fields: dict[str, Any] = {} if damage is None else {"damage": damage}
        return cls(seek_logprob=scores.seek_logprob.tolist(), reject_logprob=scores.reject_logprob.tolist(),
                   seek_tokens=scores.seek_tokens.tolist(), reject_tokens=scores.reject_tokens.tolist(), **fields)

    def scores(self) -> ABScores:
        """The [`ABScores`][persona_interp.evaluation.scoring.ABScores] it was made from (float64, bit-exact)."""
        return ABScores(torch.tensor(self.seek_logprob, dtype=torch.float64),
                        torch.tensor(self.reject_logprob, dtype=torch.float64),
                        torch.tensor(self.seek_tokens), torch.tensor(self.reject_tokens))


class CheckpointFile(Record):
    """What an [`EvaluationCheckpoint`][persona_interp.evaluation.checkpoint.EvaluationCheckpoint] writes."""

    key: str
    scored: dict[str, ScoredCondition]


class SearchFile(Record):
    """What a [`SearchCheckpoint`][persona_interp.evaluation.checkpoint.SearchCheckpoint] writes: each measured row's
    fields under its search's name and the candidate's parameters."""

    key: str
    scored: dict[str, dict[str, Any]]


def checkpoint_key(parts: Any) -> str:
    """A digest of ``parts`` (anything JSON can write, with sorted keys; objects it cannot are written as their
    ``str``): two keys are equal only when the parts are.

    Examples:
        >>> checkpoint_key({"a": 1, "b": [2, 3]}) == checkpoint_key({"b": [2, 3], "a": 1}), len(checkpoint_key(0))
        (True, 16)
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


E = TypeVar("E")


@dataclass
class _Checkpoint(Generic[E]):
    """A JSON file of named entries under a ``key``; read back only when the key is the same."""

    path: Path
    key: str

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._scored: dict[str, E] | None = None

    def _parse(self, text: str) -> tuple[str, dict[str, E]]:
        raise NotImplementedError

    def _dump(self, scored: dict[str, E]) -> str:
        raise NotImplementedError

    def load(self) -> dict[str, E]:
        """The entries written so far under this key: none when there is no file; a file of another key, or one
        that does not parse, is ignored with a warning naming it (and replaced at the next save)."""
        if self._scored is None:
            self._scored = {}
            if self.path.is_file():
                try:
                    key, scored = self._parse(self.path.read_text(encoding="utf-8"))
                except (ValidationError, ValueError) as error:
                    warnings.warn(f"{self.path}: not a readable checkpoint ({str(error).splitlines()[0]}); "
                                  "measuring everything again", stacklevel=3)
                else:
                    if key == self.key:
                        self._scored = scored
                    else:
                        warnings.warn(f"{self.path} was written for another run or code (key {key}, this one "
                                      f"{self.key}); measuring everything again", stacklevel=3)
        return dict(self._scored)

    def _add(self, entries: dict[str, E]) -> None:
        scored = {**self.load(), **entries}
        self._scored = scored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, self._dump(scored))

    def clear(self) -> None:
        """Remove the file (nothing when there is none), and its folder when that is left empty."""
        self.path.unlink(missing_ok=True)
        self._scored = None
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


@dataclass
class EvaluationCheckpoint(_Checkpoint[ScoredCondition]):
    """The checkpoint file at ``path`` of the evaluation identified by ``key``
    ([`checkpoint_key`][persona_interp.evaluation.checkpoint.checkpoint_key]); pass it to
    [`evaluate`][persona_interp.evaluation.evaluate.evaluate]. Each condition is added (the file rewritten
    atomically) as it is measured; ``clear()`` removes the file (and its folder when left empty) once the results
    are saved elsewhere."""

    def _parse(self, text: str) -> tuple[str, dict[str, ScoredCondition]]:
        saved = CheckpointFile.model_validate_json(text)
        return saved.key, dict(saved.scored)

    def _dump(self, scored: dict[str, ScoredCondition]) -> str:
        return CheckpointFile(key=self.key, scored=scored).model_dump_json()

    def save(self, name: str, scores: ABScores, damage: Damage | None) -> None:
        """Add condition ``name``'s scores and damage and rewrite the file."""
        self._add({name: ScoredCondition.of(scores, damage)})


R = TypeVar("R", bound=SearchRow)


@dataclass
class SearchCheckpoint(_Checkpoint[dict[str, Any]]):
    """The checkpoint file at ``path`` of the searches identified by ``key`` (the main job: the persona, the
    configuration, the model's provenance and the code): each search's rows as they are measured, so a resumed run
    reads them back instead of measuring the candidates again. Each search writes under its own ``name``
    ([`part`][persona_interp.evaluation.checkpoint.SearchCheckpoint.part]); a row is found by its search's name and
    the candidate's parameters (the row before it was measured).

    Examples:
        >>> from persona_interp.evaluation.rows import SteeringSearchRow
        >>> ckpt = SearchCheckpoint(Path("searches.json"), key=checkpoint_key({"persona": "power"}))
        >>> steering = ckpt.part("steering mean_difference")
        >>> steering.save((SteeringSearchRow(layer=1, multiplier=2.0), SteeringSearchRow(layer=1, multiplier=2.0, kl=0.1)))
        >>> steering.row(SteeringSearchRow(layer=1, multiplier=2.0)).kl, ckpt.part("steering pca").row(SteeringSearchRow(layer=1, multiplier=2.0))
        (0.1, None)
    """

    name: str = ""

    def _parse(self, text: str) -> tuple[str, dict[str, dict[str, Any]]]:
        saved = SearchFile.model_validate_json(text)
        return saved.key, dict(saved.scored)

    def _dump(self, scored: dict[str, dict[str, Any]]) -> str:
        return SearchFile(key=self.key, scored=scored).model_dump_json()

    def __post_init__(self) -> None:
        super().__post_init__()
        self._file: SearchCheckpoint = self          # every part reads and writes through the first

    @property
    def artefacts(self) -> Path:
        """A folder for what the searches train (LoRA adapters, learned gates), named by the key, so a resumed run
        with the same key reads them back instead of training again; removed by
        [`clear`][persona_interp.evaluation.checkpoint.SearchCheckpoint.clear]."""
        return self.path.with_name(f"{self.path.stem}-trained") / self.key

    def clear(self) -> None:
        """Remove the file and the trained artefacts (and the folder when that is left empty)."""
        shutil.rmtree(self.artefacts.parent, ignore_errors=True)
        super().clear()

    def part(self, name: str) -> SearchCheckpoint:
        """The same file, for the search called ``name`` (its rows apart from every other search's)."""
        part = SearchCheckpoint(self.path, self.key, f"{self.name}/{name}" if self.name else name)
        part._file = self._file
        return part

    def _name(self, candidate: SearchRow) -> str:
        return f"{self.name}\0{candidate.model_dump_json()}"

    def row(self, candidate: R) -> R | None:
        """The measured row of ``candidate`` (its row before measurement) when this search saved one."""
        saved = self._file.load().get(self._name(candidate))
        return None if saved is None else type(candidate).model_validate(saved)

    def save(self, *measured: tuple[SearchRow, SearchRow]) -> None:
        """Add each (candidate, its measured row) and rewrite the file once."""
        self._file._add({self._name(candidate): row.model_dump(mode="json") for candidate, row in measured})
