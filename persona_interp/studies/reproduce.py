"""The main job: calibrate, build masks, evaluate every condition, write a report and figures.

Example (minutes to hours, so skipped in the doctests; tests/test_pipeline.py runs the job on a tiny model):
    >>> from persona_interp.studies.config import QUICK
    >>> reproduce(QUICK, "results/quick")      # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from persona_interp.analysis.diagnostics import overlap_table, stability, statistic_table
from persona_interp.data.personas import (
    SIDES,
    NeutralSplit,
    PersonaDataset,
    load_neutral_texts,
    load_persona,
    neutral_split,
    persona_names,
    persona_prompts,
)
from persona_interp.data.retrieval import Retriever
from persona_interp.evaluation.checkpoint import EvaluationCheckpoint, SearchCheckpoint, checkpoint_key
from persona_interp.evaluation.controls import damage_matched_random
from persona_interp.evaluation.evaluate import budget_winners, control_comparison, equal_damage_summary, evaluate, frontier_rows
from persona_interp.evaluation.rows import SteeringSearchRow
from persona_interp.evaluation.scoring import DamageReference
from persona_interp.evaluation.search import budget_picks, fallback
from persona_interp.evaluation.tuning import build_candidate, select_lora, select_masks, select_prompts, select_steering
from persona_interp.interventions.conditions import (
    Condition,
    LoRACondition,
    MaskCondition,
    Prompt,
    SteeringCondition,
    WeightEditCondition,
)
from persona_interp.interventions.ode_steering import ODESteering, ode_steerings
from persona_interp.interventions.steering import SteeringVector, answer_residual_means, vectors_from_differences
from persona_interp.interventions.weight_edit import DirectionalEdit
from persona_interp.masks.builders import FamilyCache, random_mask
from persona_interp.masks.registry import MethodInputs, MethodSpec, method_names, methods
from persona_interp.model.adapter import get_adapter
from persona_interp.model.load import load_model, resolve_dtype
from persona_interp.model.machine import CPU
from persona_interp.progress import counting_forwards, scope, stage, stage_times
from persona_interp.report.figures import plot_persona, plot_stability
from persona_interp.report.markdown import write_report
from persona_interp.report.results import (
    NOT_RECORDED,
    SCHEMA_VERSION,
    Diagnostics,
    LoRASearch,
    MaskSearch,
    PersonaResult,
    Provenance,
    RecordedConfig,
    RunResults,
    StageTime,
    SteeringSearch,
    Used,
    git_revision,
    load_results,
    model_name,
    now,
)
from persona_interp.signatures import Signature, collect_signatures
from persona_interp.studies.config import ReproduceConfig

PACKAGE = Path(__file__).resolve().parents[1]          # persona_interp/: its sources are the code_digest


def persona_conditions(model: Any, persona: str, config: ReproduceConfig, progress: bool = True, *,
                       neutral: Signature | None = None,
                       checkpoint: SearchCheckpoint | None = None) -> tuple[list[Condition], Used, dict[str, Signature]]:
    """Every condition of one persona, each regime's dose chosen on the validation split:

    * base; the persona prompts (phrasing searched) and RAG;
    * the paper's rows at each ``config.sparsities``: Wanda (per pole), Contrastive-Wanda, Contrastive-Sparse by
      the text's and by the code's rule, a random control; each mask also **with its pole's prompt on** (the
      paper's protocol, ``+prompt``), beside a random mask with each prompt;
    * per damage budget (``config.damage_budgets``, KL nats/token on neutral texts apart from the report's), the
      candidate of each regime (steering: layer × multiplier; ODE: its strength; weight-edit steering: layer × α;
      LoRA: epochs; each mask method: sparsity × modules × layers × token scope × statistic × φ; the signature-only
      methods and ``config.damage_aware_methods``) with the largest validation separation within the budget, named
      ``REGIME-SIDE@klB``; masks again with their prompt and with a random control removing the same weights per row;
    * beside each same-sparsity control, per pole, the random mask of equal damage on the selection texts
      (``random-matched:CONDITION``, for the methods in ``config.matched_controls``).

    The neutral texts are split three ways ([`neutral_split`][persona_interp.data.personas.neutral_split]): the
    reported damage (``config.n_neutral``, measured by [`reproduce`][persona_interp.studies.reproduce.reproduce]), the
    selection texts every search enforces its budgets on, and the fit texts the damage-aware methods fit on (with
    ``neutral``, their neutral signature: collected on the fit texts here when not given). ``checkpoint``: every
    search's rows as measured ([`SearchCheckpoint`][persona_interp.evaluation.checkpoint.SearchCheckpoint]), read back
    by a resumed run, with the LoRA adapters and learned gates the searches trained (signatures, gradient scores and
    the picks' controls are computed again).

    Returns the conditions, what was used to build them (every search table and the mask diagnostics), and the
    two poles' signatures."""
    train = load_persona(persona, "train").without_questions(test_items(persona, config).questions())
    duplicates = train.duplicates()
    if duplicates or train.meta["dropped"]:
        warnings.warn(f"{persona}: dropped {train.meta['dropped']} calibration item(s) whose question is in the test set; "
                      f"{len(duplicates)} question(s) occur more than once (kept on one side of the split)", stacklevel=2)
    fit, validation = train.split(config.validation_fraction, seed=config.seed)
    if config.n_calibration:
        fit = fit.sample(config.n_calibration, seed=config.seed)
    scopes = list(dict.fromkeys([config.token_scope, *(config.mask_search.token_scopes if config.mask_search else [])]))
    by_scope: dict[str, tuple[Signature, Signature]] = {}
    with stage("signatures", total=len(scopes) * len(SIDES), progress=progress) as bar:
        for token_scope in scopes:
            pair = []
            for side in SIDES:
                pair.append(collect_signatures(model, fit, side, token_scope=token_scope, batch_size=config.batch_size,
                                               max_tokens=config.max_tokens, per_sample=token_scope == config.token_scope,
                                               progress=progress))
                bar.update()
            by_scope[token_scope] = (pair[0], pair[1])
    sig: dict[str, Signature] = dict(zip(SIDES, by_scope[config.token_scope]))
    if config.n_validation:
        validation = validation.sample(config.n_validation, seed=config.seed)
    used = Used(fit_items=len(fit), validation_items=len(validation), split=validation.meta.get("split"),
                test_leaks_dropped=train.meta["dropped"], duplicate_questions=len(duplicates),
                signature_tokens={side: sig[side].n_tokens for side in SIDES})
    texts = run_neutral_texts(config)
    with stage("selection damage reference", progress=progress):
        selection = DamageReference.build(model, texts.selection, config.batch_size)
    used.selection_neutral_texts, used.fit_neutral_texts = config.n_selection_neutral, config.n_fit_neutral
    conditions: list[Condition] = [Condition()]
    prompts: dict[str, str] = {side: persona_prompts(persona, side)[0] for side in SIDES}
    if config.prompt_search:
        with stage("prompt search", progress=progress):
            phrasing = select_prompts(model, persona_prompts(persona, "seek"), persona_prompts(persona, "reject"), validation,
                                    batch_size=config.batch_size, checkpoint=_part(checkpoint, "prompts"))
        prompts, used.prompt_search = {"seek": phrasing.seek, "reject": phrasing.reject}, phrasing.table
    for side in SIDES:
        conditions.append(Prompt(f"prompt-{side}", side=side, system=prompts[side], pair="prompt"))
    retriever = Retriever(list(fit))
    for side in SIDES:
        conditions.append(Prompt(f"rag-{side}", side=side, regime="rag", pair="rag",
                                 system=functools.partial(retriever.system_prompt, side=side, k=config.rag_k)))
    steering, used.steering_search = steering_conditions(model, fit, validation, config, selection, progress,
                                                         checkpoint=checkpoint)
    conditions += steering
    if config.lora is not None:
        choice = select_lora(model, list(fit), list(validation), config.lora, reference=selection,
                             stop_above=max(config.damage_budgets), budgets=config.damage_budgets, racing=config.racing,
                             batch_size=config.batch_size, progress=progress, checkpoint=_part(checkpoint, "lora"))
        used.lora_search = LoRASearch(epochs=choice.epochs, table=choice.table, config=config.lora)
        for budgets, index in budget_picks(choice.table, config.damage_budgets):
            for side in SIDES:
                conditions.append(LoRACondition(f"lora-{side}@kl{budgets[0]:g}", side=side, lora=choice.runs[side][index],
                                                pair=f"lora@kl{budgets[0]:g}", budgets=budgets,
                                                meta={"chosen": choice.table[index]}))
    families = FamilyCache(model)                   # every table below ranks each (method, options, signatures) once
    with stage("paper masks", total=len(config.sparsities), progress=progress) as bar:
        for rho in config.sparsities:
            conditions += paper_mask_conditions(model, persona, by_scope[config.token_scope], rho, prompts, config, families,
                                                selection=selection, used=used)
            bar.update()
    if config.mask_search is not None:
        searched = searched_methods(config)
        if neutral is None and any("neutral_signatures" in spec.needs for spec in searched):
            neutral = neutral_signature(model, config, progress)
        inputs = MethodInputs(neutral=neutral, items=list(fit), neutral_texts=texts.fit, persona=persona,
                              store=checkpoint.artefacts if checkpoint is not None else None)
        conditions += budget_mask_conditions(model, persona, by_scope, validation, selection, prompts, config, used,
                                             progress, families, inputs=inputs, checkpoint=checkpoint)
    if config.diagnostics:
        used.diagnostics = mask_diagnostics(model, persona, sig, validation, config, progress, families)
    return conditions, used, sig


def _part(checkpoint: SearchCheckpoint | None, name: str) -> SearchCheckpoint | None:
    return None if checkpoint is None else checkpoint.part(name)


def searched_methods(config: ReproduceConfig) -> list[MethodSpec]:
    """The registered methods with poles the main job's mask search runs: every method that needs only the poles'
    signatures, and those of ``config.damage_aware_methods`` (a listed method that is not registered, or that
    needs neutral texts when ``config.n_fit_neutral`` is 0, is an error).

    Examples:
        >>> from persona_interp.studies.config import QUICK
        >>> [spec.name for spec in searched_methods(QUICK)][-1]
        'retain_ratio'
    """
    unknown = [name for name in config.damage_aware_methods if name not in method_names()]
    if unknown:
        raise ValueError(f"damage_aware_methods: unknown method(s) {unknown}; registered: {method_names()}")
    available = {"signatures", "calibration_items", *(("neutral_signatures", "neutral_texts") if config.n_fit_neutral else ())}
    chosen = [spec for spec in methods(poles=True) if spec.needs <= {"signatures"} or spec.name in config.damage_aware_methods]
    lacking = [spec.name for spec in chosen if not spec.needs <= available]
    if lacking:
        raise ValueError(f"damage_aware_methods {lacking} fit on neutral texts: set n_fit_neutral > 0")
    return chosen


def run_neutral_texts(config: ReproduceConfig) -> NeutralSplit:
    """The run's neutral texts, three disjoint parts: ``config.n_neutral`` reported, ``n_selection_neutral``
    selection, ``n_fit_neutral`` fit texts ([`neutral_split`][persona_interp.data.personas.neutral_split])."""
    return neutral_split(config.n_neutral, config.n_selection_neutral, config.n_fit_neutral, load_neutral_texts())


def neutral_signature(model: Any, config: ReproduceConfig, progress: bool = True) -> Signature:
    """The neutral-text signature of the run: collected on its fit texts (never a selection or reported text)."""
    texts = run_neutral_texts(config).fit
    return collect_signatures(model, texts, batch_size=config.batch_size, max_tokens=config.max_tokens, progress=progress)


def other_persona_texts(persona: str, config: ReproduceConfig) -> list[str]:
    """The second damage measure's texts: ``config.n_other_texts`` questions with one of their answers (alternating
    poles) from the other personas' training splits, a seeded sample; no search and no method ever sees them.

    Examples:
        >>> from persona_interp.studies.config import QUICK
        >>> len(other_persona_texts("power", QUICK)), other_persona_texts("power", QUICK) == other_persona_texts("power", QUICK)
        (8, True)
    """
    if not config.n_other_texts:
        return []
    items = [item for name in persona_names() if name != persona for item in load_persona(name, "train")]
    chosen = random.Random(config.seed).sample(items, min(config.n_other_texts, len(items)))
    return [f"{item.question}\n{item.matching if i % 2 == 0 else item.not_matching}" for i, item in enumerate(chosen)]


def test_items(persona: str, config: ReproduceConfig) -> PersonaDataset:
    """The test items a run scores (``config.n_test`` of them, seeded); calibration never uses their questions."""
    test = load_persona(persona, "test")
    return test.sample(config.n_test, seed=config.seed) if config.n_test else test


def _with_prompt(cond: MaskCondition, prompts: dict[str, str], control: str | None = None) -> MaskCondition:
    """The paper's protocol: ``cond``'s mask with its pole's persona prompt on (damage: the mask's own)."""
    assert cond.side is not None   # a pole's mask
    return dataclasses.replace(cond, name=f"{cond.name}+prompt", system=prompts[cond.side], pair=f"{cond.pair}+prompt",
                               prompt_of=f"prompt-{cond.side}", damage_of=cond.name, control=control, matched_control=None)


def _matched_control(model: Any, cond: MaskCondition, selection: DamageReference | None, config: ReproduceConfig,
                     used: Used | None) -> list[Condition]:
    """The random mask whose damage on ``selection`` matches ``cond``'s mask
    ([`damage_matched_random`][persona_interp.evaluation.controls.damage_matched_random]), named
    ``random-matched:CONDITION`` and set as ``cond``'s ``matched_control``; nothing when ``config.matched_controls``
    leaves out its method. The search (target, KL reached, every sparsity tried) goes to ``used.matched_controls``."""
    spec = config.matched_controls
    if spec is None or selection is None or cond.regime not in spec.methods:
        return []
    assert cond.mask is not None   # a method's mask condition
    found = damage_matched_random(model, cond.mask, selection, seed=config.seed, tolerance=spec.tolerance, atol=spec.atol,
                                  max_iter=spec.max_iter)
    name = f"random-matched:{cond.name}"
    cond.matched_control = name
    if used is not None:
        used.matched_controls = {**(used.matched_controls or {}), name: found.record()}
    return [MaskCondition(name, regime="random", mask=found.mask, meta={"matched_to": cond.name})]


def paper_mask_conditions(model: Any, persona: str, signatures: tuple[Signature, Signature], rho: float,
                          prompts: dict[str, str], config: ReproduceConfig, families: FamilyCache | None = None, *,
                          selection: DamageReference | None = None, used: Used | None = None) -> list[Condition]:
    """Every mask method at sparsity ``rho`` (default modules, the run's token scope, the paper's norm statistic,
    ReLU), each alone and with its pole's prompt; a random mask alone and with each prompt as their controls, and
    with ``selection`` the damage-matched random mask of each (``config.matched_controls``)."""
    control = f"random@{rho}"
    control_mask = random_mask(model, rho, seed=config.seed, modules=config.modules)
    conditions: list[Condition] = [MaskCondition(control, regime="random", mask=control_mask)]
    for side in SIDES:
        conditions.append(MaskCondition(f"{control}+prompt-{side}", side=side, regime="random", mask=control_mask,
                                        system=prompts[side], pair=f"{control}+prompt", damage_of=control))
    for spec in methods(poles=True, available={"signatures"}):
        method = spec.name
        pair = spec.family(model, MethodInputs(*signatures, persona=persona), families=families,
                           modules=config.modules).pair(rho, modules=config.modules)
        for side, mask in zip(SIDES, pair):
            alone = MaskCondition(f"{method}-{side}@{rho}", side=side, regime=method, mask=mask, pair=f"{method}@{rho}",
                                  control=control)
            conditions += [*_matched_control(model, alone, selection, config, used), alone,
                           _with_prompt(alone, prompts, f"{control}+prompt-{side}")]
    return conditions


def budget_mask_conditions(model: Any, persona: str, by_scope: dict[str, tuple[Signature, Signature]],
                           validation: PersonaDataset, selection: DamageReference, prompts: dict[str, str],
                           config: ReproduceConfig, used: Used, progress: bool = True,
                           families: FamilyCache | None = None, *, inputs: MethodInputs | None = None,
                           checkpoint: SearchCheckpoint | None = None) -> list[Condition]:
    """Each searched mask method's search ([`searched_methods`][persona_interp.studies.reproduce.searched_methods];
    [`select_masks`][persona_interp.evaluation.tuning.select_masks], damage on ``selection``) and its pick per damage
    budget, named ``METHOD-SIDE@klB``, alone and with its prompt, each pick with a random mask that removes the same
    number of weights per row (``random@klB-METHOD``) and, per pole, the random mask of equal damage on ``selection``
    (``random-matched:METHOD-SIDE@klB``, ``config.matched_controls``). ``inputs``: what the damage-aware methods
    read beside the poles' signatures (a neutral signature, the fit items, the fit texts). The tables go to ``used``."""
    if config.mask_search is None:
        raise ValueError("budget_mask_conditions needs config.mask_search (the mask search space)")
    space = dataclasses.replace(config.mask_search, stop_above=max(config.damage_budgets))
    conditions: list[Condition] = []
    searches: dict[str, MaskSearch] = {}
    for method in [spec.name for spec in searched_methods(config)]:
        choice = select_masks(model, method, by_scope, validation, space, reference=selection, persona=persona,
                              budgets=config.damage_budgets, racing=config.racing, checkpoint=_part(checkpoint, f"masks {method}"),
                              batch_size=config.batch_size, families=families, inputs=inputs, progress=progress)
        searches[method] = MaskSearch(chosen=choice.config, table=choice.table)
        for budgets, index in budget_picks(choice.table, config.damage_budgets):
            tag = f"kl{budgets[0]:g}"
            pair = build_candidate(model, method, by_scope, choice.table[index], tau=space.tau, persona=persona,
                                   families=families, inputs=inputs)
            control = f"random@{tag}-{method}"
            conditions.append(MaskCondition(control, regime="random", mask=random_mask(model, pair[0].sparsity(), seed=config.seed, like=pair[0])))
            for side, mask in zip(SIDES, pair):
                alone = MaskCondition(f"{method}-{side}@{tag}", side=side, regime=method, mask=mask, pair=f"{method}@{tag}",
                                      control=control, budgets=budgets, meta={"chosen": choice.table[index]})
                conditions += [*_matched_control(model, alone, selection, config, used), alone, _with_prompt(alone, prompts)]
    used.mask_search = searches
    return conditions


def mask_diagnostics(model: Any, persona: str, sig: dict[str, Signature], validation: PersonaDataset,
                     config: ReproduceConfig, progress: bool = True,
                     families: FamilyCache | None = None) -> Diagnostics:
    """What the masks are made of, at the first paper sparsity: the like-for-like overlap table, the two
    statistics (share of channels with z > 0, which pole's mask breaks the model), and stability over halves
    of the calibration data ([`stability`][persona_interp.analysis.diagnostics.stability])."""
    rho = config.sparsities[0]
    with stage("diagnostics", total=3, progress=progress) as bar:
        reference = DamageReference.build(model, run_neutral_texts(config).reported, config.batch_size)
        overlap = overlap_table(model, sig["seek"], sig["reject"], rho, persona=persona, families=families)
        bar.update()
        statistics = statistic_table(model, sig["seek"], sig["reject"], rho, reference, persona=persona, families=families)
        bar.update()
        halves = stability(model, sig["seek"], sig["reject"], rho, validation, draws=config.stability_draws, seed=config.seed,
                           batch_size=config.batch_size, persona=persona, families=families, progress=progress)
        bar.update()
    return Diagnostics(sparsity=rho, overlap=overlap, statistics=statistics, stability=halves)


def steering_conditions(model: Any, fit: PersonaDataset, validation: PersonaDataset, config: ReproduceConfig,
                        selection: DamageReference | None = None, progress: bool = True, *,
                        checkpoint: SearchCheckpoint | None = None) -> tuple[list[Condition], dict[str, SteeringSearch]]:
    """Mean-difference (CAA), PCA and ODE steering (barrier on ``config.ode_features`` random Fourier
    features) and weight-edit steering along the mean-difference direction (``config.weight_edit_strengths``;
    [`DirectionalEdit`][persona_interp.interventions.weight_edit.DirectionalEdit]), each searched over layer ×
    multiplier on the validation split with its damage on ``selection``; per damage budget the pick with the largest
    separation: +α is the seek condition, −α the reject condition. One pass over the fit items feeds all four. Returns
    the conditions and each method's search."""
    n_layers = get_adapter(model).n_layers
    layers = sorted({min(n_layers - 1, round(f * n_layers)) for f in config.steering_layers})
    conditions: list[Condition] = []
    search: dict[str, SteeringSearch] = {}
    with stage("steering", total=len(SIDES) + 3 + bool(config.weight_edit_strengths), progress=progress) as bar:
        means: dict[str, torch.Tensor] = {}
        for side in SIDES:
            means[side] = answer_residual_means(model, fit, layers, side=side, batch_size=config.batch_size,
                                                max_tokens=config.max_tokens, progress=progress)
            bar.update()
        mean_difference = vectors_from_differences("mean_difference", means["seek"] - means["reject"], layers)
        candidates: dict[str, Mapping[int, SteeringVector | ODESteering | DirectionalEdit]] = {
            "mean_difference": mean_difference, "pca": vectors_from_differences("pca", means["seek"] - means["reject"], layers)}
        candidates["ode"] = ode_steerings(model, fit, layers, features=config.ode_features, means=means, seed=config.seed)
        doses = dict.fromkeys(candidates, config.steering_multipliers)
        if config.weight_edit_strengths:
            candidates["weight_edit"] = {layer: DirectionalEdit.from_vector(vector)
                                         for layer, vector in mean_difference.items()}
            doses["weight_edit"] = config.weight_edit_strengths
        choices = {}
        for method, vectors in candidates.items():
            choices[method] = select_steering(model, vectors, validation, doses[method], reference=selection,
                                              stop_above=max(config.damage_budgets) if selection else None,
                                              budgets=config.damage_budgets if selection else (),
                                              # not the weight edit: a row's poles are oriented after the search
                                              # (_oriented), so a negative separation can still win
                                              racing=config.racing if selection and method != "weight_edit" else None,
                                              batch_size=config.batch_size, progress=progress,
                                              checkpoint=_part(checkpoint, f"steering {method}"))
            bar.update()
    for method, choice in choices.items():
        vectors = candidates[method]
        table = _oriented(choice.table) if method == "weight_edit" else choice.table
        best = table[fallback(table)]            # the best scored row; the least damaging when none was scored
        search[method] = SteeringSearch(layer=best.layer, multiplier=best.multiplier, table=table)
        for budgets, index in (budget_picks(table, config.damage_budgets) if selection else
                               [([None], fallback(table))]):
            row = table[index]
            tag = f"@kl{budgets[0]:g}" if budgets[0] is not None else ""
            for side, sign in zip(SIDES, (1.0, -1.0)):
                name = f"{method}-{side}{tag}"
                relations: dict[str, Any] = dict(pair=f"{method}{tag}", budgets=None if budgets == [None] else budgets, meta={"chosen": row})
                orientation = row.orientation if row.orientation is not None else 1.0
                vector, multiplier = vectors[row.layer], sign * orientation * row.multiplier
                conditions.append(WeightEditCondition(name, side=side, edit=vector, multiplier=multiplier, **relations)
                                  if isinstance(vector, DirectionalEdit) else
                                  SteeringCondition(name, side=side, regime=method, vector=vector, multiplier=multiplier,
                                                    **relations))
    return conditions, search


def _oriented(table: list[SteeringSearchRow]) -> list[SteeringSearchRow]:
    """A weight-edit search table with each row's poles oriented: the edit scales what the maps write along r̂
    (``r̂ r̂ᵀ`` ignores r̂'s sign), so whether amplifying (+α) or attenuating (−α) moves toward the seek pole depends
    on which way the model already leans; a row whose validation separation is negative swaps its poles
    (``orientation`` −1: the seek condition attenuates), so the budgeted picks compare like with steering's. A row the
    search did not score (over its damage limit) is left as it is."""
    return [row if row.separation is None else row.replace(orientation=1.0) if row.separation >= 0 else
            row.replace(orientation=-1.0, separation=-row.separation, seek_margin=row.reject_margin,
                        reject_margin=row.seek_margin) for row in table]


def reproduce(config: ReproduceConfig, out_dir: str | Path, figures_dir: str | Path | None = None, *,
              force: bool = False, resume: bool = False, allow_mixed: bool = False, model: Any = None,
              progress: bool = True) -> Path:
    """Run the whole pipeline and write ``report.md`` and ``results.json`` (with per-item margins)
    to ``out_dir``, the calibration signatures to ``out_dir/signatures``, the LoRA adapters to
    ``out_dir/lora`` and figures to ``figures_dir`` (default ``out_dir/figures``). Refuses to write
    into a non-empty ``out_dir`` or ``figures_dir`` unless ``force``. With ``resume`` the personas already
    finished in ``out_dir/results.json`` under the same configuration are kept and only the others run (a full
    run can span several sessions; each persona records the revision and provenance that computed it); a file
    made by another model (name or weights), dtype, device or CPU kind (its bfloat16 instructions) is refused
    unless ``allow_mixed``, and the report then names each persona's set-up. A persona cut off resumes where it
    stopped: the search rows already measured are read back from ``out_dir/checkpoints/PERSONA-searches.json`` and
    the conditions already scored from ``out_dir/checkpoints/PERSONA.json`` (when the searches came out the same,
    [`evaluation_key`][persona_interp.studies.reproduce.evaluation_key]); both are valid only for the same
    configuration, set-up and code (a digest of the package's source); without ``resume`` they are removed.

    Example (the full job, skipped in the doctests):
        >>> from persona_interp.studies.config import FULL
        >>> reproduce(FULL, "reports", "figures", resume=True)      # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    figures_dir = Path(figures_dir) if figures_dir else out_dir / "figures"
    revision, started = git_revision(), now()
    if not (resume or force):
        for folder in dict.fromkeys([out_dir, figures_dir]):
            if folder.exists() and any(folder.iterdir()):
                raise FileExistsError(f"{folder} is not empty; pass force=True (--force) to overwrite its files, "
                                      "or resume=True (--resume) to continue a run with the same configuration")
    torch.manual_seed(config.seed)
    name = model_name(model)
    if model is None or isinstance(model, (str, os.PathLike)):
        with stage("load model", progress=progress):
            model = load_model(model, dtype=config.dtype)
    elif config.dtype != "auto" and get_adapter(model).dtype != resolve_dtype(config.dtype):   # never cast a model the caller built
        raise ValueError(f"the model passed in is {get_adapter(model).dtype}, the configuration says {config.dtype}: "
                         "set config.dtype to match, or to 'auto' (the model's dtype is recorded in the results)")
    provenance = Provenance.collect(model, name, seed=config.seed, revision=revision, started=started)
    results = RunResults(schema_version=SCHEMA_VERSION, config=RecordedConfig.model_validate(dataclasses.asdict(config)),
                         revision=revision, started=started, provenance=provenance, personas={})
    if resume:
        results.personas = _finished_personas(out_dir / "results.json", config, provenance, allow_mixed)
    elif (out_dir / "checkpoints").is_dir():                   # starting again: no evaluation is read back
        for stale in (out_dir / "checkpoints").glob("*.json"):
            stale.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    neutral = run_neutral_texts(config).reported
    report = write_report(out_dir, figures_dir, config, results)
    fitted: Signature | None = None                     # the neutral signature, collected once per run when needed
    for persona in config.personas:
        if persona in results.personas:
            continue
        first_stage = len(stage_times())
        with scope(persona), counting_forwards(model):
            if fitted is None and config.mask_search is not None and any(
                    "neutral_signatures" in spec.needs for spec in searched_methods(config)):
                with stage("neutral signature", progress=progress):
                    fitted = neutral_signature(model, config, progress)
            searches = SearchCheckpoint(out_dir / "checkpoints" / f"{persona}-searches.json",
                                        checkpoint_key(_run_parts(persona, config, provenance)))
            conditions, used, signatures = persona_conditions(model, persona, config, progress, neutral=fitted,
                                                              checkpoint=searches)
            for side, signature in signatures.items():                  # reusable by `analyse` and the notebooks
                signature.save(out_dir / "signatures" / f"{persona}_{side}.safetensors", overwrite=force or resume)
            test = test_items(persona, config)
            others = other_persona_texts(persona, config)
            used.other_texts = len(others)
            checkpoint = EvaluationCheckpoint(out_dir / "checkpoints" / f"{persona}.json",
                                              evaluation_key(persona, config, provenance, used, conditions, test, neutral, others))
            ev = evaluate(model, list(test), conditions, persona=persona, neutral_texts=neutral, other_texts=others,
                          batch_size=config.batch_size, progress=progress, checkpoint=checkpoint)
            with stage("report and figures", progress=progress):
                table, contrasts, controls = ev.table(), ev.contrasts(), control_comparison(ev)
                stages = [StageTime(name=r.name, seconds=round(r.seconds, 1), steps=r.count, forwards=r.forwards,
                                    rows=r.rows, tokens=r.tokens, peak_mb=round(r.peak_mb), peak_rise_mb=round(r.peak_rise_mb))
                          for r in stage_times()[first_stage:]]
                finished = now()
                entry = PersonaResult(revision=revision, finished=finished,
                                      provenance=provenance.model_copy(update={"finished": finished}), used=used,
                                      n_test=len(test), table=table, contrasts=contrasts, controls=controls,
                                      equal_damage=equal_damage_summary(table, contrasts, config.damage_budgets),
                                      prompt_additions=ev.prompt_additions(), frontier=frontier_rows(ev, contrasts),
                                      budget_winners=budget_winners(ev, contrasts, config.damage_budgets),
                                      per_item=ev.per_item(), damage=ev.damage, stages=stages)
                results.personas[persona] = entry
                report = write_report(out_dir, figures_dir, config, results)   # first, so a later failure keeps the persona
                for side in SIDES:                             # the fine-tuned adapters, reusable
                    lora = next((c.lora for c in conditions if isinstance(c, LoRACondition) and c.side == side), None)
                    if lora is not None:
                        lora.save(out_dir / "lora" / f"{persona}_{side}.safetensors", overwrite=force or resume)
                plot_persona(persona, entry, figures_dir)
                plot_stability(results, figures_dir / "stability")       # across the personas so far
                checkpoint.clear()                                       # the persona is in results.json now
                searches.clear()
    return report


def code_digest(root: Path = PACKAGE) -> str:
    """A digest of the package's source files (``persona_interp/**/*.py``): the code a checkpoint was computed with.

    Examples:
        >>> len(code_digest()), code_digest() == code_digest()
        (16, True)
    """
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def evaluation_key(persona: str, config: ReproduceConfig, provenance: Provenance, used: Used, conditions: list[Condition],
                   test: PersonaDataset, neutral: list[str], others: list[str]) -> str:
    """What a persona's evaluation checkpoint is valid for
    ([`checkpoint_key`][persona_interp.evaluation.checkpoint.checkpoint_key]): the configuration (its persona list
    apart), the model's provenance (name, weights, dtype, device, CPU kind), the code
    ([`code_digest`][persona_interp.studies.reproduce.code_digest]), every search table and diagnostic that chose
    and describes the conditions (``used``), the conditions' names, the test items and both damage measures' texts.
    A resumed run builds its conditions again (its searches read back from their own checkpoint, keyed by the same
    persona, configuration, set-up and code); the evaluation checkpoint is read back only when all of these come
    out the same."""
    return checkpoint_key({**_run_parts(persona, config, provenance), "used": used.model_dump(mode="json"),
                           "conditions": [c.name for c in conditions], "test": [dataclasses.asdict(item) for item in test],
                           "neutral": neutral, "others": others})


def _run_parts(persona: str, config: ReproduceConfig, provenance: Provenance) -> dict[str, Any]:
    """What every checkpoint of a persona depends on: the persona, the configuration (its persona list apart), the
    model's set-up ([`RESUME_CHECKS`][persona_interp.studies.reproduce.RESUME_CHECKS]) and the code."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "personas"}
    machine = {what: str(get(provenance)) for what, get in RESUME_CHECKS.items()}
    return {"persona": persona, "config": options, "provenance": machine, "code": code_digest()}


RESUME_CHECKS = {"model": lambda p: p.model, "weights' fingerprint": lambda p: p.fingerprint, "dtype": lambda p: p.dtype,
                 "device": lambda p: p.device, "CPU kind": lambda p: p.cpu.kind if isinstance(p.cpu, CPU) else NOT_RECORDED}


def _finished_personas(path: Path, config: ReproduceConfig, provenance: Provenance,
                       allow_mixed: bool = False) -> dict[str, PersonaResult]:
    """The personas a previous run with the same configuration (``dtype`` apart: the resolved dtype is compared)
    finished (empty if there is none), refused when one of them ran on another model, dtype, device or CPU kind
    ([`RESUME_CHECKS`][persona_interp.studies.reproduce.RESUME_CHECKS]) unless ``allow_mixed``."""
    if not path.is_file():
        return {}
    previous = load_results(path)
    mine = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("personas", "dtype")}
    theirs = {k: v for k, v in previous.config.model_dump().items() if k not in ("personas", "dtype")}
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"cannot resume {path}: its configuration differs in {differ}; rerun with --force instead")
    kept = {p: entry for p, entry in previous.personas.items() if p in config.personas}
    for persona, entry in kept.items():
        differ = [f"{what} {get(entry.provenance)!r} there, {get(provenance)!r} now" for what, get in RESUME_CHECKS.items()
                  if get(entry.provenance) != get(provenance)]
        if differ and not allow_mixed:
            raise ValueError(f"cannot resume {path}: {persona} was computed on another set-up ({'; '.join(differ)}); "
                             "pass allow_mixed=True (--allow-mixed) to keep it anyway (the report names each persona's "
                             "set-up), or --force to start again")
    return kept
