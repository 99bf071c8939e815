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
from .conditions import Condition, MaskCondition, Prompt, SteeringCondition
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
from .tuning import select_steering


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


QUICK = ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=32, n_test=24, n_neutral=6, rag_k=2,
                        steering_layers=[0.35, 0.5], steering_multipliers=[4.0, 8.0], n_validation=8)
FULL = ReproduceConfig()


def git_revision() -> str:
    """Short git revision of the repository (``-dirty`` when it has uncommitted changes)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def persona_conditions(model: Any, persona: str, config: ReproduceConfig,
                       progress: bool = True) -> tuple[list[Condition], dict, dict[str, Signature]]:
    """Base, persona prompts, and for every sparsity: Wanda (per pole), Contrastive-Wanda,
    Contrastive-Sparse and a random control. Returns the conditions, what was used to build them,
    and the two poles' signatures."""
    fit, validation = load_persona(persona, "train").split(config.validation_fraction, seed=config.seed)
    if config.n_calibration:
        fit = fit.sample(config.n_calibration, seed=config.seed)
    sig = {side: collect_signatures(model, fit, side, token_scope=config.token_scope, batch_size=config.batch_size,
                                    max_tokens=config.max_tokens, progress=progress) for side in ("seek", "reject")}
    if config.n_validation:
        validation = validation.sample(config.n_validation, seed=config.seed)
    conditions: list[Condition] = [Condition()]
    retriever = Retriever(list(fit))
    for side in ("seek", "reject"):
        conditions.append(Prompt(f"prompt-{side}", side=side, system=persona_prompts(persona, side)[0], meta={"pair": "prompt"}))
    for side in ("seek", "reject"):
        conditions.append(Prompt(f"rag-{side}", side=side, regime="rag", meta={"pair": "rag"},
                                 system=functools.partial(retriever.system_prompt, side=side, k=config.rag_k)))
    steering = steering_conditions(model, fit, validation, config, progress)
    conditions += steering["conditions"]
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
    used = {"fit_items": len(fit), "validation_items": len(validation), "split": validation.meta.get("split"),
            "signature_tokens": {side: s.n_tokens for side, s in sig.items()}, "steering_search": steering["search"]}
    return conditions, used, sig


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
        control = next((n for n, c in ev.conditions.items() if c.regime == "random" and c.mask.meta["sparsity"] == rho), None)
        if control is None:
            continue
        sign = 1.0 if cond.side == "seek" else -1.0
        diff = paired_difference(sign * ev.scores[name].margin_mean, sign * ev.scores[control].margin_mean)
        rows.append({"persona": ev.persona, "condition": name, "control": control, "n": diff.n, "advantage": diff.value,
                     "advantage_low": diff.low, "advantage_high": diff.high, "beats_control": diff.low > 0})
    return rows


TABLE_COLUMNS = ["condition", "side", "n", "accuracy", "margin", "shift", "flips_gained", "flips_lost", "perplexity_change", "kl"]


def reproduce(config: ReproduceConfig, out_dir: str | Path, figures_dir: str | Path | None = None, *,
              force: bool = False, model: Any = None, progress: bool = True) -> Path:
    """Run the whole pipeline and write ``report.md`` and ``results.json`` (with per-item margins)
    to ``out_dir``, the calibration signatures to ``out_dir/signatures`` and figures to
    ``figures_dir`` (default ``out_dir/figures``). Refuses to write into a non-empty ``out_dir``
    unless ``force``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True (--force) to overwrite its files")
    figures_dir = Path(figures_dir) if figures_dir else out_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = load_model(model)
    neutral = load_neutral_texts()[: config.n_neutral]
    started = _dt.datetime.now(_dt.timezone.utc)
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "revision": git_revision(),
                               "started": started.isoformat(timespec="seconds"), "personas": {}}
    sections = []
    for persona in config.personas:
        conditions, used, signatures = persona_conditions(model, persona, config, progress)
        for side, signature in signatures.items():                  # reusable by `analyse` and the notebooks
            signature.save(out_dir / "signatures" / f"{persona}_{side}.safetensors", overwrite=force)
        test = load_persona(persona, "test")
        if config.n_test:
            test = test.sample(config.n_test, seed=config.seed)
        ev = evaluate(model, list(test), conditions, persona=persona, neutral_texts=neutral,
                      batch_size=config.batch_size, progress=progress)
        table, contrasts, controls = ev.table(), ev.contrasts(), control_comparison(ev)
        figure = plot_accuracy(table, figures_dir / f"{persona}_accuracy", title=f"{persona}: {len(test)} test items")
        results["personas"][persona] = {"used": used, "n_test": len(test), "table": table, "contrasts": contrasts,
                                        "controls": controls, "per_item": ev.per_item(), "damage": ev.damage}
        sections.append(_persona_section(persona, len(test), table, contrasts, controls, figure[0], out_dir))
        report = _write_report(out_dir, config, results, sections)    # after every persona: a cut-off run keeps what it finished
    return report


def _write_report(out_dir: Path, config: ReproduceConfig, results: dict[str, Any], sections: list[str]) -> Path:
    results["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results["complete"] = list(results["personas"]) == list(config.personas)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    status = "" if results["complete"] else (f"**Partial run**: {len(results['personas'])} of {len(config.personas)} personas "
                                             f"finished ({', '.join(results['personas'])}).\n\n")
    header = (f"# persona_interp results\n\n{status}Model: SmolLM2-135M-Instruct (embedded). Revision `{results['revision']}`, "
              f"seed {config.seed}, run {results['started']} → {results['finished']}.\n\n"
              f"Config: `{json.dumps(dataclasses.asdict(config))}`\n\n" + REPORT_LEGEND)
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


def _persona_section(persona: str, n_test: int, table: list, contrasts: list, controls: list, figure: Path, out_dir: Path) -> str:
    lines = [f"\n## {persona} ({n_test} test items)\n", markdown_table(table, TABLE_COLUMNS),
             "\nSeek-minus-reject (paired, per-token margin; cancels damage both poles share):\n",
             markdown_table(contrasts, ["pair", "n", "difference", "items_seek_only", "items_reject_only"]),
             "\nEach mask against the random mask of the same sparsity (paired margin toward the mask's side):\n",
             markdown_table(controls, ["condition", "control", "advantage", "beats_control"])]
    losers = [c["condition"] for c in controls if not c["beats_control"]]
    if losers:
        lines.append(f"\nDoes not beat its random-mask control (95 % interval not above 0): {', '.join(losers)}.\n")
    lines.append(f"\n![{persona} accuracy]({os.path.relpath(figure, out_dir)})\n")
    return "\n".join(lines)
