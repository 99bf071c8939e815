"""Figures with their null drawn on them ([`persona_interp.analysis.nulls`][persona_interp.analysis.nulls]): what each
quantity looks like when there is nothing to find, beside the quantity itself (PNG and SVG, as
[`persona_interp.report.figures.save`][persona_interp.report.figures.save]).

* [`plot_signature_cosine`][persona_interp.report.null_figures.plot_signature_cosine] — 04's seek-vs-reject signature
  cosine per layer, with the bands of its null pairs (swapped poles, one pole's split halves) and the pole against
  neutral text.
* [`plot_unit_divergence`][persona_interp.report.null_figures.plot_unit_divergence] — 04's top heads and neurons by
  rank, with the null draws' top units.
* [`plot_overlap_null`][persona_interp.report.null_figures.plot_overlap_null] — 05's per-pole Wanda difference and its
  MLP − attention gap per pair, with the split-half range of each.

Examples:
    >>> nulls = {"one pole, split halves": torch.tensor([[0.999, 0.9995], [0.9985, 0.9992]])}     # [draw, layer]
    >>> [path.name for path in plot_signature_cosine([0.998, 0.999], "power_signature_cosine_null", nulls=nulls)]
    ['power_signature_cosine_null.png', 'power_signature_cosine_null.svg']
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from jaxtyping import Float
from torch import Tensor

from persona_interp.analysis.localise import UnitDivergence
from persona_interp.analysis.nulls import MaskDiffer, NullUnits
from persona_interp.report.figures import save

NULL_COLOUR = "#999999"


BAND_COLOURS = (NULL_COLOUR, "#bcbd22")
FLOOR = 1e-12           # 1 − cosine drawn no lower (a cosine of exactly 1 on a log scale)


def plot_signature_cosine(cosine: Sequence[float], stem: str | os.PathLike[str], *,
                          nulls: Mapping[str, Float[Tensor, "draws layers"]] | None = None,
                          neutral: Sequence[float] | None = None, title: str = "") -> list[Path]:
    """Per layer, 1 − the cosine of the seek and reject signatures (red; log scale, so that cosines near 1 stay
    apart); per null (``nulls``: label → the cosines of
    [`null_signature_cosine`][persona_interp.analysis.nulls.null_signature_cosine], e.g. swapped poles and one pole's
    split halves), the range over its draws (a band): a seek-vs-reject curve above a band means the poles differ by
    more than that null allows; and the cosine of one pole against neutral text (dashed): how far an unrelated text
    is.

    Examples:
        >>> [path.name for path in plot_signature_cosine([0.998, 0.999], "sig", nulls={"split halves": torch.tensor([[0.999, 0.9995]])})]
        ['sig.png', 'sig.svg']
    """
    cosine = [float(c) for c in cosine]
    layers = list(range(len(cosine)))

    def distance(values: Sequence[float]) -> list[float]:
        return [max(1 - float(v), FLOOR) for v in values]

    fig, ax = plt.subplots(figsize=(7, 4))
    nulls = nulls or {}
    if len(nulls) > len(BAND_COLOURS):
        raise ValueError(f"at most {len(BAND_COLOURS)} nulls, got {list(nulls)}")
    for (label, draws), colour in zip(nulls.items(), BAND_COLOURS):
        if draws.shape[-1] != len(cosine):
            raise ValueError(f"the null {label!r} has {draws.shape[-1]} layers, the cosine {len(cosine)}")
        ax.fill_between(layers, distance(draws.max(dim=0).values.tolist()), distance(draws.min(dim=0).values.tolist()), color=colour, alpha=0.4,
                        label=f"{label} ({draws.shape[0]} draws, range)")
    if neutral is not None:
        ax.plot(layers, distance(neutral), ls="--", color="#1f77b4", label="one pole vs neutral text")
    ax.plot(layers, distance(cosine), marker="o", ms=3, color="#d62728", label="seek vs reject")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("1 − cosine of mean input norms (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, stem)


def plot_unit_divergence(units: Mapping[str, Sequence[UnitDivergence]], null: NullUnits, stem: str | os.PathLike[str], *,
                         null_label: str = "null pairs", title: str = "") -> list[Path]:
    """One panel per unit kind (``units``: "head" and/or "neuron" → the seek-vs-reject ranking, e.g. the atlas's top
    units): divergence against rank (red), beside the top units of each null draw (grey, ``null`` from
    [`null_units`][persona_interp.analysis.nulls.null_units]) and their largest divergence (dotted). Units above the
    dotted line are told apart from sampling noise.

    Examples:
        >>> from persona_interp.analysis.localise import neuron_divergence
        >>> from persona_interp.analysis.nulls import null_units, swapped_poles
        >>> null = null_units(model, swapped_poles(sig_seek, sig_reject, draws=2), top=5)
        >>> ranked = {"neuron": neuron_divergence(model, sig_seek, sig_reject)[:5]}
        >>> [path.name for path in plot_unit_divergence(ranked, null, "units")]
        ['units.png', 'units.svg']
    """
    fig, axes = plt.subplots(1, len(units), figsize=(5 * len(units), 3.8), squeeze=False)
    for ax, (kind, ranked) in zip(axes[0], units.items()):
        n = len(ranked)
        for i, draw in enumerate(null.of(kind)):
            ax.plot(range(1, n + 1), [u.divergence for u in draw[:n]], color=NULL_COLOUR, lw=1,
                    label=f"{null_label} ({null.n_per_side} items per side)" if i == 0 else None)
        ax.axhline(null.ceiling(kind), color=NULL_COLOUR, ls=":", label="largest over the null draws")
        ax.plot(range(1, n + 1), [u.divergence for u in ranked], marker="o", ms=4, color="#d62728", label="seek vs reject")
        for rank, u in enumerate(ranked[:5], start=1):
            ax.annotate(f"L{u.layer}{'H' if kind == 'head' else 'N'}{u.unit}", (rank, u.divergence), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"rank of the {kind}")
        ax.set_ylabel("divergence (mean |z|)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem)


def plot_overlap_null(observed: Mapping[str, MaskDiffer], null: Mapping[str, Sequence[MaskDiffer]], stem: str | os.PathLike[str], *,
                      title: str = "") -> list[Path]:
    """Per persona pair, the entries in which its opposing per-pole masks differ (left) and the MLP − attention gap of
    that difference (right), in points (red), beside the range over split-half draws of one pole against itself
    (grey bars): a difference or a gap inside the grey bar is within the noise of the calibration sample.
    ``observed``: pair → seek vs reject; ``null``: pair → the draws of
    [`split_half_differ`][persona_interp.analysis.nulls.split_half_differ].

    Examples:
        >>> from persona_interp.analysis.nulls import split_half_differ
        >>> [path.name for path in plot_overlap_null({"power": MaskDiffer(0.011, 0.010, 0.012)},
        ...                                          {"power": split_half_differ(model, sig_seek, 0.3, draws=2)}, "o")]
        ['o.png', 'o.svg']
    """
    pairs = [pair for pair in observed if null.get(pair)]
    if not pairs:
        raise ValueError(f"no pair has both an observed difference and split-half draws: observed {list(observed)}, "
                         f"null {list(null)}")
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 3 + 1.6 * len(pairs)), 4.5))

    def differ_points(d: MaskDiffer) -> float:
        return 100 * d.overall

    def gap_points(d: MaskDiffer) -> float:
        return 100 * d.mlp_minus_attn

    for ax, value, label in ((axes[0], differ_points, "entries that differ (%)"),
                             (axes[1], gap_points, "MLP − attention (points)")):
        for x, pair in enumerate(pairs):
            draws = [value(d) for d in null[pair]]
            ax.plot([x, x], [min(draws), max(draws)], color=NULL_COLOUR, lw=8, solid_capstyle="butt",
                    label=f"one pole, two halves ({len(draws)} draws, range)" if x == 0 else None)
            ax.plot(x, value(observed[pair]), "o", color="#d62728", label="seek vs reject" if x == 0 else None)
        ax.set_xticks(range(len(pairs)), pairs, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[1].axhline(0, color="black", lw=0.8, ls="--")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem)
