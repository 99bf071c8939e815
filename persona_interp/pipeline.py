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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapter import get_adapter
from .conditions import Condition, LoRACondition, MaskCondition, Prompt, SteeringCondition
from .data import (AI_PERSONAS, MBTI_AXES, REPO_ROOT, PersonaDataset, load_neutral_texts, load_persona,
                   persona_prompts)
from .evaluation import Evaluation, evaluate, markdown_table
from .figures import plot_accuracy
from .masks import contrastive_sparse_masks, contrastive_wanda_masks, random_mask, wanda_mask
from .models import load_model
from .retrieval import Retriever
from .signatures import Signature, collect_signatures
from .stats import paired_difference
from .ode_steering import ode_steerings
from .steering import answer_residual_means, vectors_from_differences
from .lora import LoRAConfig, select_lora
from .tuning import MASK_BUILDERS, MaskSpace, select_masks, select_prompts, select_steering


@dataclass
class ReproduceConfig:
    """What the main job runs. Calibration items are split (seeded) into fit and validation parts;
    signatures use the fit part only, test items are only ever scored."""

    personas: list[str] = field(default_factory=lambda: [*AI_PERSONAS, *MBTI_AXES])
    sparsities: list[float] = field(default_factory=lambda: [0.3, 0.5])
    n_calibration: int | None = None
    n_test: int | None = None
    validation_fraction: float = 0.2
    seed: int = 0
    token_scope: str = "all"
    batch_size: int = 8
    max_tokens: int = 256
    n_neutral: int = 24
    modules: list[str] | None = None
    rag_k: int = 3
    steering_layers: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.65])   # fractions of depth
    steering_multipliers: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    n_validation: int | None = 24
    ode_features: int | None = 256
    # the same validation split tunes every regime: masks (per method), prompt phrasing, LoRA epochs
    mask_search: MaskSpace | None = field(default_factory=lambda: MaskSpace(
        sparsities=[0.1, 0.3, 0.5], modules=[None, "mlp"], layer_ranges=["all"], token_scopes=["all", "answer"]))
    prompt_search: bool = True
    lora: LoRAConfig | None = field(default_factory=lambda: LoRAConfig(epochs=3))
    damage_budgets: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.5])   # KL (nats/token) tiers of the summary
    dtype: str = "float32"           # the model's dtype ("bfloat16": the faster CPU path, see README)


QUICK = ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=32, n_test=24, n_neutral=6, rag_k=2,
                        steering_layers=[0.35, 0.5], steering_multipliers=[4.0, 8.0], n_validation=8,
                        mask_search=MaskSpace(sparsities=[0.1, 0.3], modules=[None], layer_ranges=["all"],
                                              token_scopes=["all", "answer"]),
                        lora=LoRAConfig(epochs=2))
FULL = ReproduceConfig(n_calibration=128, n_test=100)   # 2 cores: 57-60 min per AI persona, 40 min per MBTI axis (measured)


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


def persona_conditions(model: Any, persona: str, config: ReproduceConfig,
                       progress: bool = True) -> tuple[list[Condition], dict, dict[str, Signature]]:
    """Base, persona prompts, RAG, steering, LoRA, and for every sparsity: Wanda (per pole),
    Contrastive-Wanda, Contrastive-Sparse and a random control; plus each mask method at the
    configuration its search chose on the validation split, with a random control of the same
    per-row sparsity. Returns the conditions, what was used to build them (every search table), and
    the two poles' signatures."""
    fit, validation = load_persona(persona, "train").split(config.validation_fraction, seed=config.seed)
    if config.n_calibration:
        fit = fit.sample(config.n_calibration, seed=config.seed)
    sig = {side: collect_signatures(model, fit, side, token_scope=config.token_scope, batch_size=config.batch_size,
                                    max_tokens=config.max_tokens, progress=progress) for side in ("seek", "reject")}
    if config.n_validation:
        validation = validation.sample(config.n_validation, seed=config.seed)
    used: dict[str, Any] = {"fit_items": len(fit), "validation_items": len(validation), "split": validation.meta.get("split"),
                            "signature_tokens": {side: s.n_tokens for side, s in sig.items()}}
    conditions: list[Condition] = [Condition()]
    prompts = {side: persona_prompts(persona, side)[0] for side in ("seek", "reject")}
    if config.prompt_search:
        choice = select_prompts(model, persona_prompts(persona, "seek"), persona_prompts(persona, "reject"), validation,
                                batch_size=config.batch_size)
        prompts, used["prompt_search"] = {"seek": choice.seek, "reject": choice.reject}, choice.table
    for side in ("seek", "reject"):
        conditions.append(Prompt(f"prompt-{side}", side=side, system=prompts[side], meta={"pair": "prompt"}))
    retriever = Retriever(list(fit))
    for side in ("seek", "reject"):
        conditions.append(Prompt(f"rag-{side}", side=side, regime="rag", meta={"pair": "rag"},
                                 system=functools.partial(retriever.system_prompt, side=side, k=config.rag_k)))
    steering = steering_conditions(model, fit, validation, config, progress)
    conditions += steering["conditions"]
    used["steering_search"] = steering["search"]
    if config.lora is not None:
        choice = select_lora(model, list(fit), list(validation), config.lora, batch_size=config.batch_size, progress=progress)
        used["lora_search"] = {"epochs": choice.epochs, "table": choice.table, "config": dataclasses.asdict(config.lora)}
        for side, lora in (("seek", choice.seek), ("reject", choice.reject)):
            conditions.append(LoRACondition(f"lora-{side}", side=side, lora=lora, meta={"pair": "lora"}))
    for rho in config.sparsities:
        kw = {"modules": config.modules}
        for side in ("seek", "reject"):
            conditions.append(MaskCondition(f"wanda-{side}@{rho}", side=side, regime="wanda", meta={"pair": f"wanda@{rho}"},
                                            mask=wanda_mask(model, sig[side], rho, persona=persona, **kw)))
        for regime, builder in (("contrastive_wanda", contrastive_wanda_masks), ("contrastive_sparse", contrastive_sparse_masks)):
            for side, mask in zip(("seek", "reject"), builder(model, sig["seek"], sig["reject"], rho, persona=persona, **kw)):
                conditions.append(MaskCondition(f"{regime}-{side}@{rho}", side=side, regime=regime,
                                                meta={"pair": f"{regime}@{rho}"}, mask=mask))
        conditions.append(MaskCondition(f"random@{rho}", regime="random", mask=random_mask(model, rho, seed=config.seed, **kw)))
    if config.mask_search is not None:
        conditions += tuned_mask_conditions(model, persona, fit, validation, sig, config, used, progress)
    return conditions, used, sig


def tuned_mask_conditions(model: Any, persona: str, fit: PersonaDataset, validation: PersonaDataset,
                          signatures: dict[str, Signature], config: ReproduceConfig, used: dict[str, Any],
                          progress: bool = True) -> list[Condition]:
    """Each mask method at the configuration chosen by :func:`~persona_interp.tuning.select_masks`
    on the validation split, named ``METHOD-SIDE@tuned``, each with a random mask removing the same
    number of weights per row (``random@tuned-METHOD``). The search tables go to ``used``."""
    space = config.mask_search
    by_scope = {config.token_scope: (signatures["seek"], signatures["reject"])}
    for scope in space.token_scopes:
        if scope not in by_scope:
            by_scope[scope] = tuple(collect_signatures(model, fit, side, token_scope=scope, batch_size=config.batch_size,
                                                       max_tokens=config.max_tokens, progress=progress) for side in ("seek", "reject"))
    conditions: list[Condition] = []
    used["mask_search"] = {}
    for method in MASK_BUILDERS:
        choice = select_masks(model, method, by_scope, validation, space, persona=persona, batch_size=config.batch_size,
                              progress=progress)
        used["mask_search"][method] = {"chosen": choice.config, "table": choice.table}
        control = f"random@tuned-{method}"
        for side, mask in zip(("seek", "reject"), choice.masks):
            conditions.append(MaskCondition(f"{method}-{side}@tuned", side=side, regime=method, mask=mask,
                                            meta={"pair": f"{method}@tuned", "control": control, "chosen": choice.config}))
        conditions.append(MaskCondition(control, regime="random",
                                        mask=random_mask(model, choice.masks[0].sparsity(), seed=config.seed, like=choice.masks[0])))
    return conditions


def steering_conditions(model: Any, fit: PersonaDataset, validation: PersonaDataset, config: ReproduceConfig,
                        progress: bool = True) -> dict[str, Any]:
    """Mean-difference (CAA), PCA and ODE steering (barrier on ``config.ode_features`` random Fourier
    features), each with layer and multiplier chosen on the validation split: +α is the seek
    condition, −α the reject condition. One pass over the fit items feeds all three."""
    n_layers = get_adapter(model).n_layers
    layers = sorted({min(n_layers - 1, round(f * n_layers)) for f in config.steering_layers})
    conditions, search = [], {}
    means = {side: answer_residual_means(model, fit, layers, side=side, batch_size=config.batch_size,
                                         max_tokens=config.max_tokens, progress=progress) for side in ("seek", "reject")}
    candidates = {method: vectors_from_differences(method, means["seek"] - means["reject"], layers)
                  for method in ("mean_difference", "pca")}
    candidates["ode"] = ode_steerings(model, fit, layers, features=config.ode_features, means=means, seed=config.seed)
    for method, vectors in candidates.items():
        choice = select_steering(model, vectors, validation, config.steering_multipliers,
                                 batch_size=config.batch_size, progress=progress)
        search[method] = {"layer": choice.layer, "multiplier": choice.multiplier, "table": choice.table}
        for side, sign in (("seek", 1.0), ("reject", -1.0)):
            conditions.append(SteeringCondition(f"{method}-{side}", side=side, regime=method, vector=choice.vector,
                                                multiplier=sign * choice.multiplier, meta={"pair": method}))
    return {"conditions": conditions, "search": search}


def control_comparison(ev: Evaluation) -> list[dict[str, Any]]:
    """Each mask condition against the random mask of the same sparsity: paired difference of the
    margin toward the mask's side. ``beats_control`` is true only when the 95 % interval is above 0."""
    rows = []
    for name, cond in ev.conditions.items():
        if not isinstance(cond, MaskCondition) or cond.regime == "random" or not cond.side:
            continue
        rho = cond.mask.meta["sparsity"]
        control = cond.meta.get("control") or next(
            (n for n, c in ev.conditions.items() if c.regime == "random" and not c.mask.meta.get("like") and c.mask.meta["sparsity"] == rho), None)
        if control is None:
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
    kl = {}
    for row in table:
        kl[row["condition"]] = max(kl.get(row["condition"], 0.0), max(row.get("kl", 0.0), 0.0))
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
        test = load_persona(persona, "test")
        if config.n_test:
            test = test.sample(config.n_test, seed=config.seed)
        ev = evaluate(model, list(test), conditions, persona=persona, neutral_texts=neutral,
                      batch_size=config.batch_size, progress=progress)
        table, contrasts, controls = ev.table(), ev.contrasts(), control_comparison(ev)
        results["personas"][persona] = {"revision": results["revision"],
                                        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                        "used": used, "n_test": len(test), "table": table, "contrasts": contrasts,
                                        "controls": controls, "equal_damage": equal_damage_summary(table, contrasts, config.damage_budgets),
                                        "per_item": ev.per_item(), "damage": ev.damage}
        report = _write_report(out_dir, figures_dir, config, results)   # first, so a later failure keeps the persona
        for side in ("seek", "reject"):                             # the fine-tuned adapters, reusable
            lora = next((c.lora for c in conditions if isinstance(c, LoRACondition) and c.side == side), None)
            if lora is not None:
                lora.save(out_dir / "lora" / f"{persona}_{side}.safetensors", overwrite=force or resume)
        plot_accuracy(table, figures_dir / f"{persona}_accuracy", title=f"{persona}: {len(test)} test items")
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
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
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
    report.write_text(header + "\n".join(sections))
    return report


REPORT_LEGEND = (
    "Accuracy: the paper's A/B protocol (summed answer log-prob decides), Wilson 95 % interval. "
    "Margin: mean per-token log-prob of the row's side minus the other side (nats/token), t 95 % interval. "
    "Shift: paired difference of that margin against the base model on the same items. "
    "Flips: items whose decision moved to (gained) / away from (lost) the row's side vs base. "
    "Damage on the neutral set: relative perplexity change and mean KL(base ‖ condition) per token (nats); "
    "prompt and RAG conditions leave the weights unchanged, so their damage on the (prompt-free) neutral set is 0 by construction.\n")


def _tuning_lines(used: dict[str, Any]) -> list[str]:
    """What each regime's search on the validation split chose."""
    lines = [f"\nTuned on {used['validation_items']} validation items (never a test item); "
             f"signatures and fitting on {used['fit_items']} calibration items:\n"]
    for method, s in used.get("steering_search", {}).items():
        lines.append(f"- steering {method}: layer {s['layer']}, multiplier {s['multiplier']:g}")
    if "lora_search" in used:
        lines.append(f"- LoRA: {used['lora_search']['epochs']} epoch(s) of {used['lora_search']['config']['epochs']} "
                     f"(rank {used['lora_search']['config']['rank']}, lr {used['lora_search']['config']['learning_rate']:g})")
    if "prompt_search" in used:
        lines.append(f"- prompts: the phrasings in results.json (`prompt_search`), {len(used['prompt_search'])} candidates")
    for method, s in used.get("mask_search", {}).items():
        c = s["chosen"]
        lines.append(f"- {method}: sparsity {c['sparsity']}, modules {c['modules']}, layers {c['layers']}, "
                     f"statistics over {c['token_scope']} tokens ({len(s['table'])} configurations)")
    return lines


def _equal_damage_lines(equal_damage: list[dict[str, Any]]) -> list[str]:
    lines = ["\nWhich regime separates the poles most at equal damage (largest seek − reject difference among the "
             "pairs whose more damaging pole stays within the KL budget):\n"]
    for row in equal_damage:
        if row["pair"] is None:
            lines.append(f"- KL ≤ {row['budget']:g}: no pair is within the budget")
        else:
            lines.append(f"- KL ≤ {row['budget']:g}: **{row['pair']}** ({row['difference']:+.4f} [{row['difference_low']:+.4f}, "
                         f"{row['difference_high']:+.4f}] nats/token, n = {row['n']}, its KL {row['damage']:.4f}; "
                         f"{row['n_eligible']} pairs eligible)")
    return lines


def _persona_section(persona: str, entry: dict[str, Any], figure: Path, out_dir: Path) -> str:
    contrasts, controls = entry["contrasts"], entry["controls"]
    lines = [f"\n## {persona} ({entry['n_test']} test items)\n", f"Computed by revision `{entry['revision']}`, finished {entry['finished']}.",
             *_tuning_lines(entry["used"]), "", markdown_table(entry["table"], TABLE_COLUMNS),
             "\nSeek-minus-reject (paired, per-token margin; cancels damage both poles share):\n",
             markdown_table(contrasts, ["pair", "n", "difference", "items_seek_only", "items_reject_only"]),
             "\nEach mask against the random mask of the same sparsity (paired margin toward the mask's side):\n",
             markdown_table(controls, ["condition", "control", "advantage", "beats_control"])]
    losers = [c["condition"] for c in controls if not c["beats_control"]]
    if losers:
        lines.append(f"\nDoes not beat its random-mask control (95 % interval not above 0): {', '.join(losers)}.\n")
    lines += _equal_damage_lines(entry["equal_damage"])
    lines.append(f"\n![{persona} accuracy]({os.path.relpath(figure, out_dir)})\n")
    return "\n".join(lines)
