"""Saved results (``reports/results.json``, an atlas, a regimes or composition study) used in place of a
re-run only when they were recorded for the loaded model and the same protocol.

A file's model is its ``provenance``: ``results["provenance"]["model"]["fingerprint"]`` (or
``results["provenance"]["fingerprint"]``; an atlas without provenance: the fingerprint of the signatures it
records in ``signature_data``), compared with the loaded model's accepted fingerprints
([`persona_interp.model.adapter.ModelAdapter.accepted_fingerprints`][persona_interp.model.adapter.ModelAdapter.accepted_fingerprints]).
A file written before runs recorded their provenance counts as recorded for the embedded model, so it is used only
when the notebook's model is the embedded one (``model_source`` None). The protocol is the saved ``config``: every
option the notebook's configuration and the file both record must agree (``personas`` aside: the file must hold the
ones asked for).

[`saved_run_for`][persona_interp.report.saved.saved_run_for] reads a main job's ``results.json`` this way into its
typed results ([`RunResults`][persona_interp.report.results.RunResults]),
[`saved_study_for`][persona_interp.report.saved.saved_study_for] a study's file into its record (e.g.
[`parse_atlas`][persona_interp.report.study_results.parse_atlas]);
[`saved_results_for`][persona_interp.report.saved.saved_results_for] reads any of these files as JSON.

Examples:
    >>> saved = saved_results_for(model, "reports/results.json", model_source="tiny-llama")
    >>> print(saved.reason)              # the notebook reruns (reproduce) instead
    reports/results.json records no model (it predates provenance, so it was computed on the embedded model), and this notebook's model is tiny-llama
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from persona_interp.model.adapter import get_adapter
from persona_interp.report.results import RunResults, parse_results

# options a file from before the option existed ran with (what the code of its day did: nothing of the kind)
DEFAULTS: dict[str, Any] = {"dtype": "float32", "n_fit_neutral": 0, "n_other_texts": 0, "weight_edit_strengths": None,
                            "matched_controls": None, "damage_aware_methods": []}
Results = TypeVar("Results")


@dataclass(frozen=True)
class SavedResults(Generic[Results]):
    """The saved results (None when they must not be used) and why they are or are not used: a main job's typed
    results ([`saved_run_for`][persona_interp.report.saved.saved_run_for]) or a study's JSON
    ([`saved_results_for`][persona_interp.report.saved.saved_results_for])."""

    path: Path
    results: Results | None
    reason: str

    @property
    def usable(self) -> bool:
        return self.results is not None


def recorded_fingerprint(results: dict[str, Any]) -> str | None:
    """The model fingerprint a results file records, or None when it records no provenance.

    Examples:
        >>> recorded_fingerprint({"provenance": {"model": {"fingerprint": "0123abcd"}}})
        '0123abcd'
    """
    provenance = results.get("provenance")
    if isinstance(provenance, dict):
        model = provenance.get("model")
        if isinstance(model, dict) and model.get("fingerprint"):
            return str(model["fingerprint"])
        if provenance.get("fingerprint"):
            return str(provenance["fingerprint"])
    signatures = {s.get("fingerprint") for s in results.get("signature_data", []) if isinstance(s, dict)} - {None}
    return str(signatures.pop()) if len(signatures) == 1 else None     # an atlas: the model its signatures came from


def config_differences(mine: Any, theirs: dict[str, Any], ignore: Sequence[str] = ("personas",)) -> list[str]:
    """The options (dataclass fields or dict keys) in which a configuration differs from a saved one; an option
    only one side records is not compared, except those of [`DEFAULTS`][persona_interp.report.saved.DEFAULTS], which
    files before them ran with.

    Examples:
        >>> config_differences({"seed": 0, "dtype": "bfloat16"}, {"seed": 0})
        ['dtype']
    """
    mine = dataclasses.asdict(mine) if dataclasses.is_dataclass(mine) and not isinstance(mine, type) else dict(mine)
    theirs = {**{k: v for k, v in DEFAULTS.items() if k in mine}, **theirs}
    return sorted(k for k in set(mine) & set(theirs) if k not in ignore and mine[k] != theirs[k])


def saved_results_for(model: Any, path: str | os.PathLike[str], *, model_source: str | os.PathLike[str] | None = None,
                      config: Any = None, personas: Sequence[str] = ()) -> SavedResults[dict[str, Any]]:
    """The results saved in ``path`` if they were recorded for ``model`` (its fingerprint; a file without
    provenance only for the embedded model, ``model_source`` None) under ``config`` (same options, when given)
    and hold every persona of ``personas``; otherwise ``results`` is None and ``reason`` says why.

    Examples:
        >>> from persona_interp.studies.config import FULL
        >>> saved = saved_results_for(model, "reports/results.json", model_source=None, config=FULL, personas=["power"])
        >>> saved.usable, saved.reason.split(":")[0]        # model_source None: the embedded model (a tiny one stands in)
        (False, 'reports/results.json was run with another protocol')
        >>> "damage_aware_methods" in saved.reason          # the committed run predates the damage-aware methods
        True
    """
    path = Path(path)
    if not path.is_file():
        return SavedResults(path, None, f"{path} does not exist")
    results = json.loads(path.read_text())
    recorded = recorded_fingerprint(results)
    adapter = get_adapter(model)
    if recorded is None:
        if model_source is not None:
            return SavedResults(path, None, f"{path} records no model (it predates provenance, so it was computed on the "
                                            f"embedded model), and this notebook's model is {model_source}")
        why = f"{path} records no model; it predates provenance, so it counts as the embedded model's"
    elif recorded not in adapter.accepted_fingerprints:
        return SavedResults(path, None, f"{path} was recorded for the model with fingerprint {recorded}, not this one "
                                        f"({adapter.fingerprint})")
    else:
        why = f"{path} was recorded for this model (fingerprint {recorded})"
    if config is not None:
        differ = config_differences(config, results.get("config", {}))
        if differ:
            return SavedResults(path, None, f"{path} was run with another protocol: its configuration differs in {differ}")
    held = results.get("personas", {}) if "personas" in results else {results.get("persona"): None}
    missing = [p for p in personas if p not in held]
    if missing:
        return SavedResults(path, None, f"{path} does not hold {missing}")
    return SavedResults(path, results, why + (", with the same configuration" if config is not None else ""))


def saved_run_for(model: Any, path: str | os.PathLike[str], *, model_source: str | os.PathLike[str] | None = None,
                  config: Any = None, personas: Sequence[str] = ()) -> SavedResults[RunResults]:
    """[`saved_results_for`][persona_interp.report.saved.saved_results_for] of a main job's ``results.json``, its
    results typed and validated ([`parse_results`][persona_interp.report.results.parse_results]: a damaged file is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming it and the field).

    Examples:
        >>> saved = saved_run_for(model, "reports/results.json", model_source="tiny-llama", personas=["power"])
        >>> saved.results is None, saved.reason.endswith("and this notebook's model is tiny-llama")   # refused
        (True, True)
    """
    return saved_study_for(model, path, parse_results, model_source=model_source, config=config, personas=personas)


def saved_study_for(model: Any, path: str | os.PathLike[str], parse: Callable[[Any, str], Results], *,
                    model_source: str | os.PathLike[str] | None = None, config: Any = None,
                    personas: Sequence[str] = ()) -> SavedResults[Results]:
    """[`saved_results_for`][persona_interp.report.saved.saved_results_for] of a study's file, its results typed by
    ``parse`` (e.g. [`parse_atlas`][persona_interp.report.study_results.parse_atlas]: a damaged file is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming it and the field).

    Examples:
        >>> from persona_interp.report.study_results import parse_atlas
        >>> saved = saved_study_for(model, "reports/atlas/power.json", parse_atlas, model_source="tiny-llama")
        >>> saved.results is None, "not this one" in saved.reason     # its signatures' model is not the tiny one
        (True, True)
    """
    saved = saved_results_for(model, path, model_source=model_source, config=config, personas=personas)
    typed = parse(saved.results, str(saved.path)) if saved.results is not None else None
    return SavedResults(saved.path, typed, saved.reason)
