"""A checkpoint of an evaluation in progress: each condition's test scores and damage, written as soon as it is
measured, so that an evaluation cut off (a session's end, a crash) resumes where it stopped instead of scoring
every condition again.

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from persona_interp.data.files import write_text
from persona_interp.evaluation.rows import Damage, Record
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


def checkpoint_key(parts: Any) -> str:
    """A digest of ``parts`` (anything JSON can write, with sorted keys; objects it cannot are written as their
    ``str``): two keys are equal only when the parts are.

    Examples:
        >>> checkpoint_key({"a": 1, "b": [2, 3]}) == checkpoint_key({"b": [2, 3], "a": 1}), len(checkpoint_key(0))
        (True, 16)
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class EvaluationCheckpoint:
    """The checkpoint file at ``path`` of the evaluation identified by ``key``
    ([`checkpoint_key`][persona_interp.evaluation.checkpoint.checkpoint_key]); pass it to
    [`evaluate`][persona_interp.evaluation.evaluate.evaluate]. Each condition is added (the file rewritten
    atomically) as it is measured; [`clear`][persona_interp.evaluation.checkpoint.EvaluationCheckpoint.clear] removes
    the file once the results are saved elsewhere."""

    path: Path
    key: str

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._scored: dict[str, ScoredCondition] | None = None

    def load(self) -> dict[str, ScoredCondition]:
        """The conditions scored so far under this key: none when there is no file; a file of another key, or one
        that does not parse, is ignored with a warning naming it (and replaced at the next save)."""
        if self._scored is None:
            self._scored = {}
            if self.path.is_file():
                try:
                    saved = CheckpointFile.model_validate_json(self.path.read_text(encoding="utf-8"))
                except (ValidationError, ValueError) as error:
                    warnings.warn(f"{self.path}: not a readable evaluation checkpoint ({str(error).splitlines()[0]}); "
                                  "scoring every condition again", stacklevel=2)
                else:
                    if saved.key == self.key:
                        self._scored = dict(saved.scored)
                    else:
                        warnings.warn(f"{self.path} was written for another run or code (key {saved.key}, this one "
                                      f"{self.key}); scoring every condition again", stacklevel=2)
        return dict(self._scored)

    def save(self, name: str, scores: ABScores, damage: Damage | None) -> None:
        """Add condition ``name``'s scores and damage and rewrite the file."""
        scored = self.load()
        scored[name] = ScoredCondition.of(scores, damage)
        self._scored = scored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, CheckpointFile(key=self.key, scored=scored).model_dump_json())

    def clear(self) -> None:
        """Remove the file (nothing when there is none), and its folder when that is left empty."""
        self.path.unlink(missing_ok=True)
        self._scored = None
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()
