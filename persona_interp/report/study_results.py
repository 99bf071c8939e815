"""The studies' results as typed records, and a loader per study file: an atlas
([`AtlasStudy`][persona_interp.report.study_results.AtlasStudy], ``persona-interp analyse``, ``reports/atlas/*.json``),
a regime comparison ([`RegimesStudy`][persona_interp.report.study_results.RegimesStudy], ``persona-interp regimes``,
``reports/regimes/*.json``) and the composition study
([`CompositionStudy`][persona_interp.report.study_results.CompositionStudy], ``persona-interp compose``,
``reports/composition.json``).

Each record has the keys of the JSON its study writes (``model_dump``), so a file written and read back has the keys
it had; a file that is not JSON, or a field missing, misspelt or of the wrong type, is a
[`ResultsError`][persona_interp.report.results.ResultsError] naming the file and the field.

Examples:
    >>> atlas = load_atlas("reports/atlas/power.json")
    >>> atlas.persona, atlas.config.sparsity, atlas.top_heads[0].layer >= 0, atlas.dose_response[0].selection
    ('power', 0.3, True, 'top')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_interp.analysis.causal import DoseRow
from persona_interp.analysis.localise import PairOverlap, UnitDivergence
from persona_interp.analysis.regimes import RegimeComparison
from persona_interp.evaluation.rows import Record, Row
from persona_interp.evaluation.stats import Estimate
from persona_interp.report.results import Provenance, read_json, validated


class RecordedAtlasConfig(Record):
    """[`AtlasConfig`][persona_interp.studies.config.AtlasConfig] as an atlas file records it (the report sits below
    the studies and does not import them); an option a file from before it existed lacks is ``None``."""

    sparsity: float
    n_calibration: int | None
    validation_fraction: float
    n_causal: int
    ks: list[int]
    seeds: list[int]
    modes: list[str]
    kinds: list[str] | None = None
    prompts: bool | None = None
    n_neutral: int
    n_top: int
    steering_layer: float
    batch_size: int
    seed: int
    causal: bool | None = None


class SignatureData(Record):
    """What one pole's signature was collected on (its ``meta``, with ``n_samples``); the fields a signature from
    before they were recorded lacks are ``None``."""

    side: str
    n_samples: int
    fingerprint: str | None = None
    dataset: str | None = None
    n_tokens: int | None = None
    token_scope: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    statistic: str | None = None
    n_cut: int | None = None
    subset_of: int | None = None


class Grid(Record):
    """A layer × map-kind measure ([`layer_kind_grid`][persona_interp.analysis.localise.layer_kind_grid]): ``values``
    per layer, one per kind of ``kinds`` (NaN where the map is absent)."""

    kinds: list[str]
    values: list[list[float]]


class EqualDamageComparison(Record):
    """Zero-ablating the top ``k`` neurons against the mean-difference steering vector at the multiplier of the same
    KL ([`equal_damage_comparison`][persona_interp.studies.atlas.equal_damage_comparison]): each shift is
    ``[value, low, high]`` (paired, against the base model, nats/token) over ``n`` items."""

    k: int
    ablation_kl: float
    steering_layer: int
    steering_multiplier: float
    steering_kl: float
    steer_seek_shift: list[float]
    steer_reject_shift: list[float]
    ablation_shift: list[float]
    n: int

    def shift(self, name: str) -> Estimate:
        """The shift ``name`` (``"ablation"``, ``"steer_seek"`` or ``"steer_reject"``) as an estimate.

        Examples:
            >>> load_atlas("reports/atlas/power.json").equal_damage.shift("ablation").n
            48
        """
        value, low, high = getattr(self, f"{name}_shift")
        return Estimate(value, low, high, self.n)


class AtlasStudy(Record):
    """One atlas run ([`persona_atlas`][persona_interp.studies.atlas.persona_atlas]): the localisation, and, unless
    it was localisation only, the dose–response rows and the equal-damage comparison (``None`` otherwise), and the
    [`Provenance`][persona_interp.report.results.Provenance] of the run (``None`` in files from before it was recorded)."""

    persona: str
    config: RecordedAtlasConfig
    fit_items: int
    signature_data: list[SignatureData]
    overlap: list[PairOverlap]
    grids: dict[str, Grid]
    signature_cosine: list[float]
    top_heads: list[UnitDivergence]
    top_neurons: list[UnitDivergence]
    dose_response: list[DoseRow] | None = None
    equal_damage: EqualDamageComparison | None = None
    provenance: Provenance | None = None                 # which model, dtype, CPU and code made it (None: not recorded)


def parse_atlas(data: Any, source: str = "atlas") -> AtlasStudy:
    """An atlas's JSON value, validated (``source`` names it in errors)."""
    return validated(AtlasStudy, data, source)


def load_atlas(path: str | Path) -> AtlasStudy:
    """An atlas file (``persona-interp analyse``'s JSON), validated: a missing or misspelt field is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming the file and the field.

    Examples:
        >>> _ = Path("atlas.json").write_text(Path("reports/atlas/power.json").read_text().replace('"fit_items"', '"fit_item"'))
        >>> load_atlas("atlas.json")
        Traceback (most recent call last):
        persona_interp.report.results.ResultsError: atlas.json: fit_items: Field required; fit_item: Extra inputs are not permitted
    """
    return parse_atlas(read_json(path, "an atlas of persona-interp analyse"), str(path))


class SteeringChoice(Record):
    """The steering layer and multiplier a regime comparison chose on the validation split."""

    layer: int
    multiplier: float


class RegimesStudy(RegimeComparison):
    """The regime comparison of one persona pair ([`run_regimes`][persona_interp.studies.regimes.run_regimes]):
    [`RegimeComparison`][persona_interp.analysis.regimes.RegimeComparison] with what it was run on, the 95 % band of
    cosines between random directions and the run's [`Provenance`][persona_interp.report.results.Provenance] (each
    ``None`` in files from before it was recorded)."""

    persona: str
    sparsity: float
    seed: int
    fit_items: int
    validation_items: int
    steering: SteeringChoice
    random_cosine_band: list[float] | None = None
    provenance: Provenance | None = None                 # which model, dtype, CPU and code made it (None: not recorded)


def parse_regimes(data: Any, source: str = "regimes") -> RegimesStudy:
    """A regime comparison's JSON value, validated (``source`` names it in errors)."""
    return validated(RegimesStudy, data, source)


def load_regimes(path: str | Path) -> RegimesStudy:
    """A regime comparison file (``persona-interp regimes``'s JSON), validated: a missing or misspelt field is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming the file and the field.

    Examples:
        >>> study = load_regimes("reports/regimes/power.json")
        >>> study.persona, sorted(study.effect), study.effect["prompt"].n == study.n_items, study.random_cosine_band
        ('power', ['mask', 'prompt', 'steering'], True, None)
    """
    return parse_regimes(read_json(path, "a regime comparison of persona-interp regimes"), str(path))


class TypeRow(Row):
    """One condition on one axis of a composed type
    ([`type_comparison`][persona_interp.studies.composition.type_comparison]): the axis's ``pole`` the type takes,
    the condition's mask ``sparsity`` (0 without a mask), accuracy toward the pole and the paired margin shift toward
    it against the base model (95 % intervals) over ``n`` test items."""

    type: str
    axis: str
    pole: str
    condition: str
    sparsity: float
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    shift: float
    shift_low: float
    shift_high: float


class FractionRow(Row):
    """One condition of a fractional curve ([`fractional_curve`][persona_interp.studies.composition.fractional_curve]):
    its ``fraction`` of the seek pole (``None``, and still written, for the random control), the per-token margin
    toward seek, its paired shift against the base model and the seek accuracy (95 % intervals) over ``n`` items."""

    condition: str
    fraction: float | None
    n: int
    margin: float
    margin_low: float
    margin_high: float
    shift: float
    shift_low: float
    shift_high: float
    accuracy_seek: float
    accuracy_low: float
    accuracy_high: float


class Trend(Record):
    """[`Trend`][persona_interp.evaluation.stats.Trend] as a file records it, its verdicts ``monotonic`` and
    ``increasing`` included: the per-item ``slope`` with its interval, the Spearman correlation of the means, and
    the reversals of the mean between neighbouring settings (``significant_reversals``: those whose interval lies
    below 0)."""

    spearman: float
    reversals: int
    significant_reversals: int
    slope: Estimate
    monotonic: bool
    increasing: bool


class FractionCurve(Record):
    """The fractional curve of one axis ([`fractional_curve`][persona_interp.studies.composition.fractional_curve]):
    a row per fraction, increasing, then the random mask of the same ``sparsity``; the base model's margin and the
    trend of the per-item margins along the fractions."""

    sparsity: float
    seed: int
    rows: list[FractionRow]
    base_margin: Estimate
    trend: Trend

    def fractions(self) -> list[FractionRow]:
        """The rows of the fractional masks, without the random control.

        Examples:
            >>> [row.fraction for row in load_composition("reports/composition.json").curve.fractions()]
            [0.0, 0.25, 0.5, 0.75, 1.0]
        """
        return [row for row in self.rows if row.fraction is not None]

    def control(self) -> FractionRow | None:
        """The random mask's row (``None`` where there is none)."""
        return next((row for row in self.rows if row.fraction is None), None)


class CompositionStudy(Record):
    """The composition study ([`run_composition`][persona_interp.studies.composition.run_composition]): the type
    comparison of ``type`` and the fractional curve of ``axis``, with the test items used per axis and the run's
    [`Provenance`][persona_interp.report.results.Provenance] (``None`` in files from before it was recorded)."""

    type: str
    sparsity: float
    axis: str
    seed: int
    n_test: dict[str, int]
    type_rows: list[TypeRow]
    curve: FractionCurve
    provenance: Provenance | None = None                 # which model, dtype, CPU and code made it (None: not recorded)


def parse_composition(data: Any, source: str = "composition") -> CompositionStudy:
    """A composition study's JSON value, validated (``source`` names it in errors)."""
    return validated(CompositionStudy, data, source)


def load_composition(path: str | Path) -> CompositionStudy:
    """A composition study file (``persona-interp compose``'s JSON), validated: a missing or misspelt field is a
    [`ResultsError`][persona_interp.report.results.ResultsError] naming the file and the field.

    Examples:
        >>> study = load_composition("reports/composition.json")
        >>> study.type, len(study.type_rows), study.curve.trend.slope.signed(), study.curve.control().condition
        ('INTJ', 24, '+1.00 [+0.54, +1.46]', 'random@0.3')
    """
    return parse_composition(read_json(path, "a composition study of persona-interp compose"), str(path))
