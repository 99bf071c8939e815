"""The regimes study: prompt, mask and steering shifts of one persona on neutral text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from persona_interp.analysis.nulls import random_cosine_band
from persona_interp.analysis.regimes import compare_regimes
from persona_interp.data.personas import SIDES, calibration_split, load_neutral_texts, load_persona, persona_prompts
from persona_interp.evaluation.tuning import select_steering
from persona_interp.interventions.conditions import Condition, MaskCondition, Prompt, SteeringCondition
from persona_interp.interventions.steering import mean_difference_vectors
from persona_interp.masks.builders import contrastive_wanda_masks
from persona_interp.model.adapter import get_adapter
from persona_interp.report.results import Provenance
from persona_interp.report.study_results import RegimesStudy, SteeringChoice


def run_regimes(model: Any, persona: str, signatures: tuple[Any, Any], *, sparsity: float = 0.3,
                n_calibration: int = 64, n_validation: int = 16, n_items: int = 48, n_texts: int = 16,
                steering_layers: Sequence[float] = (0.35, 0.5, 0.65), multipliers: Sequence[float] = (2.0, 4.0, 8.0),
                seed: int = 0, figures_dir: str | Path | None = None, progress: bool = True) -> RegimesStudy:
    """The regime comparison of one persona pair on the embedded data: the default persona prompt,
    the Contrastive-Wanda masks at ``sparsity`` (from the saved ``signatures``) and mean-difference
    steering (layer and multiplier chosen on the validation split, as in the main job), compared on
    ``n_texts`` neutral texts and ``n_items`` held-out A/B items at the steering layer.

    Examples:
        >>> study = run_regimes(model, "power", (sig_seek, sig_reject), n_calibration=8, n_validation=4, n_items=4, n_texts=2,
        ...                     steering_layers=(0.5,), multipliers=(4.0,), progress=False)
        >>> study.layer, sorted(study.effect)
        (1, ['mask', 'prompt', 'steering'])
    """
    provenance = Provenance.collect(model, seed=seed)
    fit, validation = calibration_split(persona, seed=seed, n_fit=n_calibration, n_validation=n_validation)
    n_layers = get_adapter(model).n_layers
    layers = sorted({min(n_layers - 1, round(f * n_layers)) for f in steering_layers})
    vectors = mean_difference_vectors(model, fit, layers, progress=progress)
    choice = select_steering(model, vectors, validation, multipliers, progress=progress)
    cw_seek, cw_reject = contrastive_wanda_masks(model, *signatures, sparsity, persona=persona)
    prompt_seek, prompt_reject = (Prompt(f"prompt-{side}", side=side, system=persona_prompts(persona, side)[0]) for side in SIDES)
    caa_seek, caa_reject = (SteeringCondition(f"caa-{side}", side=side, vector=choice.vector, multiplier=sign * choice.multiplier)
                            for side, sign in zip(SIDES, (1.0, -1.0)))
    regimes: dict[str, tuple[Condition, Condition]] = {
        "prompt": (prompt_seek, prompt_reject),
        "mask": (MaskCondition("cw-seek", side="seek", mask=cw_seek), MaskCondition("cw-reject", side="reject", mask=cw_reject)),
        "steering": (caa_seek, caa_reject)}
    items = list(load_persona(persona, "test").sample(n_items, seed=seed))
    texts = load_neutral_texts()[-n_texts:]                   # the end of the set: the main job's perplexity uses the start
    comparison = compare_regimes(model, regimes, texts, items, layer=choice.layer, progress=progress)
    study = RegimesStudy(**dict(comparison), persona=persona, sparsity=sparsity, seed=seed, fit_items=len(fit),
                         validation_items=len(validation), steering=SteeringChoice(layer=choice.layer, multiplier=choice.multiplier),
                         random_cosine_band=list(random_cosine_band(get_adapter(model).d_model)),   # 95 % of random directions
                         provenance=provenance.done())
    if figures_dir:
        from persona_interp.report.figures import plot_regime_comparison

        plot_regime_comparison(study, f"{figures_dir}/regimes_{persona}", band=study.random_cosine_band,
                               title=f"{persona}: prompt vs Contrastive-Wanda@{sparsity} vs CAA (layer {choice.layer}, α {choice.multiplier:g})")
    return study
