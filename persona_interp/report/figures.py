"""matplotlib figures (PNG and SVG, no display needed).

Examples:
    >>> rows = load_results("reports/results.json").personas["power"].table
    >>> plot_accuracy(rows, "figures/power_accuracy")
    [PosixPath('figures/power_accuracy.png'), PosixPath('figures/power_accuracy.svg')]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from persona_interp.analysis.causal import DoseRow
from persona_interp.analysis.diagnostics import GroupedOverlapRow
from persona_interp.analysis.localise import UnitDivergence
from persona_interp.analysis.nulls import percentile_band
from persona_interp.analysis.regimes import RegimeComparison
from persona_interp.data.files import atomic
from persona_interp.data.personas import SIDES
from persona_interp.evaluation.rows import ConditionRow, FrontierRow
from persona_interp.report.results import NOT_RECORDED, PersonaResult, RunResults
from persona_interp.report.shortfall import IDEAS, UNBUDGETED, budget_frontier, mask_kind, mask_methods
from persona_interp.report.study_results import FractionCurve, TypeRow
from persona_interp.report.summary import diagnostics_by_persona

matplotlib.use("Agg")


def save(fig: Figure, stem: str | os.PathLike[str]) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg``; returns the paths. The same figure gives the
    same bytes (no date, fixed SVG ids), so re-rendering leaves committed figures unchanged."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"]   # not with_suffix: stems may hold "0.3"
    try:
        with atomic(paths[0]) as tmp:                                # never a half-written figure
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
        with atomic(paths[1]) as tmp, plt.rc_context({"svg.hashsalt": "persona_interp"}):
            fig.savefig(tmp, bbox_inches="tight", metadata={"Date": None}, format="svg")
    finally:
        plt.close(fig)
    return paths


def plot_accuracy(rows: Sequence[ConditionRow], stem: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Two panels per persona table ([`table`][persona_interp.evaluation.evaluate.Evaluation.table]): A/B accuracy
    (Wilson 95 % CI) and paired margin shift vs base (t 95 % CI), one bar per condition, seek rows and reject rows
    side by side."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row", squeeze=False)
    for col, side in enumerate(SIDES):
        side_rows = [r for r in rows if r.side == side]
        labels = [r.condition for r in side_rows]
        x = range(len(side_rows))
        colors = ["#777777" if r.regime in ("base", "random") else "#1f77b4" if r.regime == "prompt" else "#d62728"
                  for r in side_rows]
        for row_index, (key, label) in enumerate((("accuracy", f"A/B accuracy toward '{side}'"),
                                                  ("shift", f"margin shift toward '{side}'\n(nats/token, vs base)"))):
            ax = axes[row_index][col]
            estimates = [r.estimate(key) for r in side_rows]
            err = [[e.value - e.low for e in estimates], [e.high - e.value for e in estimates]]
            ax.bar(x, [e.value for e in estimates], yerr=err, color=colors, capsize=3)
            ax.axhline(0.5 if key == "accuracy" else 0.0, color="black", lw=0.8, ls="--")
            ax.set_ylabel(label)
            ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
        axes[0][col].set_title(f"{side} side (n = {side_rows[0].n if side_rows else 0} items)")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, stem)


def plot_layer_kind_heatmap(grid: Float[Tensor, "layers kinds"], kinds: Sequence[str], stem: str | os.PathLike[str], *, title: str = "",
                            colorbar: str = "", vmin: float | None = None, vmax: float | None = None) -> list[Path]:
    """A ``[layer, kind]`` grid (from [`layer_kind_grid`][persona_interp.analysis.localise.layer_kind_grid]) as a
    heatmap, layers on the y axis (0 at the top), NaN cells blank."""
    values = grid.numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(kinds), 1.5 + 0.22 * len(values)))
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlabel("linear map")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label=colorbar)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, stem)


def plot_overlap_bars(rows: Sequence[GroupedOverlapRow], stem: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Per persona pair, % of mask entries that differ between the opposing masks: overall, attention, MLP."""
    groups = {"overall": [r.overall for r in rows], "attn": [r.attn for r in rows], "mlp": [r.mlp for r in rows]}
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(rows), 4))
    width = 0.8 / len(groups)
    for i, (group, values) in enumerate(groups.items()):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [100 * v for v in values], width, label=group)
    ax.set_xticks(range(len(rows)), [r.pair for r in rows], rotation=30, ha="right")
    ax.set_ylabel("entries that differ between opposing masks (%)")
    ax.legend(title="weights")
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, stem)


def plot_unit_map(units: Sequence[UnitDivergence], n_layers: int, n_units: int, stem: str | os.PathLike[str], *, unit_label: str,
                  title: str = "", colorbar: str = "divergence (mean |z|)") -> list[Path]:
    """Divergence of every head or neuron as a layer × unit image."""
    image = np.full((n_layers, n_units), np.nan)
    for u in units:
        image[u.layer, u.unit] = u.divergence
    fig, ax = plt.subplots(figsize=(min(14.0, 2.0 + 0.3 * n_units), 1.5 + 0.22 * n_layers))
    shown = ax.imshow(image, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel(unit_label)
    ax.set_ylabel("layer")
    fig.colorbar(shown, ax=ax, label=colorbar)
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, stem)


MIN_BAND_DRAWS = 10          # seeds from which a random control is drawn as a percentile band


def plot_dose_response(rows: Sequence[DoseRow], stem: str | os.PathLike[str], *, title: str = "",
                       ylabel: str = "margin shift vs unablated (nats/token)") -> list[Path]:
    """Dose–response curves from [`dose_response`][persona_interp.analysis.causal.dose_response]: one panel per system
    prompt; the top-k units with their 95 % interval, random units as the mean over seeds with their 5th–95th
    percentile band (from 10 seeds on; the range below); x = k (log scale)."""
    systems = list(dict.fromkeys(r.system for r in rows))
    fig, axes = plt.subplots(1, len(systems), figsize=(4.5 * len(systems), 3.8), squeeze=False, sharey=True)
    for ax, system in zip(axes[0], systems):
        mine = [r for r in rows if r.system == system]
        ks = sorted({r.k for r in mine})
        top = [next(r for r in mine if r.k == k and r.selection == "top") for k in ks]
        ax.errorbar(ks, [r.shift for r in top], yerr=[[r.shift - r.shift_low for r in top], [r.shift_high - r.shift for r in top]],
                    marker="o", capsize=3, color="#d62728", label="top-k persona units (95 % CI)")
        rand = [[r.shift for r in mine if r.k == k and r.selection == "random"] for k in ks]
        if any(rand):
            mean = [sum(v) / len(v) for v in rand]
            ax.plot(ks, mean, marker="s", color="#555555", label="random units (mean over seeds)")
            banded = min(len(v) for v in rand) >= MIN_BAND_DRAWS      # a percentile band from enough seeds, else the range
            bands = [percentile_band(v, 0.9) if banded else (min(v), max(v)) for v in rand]
            ax.fill_between(ks, [b[0] for b in bands], [b[1] for b in bands], color="#999999", alpha=0.3,
                            label=f"random units ({'5th–95th percentile' if banded else 'range'} over {min(len(v) for v in rand)} seeds)")
        ax.axhline(0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"k ({mine[0].kind}s ablated, {mine[0].mode})")
        ax.set_title(system)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, stem)


def plot_layer_curve(values: Sequence[float] | Float[Tensor, " layers"] | Float[np.ndarray, " layers"], stem: str | os.PathLike[str], *,
                     ylabel: str, title: str = "") -> list[Path]:
    """One value per layer (e.g. the signature cosine of two poles) as a line."""
    values = [float(v) for v in values]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(values)), values, marker="o")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, stem)


def plot_regime_comparison(result: RegimeComparison, stem: str | os.PathLike[str], title: str = "",
                           band: Sequence[float] | None = None) -> list[Path]:
    """Regime comparison of one persona pair (from
    [`compare_regimes`][persona_interp.analysis.regimes.compare_regimes]): cosine of the seek-minus-reject residual
    directions per layer for every two regimes, with the ``band`` of cosines between random directions where given
    (e.g. [`random_cosine_band`][persona_interp.analysis.nulls.random_cosine_band]), and the transfer matrix (behaviour
    reproduced by one regime's direction, as a fraction of another's)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    if band:
        left.axhspan(*band, color="#999999", alpha=0.3, label="random directions (95 %)")
    for pair, values in result.cosine.items():
        left.plot(result.layers, values, marker="o", ms=3, label=pair.replace("|", " vs "))
    left.axhline(0, color="black", lw=0.8, ls="--")
    left.axvline(result.layer, color="grey", lw=0.8, ls=":")
    left.set_xlabel("layer (residual stream entering the block)")
    left.set_ylabel("cosine of seek − reject shifts")
    left.set_ylim(-1, 1)
    left.legend(fontsize=8)
    names = list(result.transfer)
    ratios = np.array([[result.transfer[s][d].ratio for d in names] for s in names], dtype=float)
    image = right.imshow(ratios, cmap="RdBu_r", vmin=-1.5, vmax=1.5)
    for i in range(len(names)):
        for j in range(len(names)):
            right.text(j, i, f"{ratios[i, j]:.2f}", ha="center", va="center", fontsize=8)
    right.set_xticks(range(len(names)), [f"{n}\n({result.effect[n].value:+.3f})" for n in names], fontsize=8)
    right.set_yticks(range(len(names)), [f"{n} direction" for n in names], fontsize=8)
    right.set_title(f"effect reproduced at layer {result.layer} (ratio; n = {result.n_items})", fontsize=9)
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, stem)


def plot_fraction_curve(curve: FractionCurve, stem: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Per-token A/B margin toward the seek pole against the persona fraction (t 95 % CI), with the
    base model and the random mask of the same sparsity as horizontal references."""
    points = [(r.fraction, r) for r in curve.rows if r.fraction is not None]
    x, rows, control = [f for f, _ in points], [r for _, r in points], curve.control()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(x, [r.margin for r in rows], yerr=[[r.margin - r.margin_low for r in rows],
                                                  [r.margin_high - r.margin for r in rows]],
                marker="o", capsize=3, label=f"fractional mask (ρ = {curve.sparsity})")
    ax.axhline(curve.base_margin.value, color="black", ls="--", lw=0.8, label="base model")
    if control:
        ax.axhline(control.margin, color="#777777", ls=":", lw=1.2, label=control.condition)
    ax.set_xlabel("fraction of the seek pole")
    ax.set_ylabel("margin toward seek (nats/token)")
    slope = curve.trend.slope
    ax.set_title(f"{title}\nslope {slope.signed(3)}, Spearman {curve.trend.spearman:+.2f}, n = {rows[0].n if rows else 0}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, stem)


def plot_type_comparison(rows: Sequence[TypeRow], stem: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Paired margin shift toward the type's pole (vs base, t 95 % CI) on each axis's test items,
    one bar per condition (type mask, intersection, prompt, their random controls)."""
    axes_names = list(dict.fromkeys(r.axis for r in rows))
    conditions = [c for c in dict.fromkeys(r.condition for r in rows) if c != "base"]
    fig, ax = plt.subplots(figsize=(2.2 * len(axes_names) + 2, 4))
    width = 0.8 / max(len(conditions), 1)
    for i, cond in enumerate(conditions):
        sel = [next(r for r in rows if r.axis == a and r.condition == cond) for a in axes_names]
        pos = [j + (i - (len(conditions) - 1) / 2) * width for j in range(len(axes_names))]
        ax.bar(pos, [r.shift for r in sel], width, yerr=[[r.shift - r.shift_low for r in sel],
                                                        [r.shift_high - r.shift for r in sel]],
               capsize=2, label=f"{cond} (ρ = {sel[0].sparsity:.2f})" if sel[0].sparsity else cond)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(axes_names)), [f"{a}\n→ {next(r.pole for r in rows if r.axis == a)}" for a in axes_names],
                  fontsize=8)
    ax.set_ylabel("margin shift toward the type's pole\n(nats/token, vs base)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save(fig, stem)


@dataclass(frozen=True)
class LineStyle:
    """How [`plot_frontier`][persona_interp.report.figures.plot_frontier] draws one line: its colour (a matplotlib
    colour), marker, line style and whether the markers are filled (else white inside)."""

    color: str | tuple[float, ...]
    marker: str = "o"
    linestyle: str = "-"
    filled: bool = True


def plot_frontier(rows: Sequence[FrontierRow], stem: str | os.PathLike[str], title: str = "",
                  styles: Mapping[str, LineStyle] | None = None) -> list[Path]:
    """The effect–damage frontier: x = damage (KL from the base model on the report's neutral texts,
    symlog), y = test seek − reject difference with its 95 % interval; one line per regime through its
    per-budget picks, masks with their prompt dashed in the mask's colour (the paper's protocol), the budgets
    dotted, prompt-only regimes as points at 0. ``rows``:
    [`frontier_rows`][persona_interp.evaluation.evaluate.frontier_rows]; ``styles``: each line's
    [`LineStyle`][persona_interp.report.figures.LineStyle] (default: one colour of a qualitative palette per regime)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    lines = list(dict.fromkeys(r.line for r in rows))
    bases = list(dict.fromkeys(line.removesuffix("+prompt") for line in lines))
    palette = plt.get_cmap("tab20" if len(bases) > 10 else "tab10")
    colors = [palette(i) for i in range(palette.N)]
    for line in lines:                        # a mask and its +prompt share a colour: solid alone, dashed with the prompt
        mine = sorted((r for r in rows if r.line == line), key=lambda r: r.kl)
        with_prompt = line.endswith("+prompt")
        style = (styles or {}).get(line) or LineStyle(colors[bases.index(line.removesuffix("+prompt")) % len(colors)],
                                                      "s" if with_prompt else "o", "--" if with_prompt else "-",
                                                      not with_prompt)
        ax.errorbar([r.kl for r in mine], [r.difference for r in mine],
                    yerr=[[r.difference - r.difference_low for r in mine], [r.difference_high - r.difference for r in mine]],
                    marker=style.marker, mfc=None if style.filled else "white", capsize=3, ls=style.linestyle,
                    color=style.color, label=line)
    ax.axhline(0, color="black", lw=0.8)
    for budget in sorted({b for r in rows for b in r.budgets or []}):
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.annotate(f"KL ≤ {budget:g}", (budget, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="grey")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 2 * max([r.kl for r in rows] + [1e-3]))      # KL is never negative
    ax.set_xlabel("damage: KL(base ‖ condition) on neutral text (nats/token)")
    ax.set_ylabel("test seek − reject margin (nats/token, 95 % CI)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    return save(fig, stem)


NON_MASK_COLORS = {"prompt": "black", "rag": "#7f7f7f", "lora": "#1a9850"}     # steering: blues; the weight edit: purple


def mask_styles(lines: Sequence[str]) -> dict[str, LineStyle]:
    """The styles of [`plot_mask_frontier`][persona_interp.report.figures.plot_mask_frontier]: every mask method in
    one colour family (signature-only methods in oranges with circles, damage-aware ones in reds with diamonds),
    steering methods in blues with squares, the weight edit in purple (plus markers), LoRA in green, prompt black and
    RAG grey; a mask with its prompt dashed with hollow markers in the mask's colour.

    Examples:
        >>> styles = mask_styles(["contrastive_wanda", "retain_ratio+prompt", "mean_difference", "weight_edit"])
        >>> [(styles[line].marker, styles[line].linestyle) for line in styles]
        [('o', '-'), ('D', '--'), ('s', '-'), ('P', '-')]
    """
    methods = set(mask_methods())
    bases = list(dict.fromkeys(line.removesuffix("+prompt") for line in lines))
    families = {"signature-only": [b for b in bases if b in methods and mask_kind(b) == "signature-only"],
                "damage-aware": [b for b in bases if b in methods and mask_kind(b) == "damage-aware"],
                "steering": [b for b in bases if b not in methods and b not in NON_MASK_COLORS
                             and b not in IDEAS["weight-edit steering"]]}
    maps = {"signature-only": ("Oranges", "o", 0.35, 0.7), "damage-aware": ("Reds", "D", 0.5, 0.95),
            "steering": ("Blues", "s", 0.45, 0.95)}     # colour map, marker, its lightest and darkest shade
    base_styles: dict[str, LineStyle] = {}
    for family, members in families.items():
        cmap, marker, light, dark = maps[family]
        for i, base in enumerate(members):
            shade = light + (dark - light) * (i / max(len(members) - 1, 1))
            base_styles[base] = LineStyle(tuple(float(c) for c in plt.get_cmap(cmap)(shade)), marker)
    for base in bases:
        if base in IDEAS["weight-edit steering"]:
            base_styles[base] = LineStyle("#7b3294", "P")
        elif base in NON_MASK_COLORS:
            base_styles[base] = LineStyle(NON_MASK_COLORS[base], "X" if base in UNBUDGETED else "^")
    styles = {}
    for line in lines:
        own = base_styles[line.removesuffix("+prompt")]
        styles[line] = LineStyle(own.color, own.marker, "--", False) if line.endswith("+prompt") else own
    return styles


def plot_mask_frontier(entry: PersonaResult, stem: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Every mask method against the regimes that are no mask at equal damage, for one persona: the
    [`plot_frontier`][persona_interp.report.figures.plot_frontier] of each regime's picks per damage budget and the
    prompt and RAG pairs ([`budget_frontier`][persona_interp.report.shortfall.budget_frontier]; the paper's
    fixed-sparsity rows left out), drawn in [`mask_styles`][persona_interp.report.figures.mask_styles].

    Examples:
        >>> entry = load_results("reports/results.json").personas["power"]
        >>> [path.name for path in plot_mask_frontier(entry, "figures/power_masks")]
        ['power_masks.png', 'power_masks.svg']
    """
    rows = budget_frontier(entry)
    return plot_frontier(rows, stem, title, styles=mask_styles([r.line for r in rows]))


def plot_persona(persona: str, entry: PersonaResult, folder: str | os.PathLike[str]) -> list[Path]:
    """A persona's report figures from its results ([`PersonaResult`][persona_interp.report.results.PersonaResult]):
    ``PERSONA_accuracy`` and, where the entry has one, ``PERSONA_frontier`` (PNG + SVG in ``folder``); the main job
    and ``persona-interp figures`` both draw them.

    Examples:
        >>> [path.name for path in plot_persona("power", load_results("reports/results.json").personas["power"], "figures")]
        ['power_accuracy.png', 'power_accuracy.svg', 'power_frontier.png', 'power_frontier.svg']
    """
    folder, n, ran = Path(folder), entry.n_test, entry.provenance
    model = f"{ran.model}, {ran.dtype}" if ran.model != NOT_RECORDED else "model not recorded"
    written = plot_accuracy(entry.table, folder / f"{persona}_accuracy", title=f"{persona}: {n} test items ({model})")
    if entry.frontier:
        written += plot_frontier(entry.frontier, folder / f"{persona}_frontier",
                                 title=f"{persona}: effect against damage, picks per budget ({n} test items; {model})")
    return written


def plot_stability(results: RunResults, stem: str | os.PathLike[str]) -> list[Path]:
    """Stability of every persona's masks (the main job's diagnostics) in one figure: left, the share of entries
    in which a pole's mask differs between two disjoint calibration halves (each draw and pole) beside the share in
    which the poles differ within a half, with ReLU Contrastive-Wanda's construction value 2ρ dotted; right, the
    validation seek − reject of each half's masks, their mean and its 95 % interval. Personas without diagnostics
    are left out; nothing is drawn (``[]``) when none has them.

    Examples:
        >>> plot_stability(load_results("reports/results.json"), "figures/stability")
        [PosixPath('figures/stability.png'), PosixPath('figures/stability.svg')]
    """
    rows = [(persona, diag.stability) for persona, diag in diagnostics_by_persona(results).items()]
    if not rows:
        return []
    first = rows[0][1].summary
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.8 + 0.55 * len(rows)), sharey=True)
    for y, (_, stability) in enumerate(rows):
        draws, s = stability.draws, stability.summary
        within = [100 * share for d in draws for share in (d.seek_between_halves, d.reject_between_halves)]
        between = [100 * d.seek_vs_reject_in_half for d in draws]
        left.scatter(within, [y - 0.12] * len(within), color="tab:blue", s=18, label="a pole, half A vs half B" if y == 0 else None)
        left.scatter(between, [y + 0.12] * len(between), color="tab:red", marker="s", s=18,
                     label="seek vs reject, within a half" if y == 0 else None)
        halves = [separation for d in draws for separation in (d.separation_a, d.separation_b)]
        right.scatter(halves, [y] * len(halves), color="grey", s=14, label="one half's masks" if y == 0 else None)
        right.errorbar([s.separation], [y], xerr=[[s.separation - s.separation_low], [s.separation_high - s.separation]],
                       fmt="o", color="black", capsize=3, label="mean, 95 % interval" if y == 0 else None)
    left.axvline(200 * first.sparsity, ls=":", color="grey", label=f"2ρ = {200 * first.sparsity:.0f} % (ReLU construction)")
    right.axvline(0, color="grey", lw=0.8)
    left.set_yticks(range(len(rows)), [persona for persona, _ in rows])
    left.invert_yaxis()
    left.set_xlabel("mask entries that differ (%)")
    right.set_xlabel("validation seek − reject (nats/token)")
    for ax in (left, right):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    fig.suptitle(f"{first.method}, ρ = {first.sparsity}: masks from disjoint halves of the calibration data "
                 f"({first.draws} draws of 2 halves)")
    fig.tight_layout()
    return save(fig, stem)
