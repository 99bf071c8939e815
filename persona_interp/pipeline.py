"""The main job: calibrate, build masks, evaluate every condition, write a report and figures.

Example:
    >>> from persona_interp.pipeline import QUICK, reproduce
    >>> reproduce(QUICK, "results/quick")
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapter import get_adapter
from .conditions import Condition, LoRACondition, MaskCondition, Prompt, SteeringCondition
from .data import (AI_PERSONAS, MBTI_AXES, REPO_ROOT, PersonaDataset, load_neutral_texts, load_persona,
                   persona_prompts)
from .evaluation import Evaluation, evaluate, markdown_table
from .figures import plot_accuracy, plot_frontier
from .diagnostics import overlap_table, statistic_table, stability
from .masks import MASK_METHODS, method_family, random_mask
from .models import load_model
from .retrieval import Retriever
from .signatures import Signature, collect_signatures
from .stats import paired_difference
from .storage import write_text
from .ode_steering import ode_steerings
from .steering import answer_residual_means, vectors_from_differences
from .lora import LoRAConfig, select_lora
from .scoring import DamageReference
from .tuning import MaskSpace, build_candidate, pick_within, select_masks, select_prompts, select_steering


@dataclass
class ReproduceConfig:
    """What the main job runs. Calibration items are split (seeded) into fit and validation parts;
    signatures use the fit part only, test items are only ever scored."""

    personas: list[str] = field(default_factory=lambda: [*AI_PERSONAS, *MBTI_AXES])
    sparsities: list[float] = field(default_factory=lambda: [0.3])     # the paper's rows (contra.py's default rho)
    n_calibration: int | None = None
    n_test: int | None = None
    validation_fraction: float = 0.2
    seed: int = 0
    token_scope: str = "all"
    batch_size: int = 8
    max_tokens: int = 256
    n_neutral: int = 24              # neutral texts of the reported damage
    n_selection_neutral: int = 8     # the next neutral texts: the damage every search sees (never the reported ones)
    stability_draws: int = 3
    diagnostics: bool = True         # overlap table, both statistics, stability (about 15 rankings of every weight)
    modules: list[str] | None = None
    rag_k: int = 3
    steering_layers: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.65])   # fractions of depth
    steering_multipliers: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    n_validation: int | None = 24
    ode_features: int | None = 256
    # the same validation split tunes every regime: masks (per method), prompt phrasing, LoRA epochs
    mask_search: MaskSpace | None = field(default_factory=lambda: MaskSpace(
        sparsities=[0.01, 0.03, 0.1, 0.3, 0.5], modules=[None, "mlp"], layer_ranges=["all", "late"],
        token_scopes=["all", "answer"], statistics=["norm", "rms"], phis=["relu", "softplus"], design="one_at_a_time",
        vary=["contrastive_wanda"]))
    prompt_search: bool = True
    lora: LoRAConfig | None = field(default_factory=lambda: LoRAConfig(epochs=3))
    damage_budgets: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5])   # KL (nats/token): each regime's picks
    dtype: str = "float32"           # the model's dtype ("bfloat16": the faster CPU path, see README)


QUICK = ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=24, n_test=16, n_neutral=4,
                        n_selection_neutral=4, stability_draws=2, rag_k=2, steering_layers=[0.5],
                        steering_multipliers=[4.0], n_validation=6, damage_budgets=[0.1, 0.5],
                        mask_search=MaskSpace(sparsities=[0.03, 0.3], modules=[None], layer_ranges=["all"],
                                              token_scopes=["all"], statistics=["norm", "rms"], design="one_at_a_time",
                                              vary=["contrastive_wanda"]),
                        lora=LoRAConfig(epochs=1))
FULL = ReproduceConfig(n_calibration=128, n_test=100)   # 2 cores, float32: see README "Performance" for the measured time


COMPUTED_WITH = ("persona_interp", "data", "pyproject.toml")   # what a result depends on, for git_revision


def git_revision(root: str | Path = REPO_ROOT) -> str:
    """Short git revision of the repository at ``root``, with ``-dirty`` when the code or data that the results
    are computed with (``persona_interp/``, ``data/``, ``pyproject.toml``) has uncommitted changes; the run's own
    outputs (``reports/``, ``figures/``, which a resumed run has already rewritten) do not count.

    Example:
        >>> git_revision()
        '97d6afb'
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *COMPUTED_WITH],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


SIDES = ("seek", "reject")


def persona_conditions(model: Any, persona: str, config: ReproduceConfig,
                       progress: bool = True) -> tuple[list[Condition], dict, dict[str, Signature]]:
    """Every condition of one persona, each regime's dose chosen on the validation split:

    * base; the persona prompts (phrasing searched) and RAG;
    * the paper's rows at each ``config.sparsities``: Wanda (per pole), Contrastive-Wanda, Contrastive-Sparse by
      the text's and by the code's rule, a random control; each mask also **with its pole's prompt on** (the
      paper's protocol, ``+prompt``), beside a random mask with each prompt;
    * per damage budget (``config.damage_budgets``, KL nats/token on neutral texts apart from the report's), the
      candidate of each regime (steering: layer × multiplier; ODE: its strength; LoRA: epochs; each mask method:
      sparsity × modules × layers × token scope × statistic × φ) with the largest validation separation within
      the budget, named ``REGIME-SIDE@klB``; masks again with their prompt and with a random control removing
      the same weights per row.

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
    by_scope = {scope: tuple(collect_signatures(model, fit, side, token_scope=scope, batch_size=config.batch_size,
                                                max_tokens=config.max_tokens, per_sample=scope == config.token_scope,
                                                progress=progress) for side in SIDES) for scope in scopes}
    sig = dict(zip(SIDES, by_scope[config.token_scope]))
    if config.n_validation:
        validation = validation.sample(config.n_validation, seed=config.seed)
    used: dict[str, Any] = {"fit_items": len(fit), "validation_items": len(validation), "split": validation.meta.get("split"),
                            "test_leaks_dropped": train.meta["dropped"], "duplicate_questions": len(duplicates),
                            "signature_tokens": {side: s.n_tokens for side, s in sig.items()}}
    neutral = load_neutral_texts()
    selection = DamageReference.build(model, neutral[config.n_neutral: config.n_neutral + config.n_selection_neutral],
                                      config.batch_size)
    used["selection_neutral_texts"] = config.n_selection_neutral
    conditions: list[Condition] = [Condition()]
    prompts = {side: persona_prompts(persona, side)[0] for side in SIDES}
    if config.prompt_search:
        choice = select_prompts(model, persona_prompts(persona, "seek"), persona_prompts(persona, "reject"), validation,
                                batch_size=config.batch_size)
        prompts, used["prompt_search"] = {"seek": choice.seek, "reject": choice.reject}, choice.table
    for side in SIDES:
        conditions.append(Prompt(f"prompt-{side}", side=side, system=prompts[side], meta={"pair": "prompt"}))
    retriever = Retriever(list(fit))
    for side in SIDES:
        conditions.append(Prompt(f"rag-{side}", side=side, regime="rag", meta={"pair": "rag"},
                                 system=functools.partial(retriever.system_prompt, side=side, k=config.rag_k)))
    steering = steering_conditions(model, fit, validation, config, selection, progress)
    conditions += steering["conditions"]
    used["steering_search"] = steering["search"]
    if config.lora is not None:
        choice = select_lora(model, list(fit), list(validation), config.lora, reference=selection,
                             batch_size=config.batch_size, progress=progress)
        used["lora_search"] = {"epochs": choice.epochs, "table": choice.table, "config": dataclasses.asdict(config.lora)}
        for budgets, index in budget_picks(choice.table, config.damage_budgets):
            for side in SIDES:
                conditions.append(LoRACondition(f"lora-{side}@kl{budgets[0]:g}", side=side, lora=choice.runs[side][index],
                                                meta={"pair": f"lora@kl{budgets[0]:g}", "budgets": budgets,
                                                      "chosen": choice.table[index]}))
    for rho in config.sparsities:
        conditions += paper_mask_conditions(model, persona, by_scope[config.token_scope], rho, prompts, config)
    if config.mask_search is not None:
        conditions += budget_mask_conditions(model, persona, by_scope, validation, selection, prompts, config, used, progress)
    if config.diagnostics:
        used["diagnostics"] = mask_diagnostics(model, persona, sig, validation, config, progress)
    return conditions, used, sig


def test_items(persona: str, config: ReproduceConfig) -> PersonaDataset:
    """The test items a run scores (``config.n_test`` of them, seeded); calibration never uses their questions."""
    test = load_persona(persona, "test")
    return test.sample(config.n_test, seed=config.seed) if config.n_test else test


def budget_picks(table: list[dict[str, Any]], budgets: list[float]) -> list[tuple[list[float], int]]:
    """The row each damage budget picks (:func:`~persona_interp.tuning.pick_within`), one entry per distinct row
    with the budgets that picked it (ascending); budgets that no row fits are left out.

    Example:
        >>> budget_picks([{"separation": 0.2, "kl": 0.3}, {"separation": 0.1, "kl": 0.01}], [0.02, 0.1, 0.5])
        [([0.02, 0.1], 1), ([0.5], 0)]
    """
    picks: dict[int, list[float]] = {}
    for budget in sorted(budgets):
        index = pick_within(table, budget)
        if index is not None:
            picks.setdefault(index, []).append(budget)
    return [(chosen, index) for index, chosen in picks.items()]


def _with_prompt(cond: MaskCondition, prompts: dict[str, str], control: str | None = None) -> MaskCondition:
    """The paper's protocol: ``cond``'s mask with its pole's persona prompt on (damage: the mask's own)."""
    return MaskCondition(f"{cond.name}+prompt", side=cond.side, regime=cond.regime, mask=cond.mask, system=prompts[cond.side],
                         meta={**cond.meta, "pair": f"{cond.meta['pair']}+prompt", "protocol": "mask+prompt",
                               "prompt_of": f"prompt-{cond.side}", "mask_of": cond.name, "damage_of": cond.name,
                               "control": control})


def paper_mask_conditions(model: Any, persona: str, signatures: tuple[Signature, Signature], rho: float,
                          prompts: dict[str, str], config: ReproduceConfig) -> list[Condition]:
    """Every mask method at sparsity ``rho`` (default modules, the run's token scope, the paper's norm statistic,
    ReLU), each alone and with its pole's prompt; a random mask alone and with each prompt as their controls."""
    kw = {"modules": config.modules, "persona": persona}
    control = f"random@{rho}"
    conditions: list[Condition] = [MaskCondition(control, regime="random", mask=random_mask(model, rho, seed=config.seed, modules=config.modules),
                                                 meta={"protocol": "mask"})]
    for side in SIDES:
        conditions.append(MaskCondition(f"{control}+prompt-{side}", side=side, regime="random", mask=conditions[0].mask,
                                        system=prompts[side], meta={"pair": f"{control}+prompt", "protocol": "mask+prompt",
                                                                    "damage_of": control}))
    for method in MASK_METHODS:
        pair = method_family(model, method, *signatures, **kw).pair(rho, modules=config.modules)
        for side, mask in zip(SIDES, pair):
            alone = MaskCondition(f"{method}-{side}@{rho}", side=side, regime=method, mask=mask,
                                  meta={"pair": f"{method}@{rho}", "protocol": "mask", "control": control})
            conditions += [alone, _with_prompt(alone, prompts, f"{control}+prompt-{side}")]
    return conditions


def budget_mask_conditions(model: Any, persona: str, by_scope: dict[str, tuple[Signature, Signature]],
                           validation: PersonaDataset, selection: DamageReference, prompts: dict[str, str],
                           config: ReproduceConfig, used: dict[str, Any], progress: bool = True) -> list[Condition]:
    """Each mask method's search (:func:`~persona_interp.tuning.select_masks`, damage on ``selection``) and its
    pick per damage budget, named ``METHOD-SIDE@klB``, alone and with its prompt, each pick with a random mask
    that removes the same number of weights per row (``random@klB-METHOD``). The tables go to ``used``."""
    space = dataclasses.replace(config.mask_search, stop_above=max(config.damage_budgets))
    conditions: list[Condition] = []
    used["mask_search"] = {}
    for method in MASK_METHODS:
        choice = select_masks(model, method, by_scope, validation, space, reference=selection, persona=persona,
                              batch_size=config.batch_size, progress=progress)
        used["mask_search"][method] = {"chosen": choice.config, "table": choice.table}
        for budgets, index in budget_picks(choice.table, config.damage_budgets):
            tag = f"kl{budgets[0]:g}"
            pair = build_candidate(model, method, by_scope, choice.table[index], tau=space.tau, persona=persona)
            control = f"random@{tag}-{method}"
            conditions.append(MaskCondition(control, regime="random", mask=random_mask(model, pair[0].sparsity(), seed=config.seed, like=pair[0]),
                                            meta={"protocol": "mask"}))
            for side, mask in zip(SIDES, pair):
                alone = MaskCondition(f"{method}-{side}@{tag}", side=side, regime=method, mask=mask,
                                      meta={"pair": f"{method}@{tag}", "protocol": "mask", "control": control,
                                            "budgets": budgets, "chosen": choice.table[index]})
                conditions += [alone, _with_prompt(alone, prompts)]
    return conditions


def mask_diagnostics(model: Any, persona: str, sig: dict[str, Signature], validation: PersonaDataset,
                     config: ReproduceConfig, progress: bool = True) -> dict[str, Any]:
    """What the masks are made of, at the first paper sparsity: the like-for-like overlap table, the two
    statistics (share of channels with z > 0, which pole's mask breaks the model), and stability over halves
    of the calibration data (:func:`~persona_interp.diagnostics.stability`)."""
    rho = config.sparsities[0]
    neutral = load_neutral_texts()[: config.n_neutral]
    reference = DamageReference.build(model, neutral, config.batch_size)
    return {"sparsity": rho,
            "overlap": overlap_table(model, sig["seek"], sig["reject"], rho, persona=persona),
            "statistics": statistic_table(model, sig["seek"], sig["reject"], rho, reference, persona=persona),
            "stability": stability(model, sig["seek"], sig["reject"], rho, validation, draws=config.stability_draws,
                                   seed=config.seed, batch_size=config.batch_size, persona=persona, progress=progress)}


def steering_conditions(model: Any, fit: PersonaDataset, validation: PersonaDataset, config: ReproduceConfig,
                        selection: DamageReference | None = None, progress: bool = True) -> dict[str, Any]:
    """Mean-difference (CAA), PCA and ODE steering (barrier on ``config.ode_features`` random Fourier
    features), each searched over layer × multiplier on the validation split with its damage on ``selection``;
    per damage budget the pick with the largest separation: +α is the seek condition, −α the reject condition.
    One pass over the fit items feeds all three."""
    n_layers = get_adapter(model).n_layers
    layers = sorted({min(n_layers - 1, round(f * n_layers)) for f in config.steering_layers})
    conditions, search = [], {}
    means = {side: answer_residual_means(model, fit, layers, side=side, batch_size=config.batch_size,
                                         max_tokens=config.max_tokens, progress=progress) for side in SIDES}
    candidates = {method: vectors_from_differences(method, means["seek"] - means["reject"], layers)
                  for method in ("mean_difference", "pca")}
    candidates["ode"] = ode_steerings(model, fit, layers, features=config.ode_features, means=means, seed=config.seed)
    for method, vectors in candidates.items():
        choice = select_steering(model, vectors, validation, config.steering_multipliers, reference=selection,
                                 stop_above=max(config.damage_budgets) if selection else None,
                                 batch_size=config.batch_size, progress=progress)
        search[method] = {"layer": choice.layer, "multiplier": choice.multiplier, "table": choice.table}
        for budgets, index in (budget_picks(choice.table, config.damage_budgets) if selection else
                               [([None], pick_within(choice.table, None))]):
            row = choice.table[index]
            tag = f"@kl{budgets[0]:g}" if budgets[0] is not None else ""
            for side, sign in (("seek", 1.0), ("reject", -1.0)):
                conditions.append(SteeringCondition(f"{method}-{side}{tag}", side=side, regime=method,
                                                    vector=vectors[int(row["layer"])], multiplier=sign * row["multiplier"],
                                                    meta={"pair": f"{method}{tag}", "budgets": budgets, "chosen": row}))
    return {"conditions": conditions, "search": search}


def control_comparison(ev: Evaluation) -> list[dict[str, Any]]:
    """Each mask condition against the random mask of the same sparsity: paired difference of the
    margin toward the mask's side. ``beats_control`` is true only when the 95 % interval is above 0."""
    rows = []
    for name, cond in ev.conditions.items():
        if not isinstance(cond, MaskCondition) or cond.regime == "random" or not cond.side:
            continue
        rho = cond.mask.meta["sparsity"]
        control = cond.meta.get("control") if "control" in cond.meta else next(
            (n for n, c in ev.conditions.items() if c.regime == "random" and not c.mask.meta.get("like") and c.mask.meta["sparsity"] == rho), None)
        if control is None or control not in ev.scores:
            continue
        sign = 1.0 if cond.side == "seek" else -1.0
        diff = paired_difference(sign * ev.scores[name].margin_mean, sign * ev.scores[control].margin_mean)
        rows.append({"persona": ev.persona, "condition": name, "control": control, "n": diff.n, "advantage": diff.value,
                     "advantage_low": diff.low, "advantage_high": diff.high, "beats_control": diff.low > 0})
    return rows


def equal_damage_summary(table: list[dict[str, Any]], contrasts: list[dict[str, Any]],
                         budgets: list[float]) -> list[dict[str, Any]]:
    """For each damage budget (KL from the base model on neutral text, nats/token), the regime pair
    whose seek-minus-reject difference is largest among the pairs whose more damaging pole stays
    within the budget. Prompt and RAG pairs have damage 0 by construction (the neutral text carries
    no prompt), so they are always eligible.

    Example:
        >>> equal_damage_summary(ev.table(), ev.contrasts(), [0.02, 0.1])[0]["pair"]
    """
    kl = _pair_damage(table)
    rows = []
    for budget in budgets:
        eligible = [c for c in contrasts if max(kl.get(c["seek_condition"], 0.0), kl.get(c["reject_condition"], 0.0)) <= budget]
        if not eligible:
            rows.append({"budget": budget, "pair": None})
            continue
        best = max(eligible, key=lambda c: c["difference"])
        rows.append({"budget": budget, "pair": best["pair"], "regime": best["regime"], "n": best["n"],
                     "difference": best["difference"], "difference_low": best["difference_low"],
                     "difference_high": best["difference_high"], "n_eligible": len(eligible),
                     "damage": max(kl.get(best["seek_condition"], 0.0), kl.get(best["reject_condition"], 0.0))})
    return rows


def _pair_damage(table: list[dict[str, Any]]) -> dict[str, float]:
    kl: dict[str, float] = {}
    for row in table:
        kl[row["condition"]] = max(kl.get(row["condition"], 0.0), max(row.get("kl", 0.0), 0.0))
    return kl


def frontier_rows(ev: Evaluation, contrasts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of the effect–damage frontier: every per-budget pick (``meta["budgets"]``), every paper
    row and the prompt and RAG pairs, with its test seek − reject difference and its damage on the report's
    neutral texts (the larger pole's KL). ``line`` is the regime, ``+prompt`` for the paper's protocol."""
    kl = _pair_damage(ev.table())
    rows = []
    for c in contrasts:
        cond = ev.conditions[c["seek_condition"]]
        if cond.regime == "random":
            continue
        line = cond.regime + ("+prompt" if cond.meta.get("protocol") == "mask+prompt" else "")
        rows.append({"line": line, "pair": c["pair"], "budgets": cond.meta.get("budgets"),
                     "kl": max(kl.get(c["seek_condition"], 0.0), kl.get(c["reject_condition"], 0.0)),
                     **{k: c[k] for k in ("n", "difference", "difference_low", "difference_high")}})
    return rows


def budget_winners(ev: Evaluation, contrasts: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Per damage budget, the regime whose pick for that budget (chosen on the validation split) has the largest
    test seek − reject difference, among the picks for the budget and the prompt and RAG pairs (damage 0 by
    construction); masks count alone and with their prompt. ``lead`` is the paired difference to the runner-up
    (``decisive`` when its 95 % interval is above 0); ``test_kl`` the winner's damage on the report's texts.

    Example:
        >>> budget_winners(ev, ev.contrasts(), [0.02, 0.1, 0.5])[0]["pair"]
    """
    kl = _pair_damage(ev.table())
    per_item = {c["pair"]: ev.scores[c["seek_condition"]].margin_mean - ev.scores[c["reject_condition"]].margin_mean
                for c in contrasts}
    rows = []
    for budget in budgets:
        eligible = [c for c in contrasts if ev.conditions[c["seek_condition"]].regime in ("prompt", "rag")
                    or budget in (ev.conditions[c["seek_condition"]].meta.get("budgets") or [])]
        if not eligible:
            rows.append({"budget": budget, "pair": None})
            continue
        ranked = sorted(eligible, key=lambda c: c["difference"], reverse=True)
        best = ranked[0]
        row = {"budget": budget, "pair": best["pair"], "regime": best["regime"], "n": best["n"],
               "difference": best["difference"], "difference_low": best["difference_low"],
               "difference_high": best["difference_high"], "n_eligible": len(eligible),
               "test_kl": max(kl.get(best["seek_condition"], 0.0), kl.get(best["reject_condition"], 0.0))}
        if len(ranked) > 1:
            lead = paired_difference(per_item[best["pair"]], per_item[ranked[1]["pair"]])
            row.update(runner_up=ranked[1]["pair"], lead=lead.value, lead_low=lead.low, lead_high=lead.high,
                       decisive=lead.low > 0)
        rows.append(row)
    return rows


TABLE_COLUMNS = ["condition", "side", "n", "accuracy", "margin", "shift", "flips_gained", "flips_lost", "perplexity_change", "kl"]


def reproduce(config: ReproduceConfig, out_dir: str | Path, figures_dir: str | Path | None = None, *,
              force: bool = False, resume: bool = False, model: Any = None, progress: bool = True) -> Path:
    """Run the whole pipeline and write ``report.md`` and ``results.json`` (with per-item margins)
    to ``out_dir``, the calibration signatures to ``out_dir/signatures``, the LoRA adapters to
    ``out_dir/lora`` and figures to ``figures_dir`` (default ``out_dir/figures``). Refuses to write
    into a non-empty ``out_dir`` unless ``force``. With ``resume`` the personas already finished in
    ``out_dir/results.json`` under the same configuration are kept and only the others run (a full
    run can span several sessions; each persona records the revision that computed it).

    Example:
        >>> reproduce(FULL, "reports", "figures", resume=True)
    """
    out_dir = Path(out_dir)
    figures_dir = Path(figures_dir) if figures_dir else out_dir / "figures"
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "revision": git_revision(),
                               "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "personas": {}}
    if resume:
        results["personas"] = _finished_personas(out_dir / "results.json", config)
    elif out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True (--force) to overwrite its files, "
                              "or resume=True (--resume) to continue a run with the same configuration")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model, dtype=config.dtype)
    elif str(get_adapter(model).dtype) != f"torch.{config.dtype}":       # never cast a model the caller built
        raise ValueError(f"the model passed in is {get_adapter(model).dtype}, the configuration says {config.dtype}: "
                         "set config.dtype to match (it is recorded in the results)")
    neutral = load_neutral_texts()[: config.n_neutral]
    report = _write_report(out_dir, figures_dir, config, results)
    for persona in config.personas:
        if persona in results["personas"]:
            continue
        conditions, used, signatures = persona_conditions(model, persona, config, progress)
        for side, signature in signatures.items():                  # reusable by `analyse` and the notebooks
            signature.save(out_dir / "signatures" / f"{persona}_{side}.safetensors", overwrite=force or resume)
        test = test_items(persona, config)
        ev = evaluate(model, list(test), conditions, persona=persona, neutral_texts=neutral,
                      batch_size=config.batch_size, progress=progress)
        table, contrasts, controls = ev.table(), ev.contrasts(), control_comparison(ev)
        results["personas"][persona] = {"revision": results["revision"],
                                        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                        "used": used, "n_test": len(test), "table": table, "contrasts": contrasts,
                                        "controls": controls, "equal_damage": equal_damage_summary(table, contrasts, config.damage_budgets),
                                        "prompt_additions": ev.prompt_additions(), "frontier": frontier_rows(ev, contrasts),
                                        "budget_winners": budget_winners(ev, contrasts, config.damage_budgets),
                                        "per_item": ev.per_item(), "damage": ev.damage}
        report = _write_report(out_dir, figures_dir, config, results)   # first, so a later failure keeps the persona
        for side in ("seek", "reject"):                             # the fine-tuned adapters, reusable
            lora = next((c.lora for c in conditions if isinstance(c, LoRACondition) and c.side == side), None)
            if lora is not None:
                lora.save(out_dir / "lora" / f"{persona}_{side}.safetensors", overwrite=force or resume)
        plot_accuracy(table, figures_dir / f"{persona}_accuracy", title=f"{persona}: {len(test)} test items")
        plot_frontier(results["personas"][persona]["frontier"], figures_dir / f"{persona}_frontier",
                      title=f"{persona}: effect against damage, picks per budget ({len(test)} test items)")
    return report


def _finished_personas(path: Path, config: ReproduceConfig) -> dict[str, Any]:
    """The personas a previous run with the same configuration finished (empty if there is none)."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    defaults = {"dtype": "float32"}                                  # runs from before a field existed
    mine = {k: v for k, v in dataclasses.asdict(config).items() if k != "personas"}
    theirs = {**defaults, **{k: v for k, v in previous.get("config", {}).items() if k != "personas"}}
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"cannot resume {path}: its configuration differs in {differ}; rerun with --force instead")
    return {p: entry for p, entry in previous.get("personas", {}).items() if p in config.personas}


def _write_report(out_dir: Path, figures_dir: Path, config: ReproduceConfig, results: dict[str, Any]) -> Path:
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    done = [p for p in config.personas if p in results["personas"]]
    results["complete"] = done == list(config.personas)
    write_text(out_dir / "results.json", json.dumps(results, indent=1))
    status = "" if results["complete"] else (f"**Partial run**: {len(done)} of {len(config.personas)} personas "
                                             f"finished ({', '.join(done) or 'none yet'}).\n\n")
    revisions = sorted({results["personas"][p].get("revision", results["revision"]) for p in done} or {results["revision"]})
    header = (f"# persona_interp results\n\n{status}Model: SmolLM2-135M-Instruct (embedded). Revision "
              f"{', '.join(f'`{r}`' for r in revisions)}, seed {config.seed}, this run {results['started']} → {results['finished']}.\n\n"
              f"Config: `{json.dumps(dataclasses.asdict(config))}`\n\n" + REPORT_LEGEND)
    sections = []
    for persona in done:
        entry = results["personas"][persona]
        sections.append(_persona_section(persona, entry, figures_dir / f"{persona}_accuracy.png", out_dir))
    report = out_dir / "report.md"
    write_text(report, header + "\n".join(sections))
    return report


REPORT_LEGEND = (
    "Accuracy: the paper's A/B protocol (summed answer log-prob decides), Wilson 95 % interval. "
    "Margin: mean per-token log-prob of the row's side minus the other side (nats/token), t 95 % interval. "
    "Shift: paired difference of that margin against the base model on the same items. "
    "Flips: items whose decision moved to (gained) / away from (lost) the row's side vs base. "
    "Damage on the neutral set: relative perplexity change and mean KL(base ‖ condition) per token (nats); "
    "prompt and RAG conditions leave the weights unchanged, so their damage on the (prompt-free) neutral set is 0 by construction.\n")


def _tuning_lines(used: dict[str, Any]) -> list[str]:
    """What each regime's search on the validation split tried and picked."""
    lines = [f"\nTuned on {used['validation_items']} validation items (never a test item), damage during the searches on "
             f"{used.get('selection_neutral_texts', 0)} neutral texts apart from the reported ones; signatures and fitting on "
             f"{used['fit_items']} calibration items. Each regime's pick per damage budget is the candidate with the largest "
             "validation separation whose validation KL is within the budget (`@klB` rows). "
             f"Calibration items whose question is in the test set: {used.get('test_leaks_dropped', 0)} dropped; "
             f"questions that occur more than once: {used.get('duplicate_questions', 0)} (kept on one side of the split).\n"]
    for method, s in used.get("steering_search", {}).items():
        lines.append(f"- steering {method}: {len(s['table'])} (layer, multiplier) candidates; unbudgeted best: layer {s['layer']}, "
                     f"multiplier {s['multiplier']:g}")
    if "lora_search" in used:
        lines.append(f"- LoRA: epochs 1–{used['lora_search']['config']['epochs']} (rank {used['lora_search']['config']['rank']}, "
                     f"lr {used['lora_search']['config']['learning_rate']:g}); unbudgeted best: {used['lora_search']['epochs']}")
    if "prompt_search" in used:
        lines.append(f"- prompts: the phrasings in results.json (`prompt_search`), {len(used['prompt_search'])} candidates")
    for method, s in used.get("mask_search", {}).items():
        c = s["chosen"]
        lines.append(f"- {method}: {len(s['table'])} candidates; unbudgeted best: sparsity {c['sparsity']}, modules {c['modules']}, "
                     f"layers {c['layers']}, {c['token_scope']} tokens, statistic {c['statistic']}, φ {c['phi']}")
    return lines


def _budget_line(row: dict[str, Any], damage: str, counted: str) -> str:
    """One budget's chosen pair: its seek − reject difference with interval, n, its damage and how many competed."""
    return (f"- KL ≤ {row['budget']:g}: **{row['pair']}** ({row['difference']:+.4f} [{row['difference_low']:+.4f}, "
            f"{row['difference_high']:+.4f}] nats/token, n = {row['n']}, {damage}; {row['n_eligible']} {counted})")


def _equal_damage_lines(equal_damage: list[dict[str, Any]]) -> list[str]:
    lines = ["\nWhich regime separates the poles most at equal damage (largest seek − reject difference among the "
             "pairs whose more damaging pole stays within the KL budget):\n"]
    for row in equal_damage:
        if row["pair"] is None:
            lines.append(f"- KL ≤ {row['budget']:g}: no pair is within the budget")
        else:
            lines.append(_budget_line(row, f"its KL {row['damage']:.4f}", "pairs eligible"))
    return lines


def _winner_lines(winners: list[dict[str, Any]]) -> list[str]:
    lines = ["\nWhich regime wins at each damage budget (each regime's pick for the budget, test seek − reject; "
             "`lead`: paired difference to the runner-up, decisive when its interval is above 0):\n"]
    for row in winners:
        if row["pair"] is None:
            lines.append(f"- KL ≤ {row['budget']:g}: no regime has a pick within the budget")
            continue
        lead = (f"; lead over {row['runner_up']} {row['lead']:+.4f} [{row['lead_low']:+.4f}, {row['lead_high']:+.4f}]"
                f"{' (decisive)' if row['decisive'] else ' (not decisive)'}" if "lead" in row else "")
        lines.append(_budget_line(row, f"test KL {row['test_kl']:.4f}", "picks") + lead)
    return lines


def _diagnostic_lines(diag: dict[str, Any]) -> list[str]:
    rho = diag["sparsity"]
    overlap = [{**r, "by construction": f"{r['bound_low']:.3f}–{r['bound_high']:.3f}" if "bound_low" in r else "",
                "p (z>0)": r.get("p", "")} for r in diag["overlap"]]
    stab = diag["stability"]["summary"]
    lines = [f"\nOpposing masks compared like with like (ρ = {rho}; fraction of entries where seek and reject differ; "
             "under ReLU each pole removes ρ of a row, so they differ in at most 2ρ, exactly 2ρ in a map whose share p of "
             "channels with z > 0 lies in [ρ, 1−ρ], at least 2·min(p, 1−p) otherwise; `by construction` is that range "
             "weighted over the maps):\n",
             markdown_table(overlap, ["variant", "kind", "differ", "by construction", "p (z>0)"]),
             "\nThe per-sample statistic (norm: the paper's, grows with √T; rms: norm/√T) — share of channels with z > 0, "
             f"mean covered tokens per pole, and which pole's ReLU Contrastive-Wanda mask (ρ = {rho}) breaks the model:\n",
             markdown_table(diag["statistics"], ["statistic", "positive_share", "seek_tokens", "reject_tokens",
                                                 "seek_perplexity_ratio", "reject_perplexity_ratio", "breaks"]),
             f"\nStability ({stab['method']}, ρ = {rho}, {stab['draws']} draws of two disjoint halves of {stab['half_size']} "
             f"calibration items): a pole's mask differs between halves in {stab['within_pole']:.3f} of entries, seek from "
             f"reject in {stab['between_poles']:.3f} (full data {stab['between_poles_full']:.3f}); validation seek − reject over "
             f"the {stab['n_halves']} halves {stab['separation']:+.4f} [{stab['separation_low']:+.4f}, {stab['separation_high']:+.4f}]. "
             + ("**Noise**: a pole's mask differs between halves of its own data at least as much as from the other pole."
                if stab["noise"] else "Each pole's mask is more alike across halves than the two poles are.")]
    return lines


PROTOCOL_NOTE = ("\nTwo mask protocols: `METHOD-SIDE@…` is the mask alone (no system prompt); `…+prompt` keeps the same "
                 "pole's persona prompt on under the mask, **the paper's protocol** (its `contra.py` masks the weights and "
                 "scores with the persona system prompt), so the paper's mask rows compare with our `+prompt` rows.\n")


def _persona_section(persona: str, entry: dict[str, Any], figure: Path, out_dir: Path) -> str:
    contrasts, controls = entry["contrasts"], entry["controls"]
    lines = [f"\n## {persona} ({entry['n_test']} test items)\n", f"Computed by revision `{entry['revision']}`, finished {entry['finished']}.",
             *_tuning_lines(entry["used"]), PROTOCOL_NOTE, markdown_table(entry["table"], TABLE_COLUMNS),
             "\nSeek-minus-reject (paired, per-token margin; cancels damage both poles share):\n",
             markdown_table(contrasts, ["pair", "n", "difference", "items_seek_only", "items_reject_only"]),
             "\nEach mask against its random-mask control (same sparsity or the same weights per row; with prompts, the "
             "random mask with the same prompt; paired margin toward the mask's side):\n",
             markdown_table(controls, ["condition", "control", "advantage", "beats_control"])]
    losers = [c["condition"] for c in controls if not c["beats_control"]]
    if losers:
        lines.append(f"\nDoes not beat its random-mask control (95 % interval not above 0): {', '.join(losers)}.\n")
    if entry.get("prompt_additions"):
        lines += ["\nWhat the mask adds to the prompt (mask + prompt − prompt, toward the pole; per pair seek − reject):\n",
                  markdown_table(entry["prompt_additions"], ["condition", "side", "n", "added"])]
    lines += _equal_damage_lines(entry["equal_damage"])
    if entry.get("budget_winners"):
        lines += _winner_lines(entry["budget_winners"])
    if "diagnostics" in entry["used"]:
        lines += _diagnostic_lines(entry["used"]["diagnostics"])
    lines.append(f"\n![{persona} accuracy]({os.path.relpath(figure, out_dir)})\n")
    frontier = figure.with_name(f"{persona}_frontier.png")
    if entry.get("frontier"):
        lines.append(f"![{persona} effect–damage frontier]({os.path.relpath(frontier, out_dir)})\n")
    return "\n".join(lines)
