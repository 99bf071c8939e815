"""matplotlib figures (PNG and SVG, no display needed).

Example:
    >>> plot_accuracy(rows, "figures/power_accuracy")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: Any, stem: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_accuracy(rows: Sequence[dict], stem: str | os.PathLike, title: str = "") -> list[Path]:
    """Two panels per persona table: A/B accuracy (Wilson 95 % CI) and paired margin shift vs base (t 95 % CI),
    one bar per condition, seek rows and reject rows side by side."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey="row", squeeze=False)
    for col, side in enumerate(("seek", "reject")):
        side_rows = [r for r in rows if r["side"] == side]
        labels = [r["condition"] for r in side_rows]
        x = range(len(side_rows))
        colors = ["#777777" if r["regime"] in ("base", "random") else "#1f77b4" if r["regime"] == "prompt" else "#d62728"
                  for r in side_rows]
        for row_index, (key, label) in enumerate((("accuracy", f"A/B accuracy toward '{side}'"),
                                                  ("shift", f"margin shift toward '{side}'\n(nats/token, vs base)"))):
            ax = axes[row_index][col]
            values = [r[key] for r in side_rows]
            err = [[v - r[f"{key}_low"] for v, r in zip(values, side_rows)], [r[f"{key}_high"] - v for v, r in zip(values, side_rows)]]
            ax.bar(x, values, yerr=err, color=colors, capsize=3)
            ax.axhline(0.5 if key == "accuracy" else 0.0, color="black", lw=0.8, ls="--")
            ax.set_ylabel(label)
            ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
        axes[0][col].set_title(f"{side} side (n = {side_rows[0]['n'] if side_rows else 0} items)")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, stem)
