import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")          # absent from the TransformerLens 3.9 job's environment

from conftest import condition_row, run_results

from persona_interp.evaluation.rows import ConditionRow
from persona_interp.report.figures import plot_accuracy, plot_layer_curve
from persona_interp.report.results import RunResults
from persona_interp.evaluation.stats import mean_ci, proportion_ci


def test_saving_the_same_figure_twice_gives_the_same_bytes(tmp_path):
    values = np.array([0.998, 0.999, 1.0])
    first = plot_layer_curve(values, tmp_path / "a", ylabel="cosine", title="t")
    second = plot_layer_curve(values, tmp_path / "b", ylabel="cosine", title="t")
    for one, two in zip(first, second):
        assert one.read_bytes() == two.read_bytes(), one.name
    assert b"<dc:date>" not in first[1].read_bytes()


def test_accuracy_figure_draws_a_condition_that_gets_every_item_wrong(tmp_path):
    """Accuracy 0 on one side (hallucination's full run has such rows) must give error bars, not an error."""
    rows = []
    for condition, regime, wins in (("base", "base", [True] * 60 + [False] * 40), ("mask", "mask", [False] * 100)):
        for side in ("seek", "reject"):
            won = torch.tensor(wins) if side == "seek" else ~torch.tensor(wins)
            acc, shift = proportion_ci(won), mean_ci(torch.linspace(-0.2, 0.3, 100))
            rows.append(ConditionRow.model_validate(condition_row(
                condition=condition, regime=regime, side=side, n=100, accuracy=acc.value, accuracy_low=acc.low,
                accuracy_high=acc.high, shift=shift.value, shift_low=shift.low, shift_high=shift.high)))
    paths = plot_accuracy(rows, tmp_path / "acc", title="t")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)


def test_stability_figure_draws_each_persona_with_diagnostics_and_every_half(tmp_path, monkeypatch):
    from persona_interp.report import figures

    draw = {"draw": 0, "half_a": [0, 2], "half_b": [1, 3], "seek_between_halves": 0.2, "reject_between_halves": 0.25,
            "seek_vs_reject_in_half": 0.59, "separation_a": 0.8, "separation_b": -0.1}
    summary = {"method": "contrastive_wanda", "sparsity": 0.3, "draws": 2, "half_size": 2, "within_pole": 0.225,
               "between_poles": 0.59, "between_poles_full": 0.6, "noise": False, "separation": 0.35,
               "separation_low": -0.2, "separation_high": 0.9, "n_halves": 4}
    stability = {"draws": [draw, {**draw, "draw": 1, "separation_a": 0.5}], "summary": summary}
    used = {"fit_items": 4, "validation_items": 2}
    results = RunResults.model_validate(run_results({
        "power": {"used": {**used, "diagnostics": {"sparsity": 0.3, "overlap": [], "statistics": [], "stability": stability}}},
        "wealth": {"used": used}}))
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [stem])
    assert figures.plot_stability(results, tmp_path / "s") == [tmp_path / "s"]
    left, right = drawn[0].axes
    assert [t.get_text() for t in left.get_yticklabels()] == ["power"]            # wealth has no diagnostics
    within, between = left.collections[:2]
    assert sorted(100 * w for w in [0.2, 0.25, 0.2, 0.25]) == sorted(within.get_offsets()[:, 0].tolist())
    assert between.get_offsets()[:, 0].tolist() == [59.0, 59.0]
    assert sorted(right.collections[0].get_offsets()[:, 0].tolist()) == [-0.1, -0.1, 0.5, 0.8]   # all four halves
    assert figures.plot_stability(results.only(["wealth"]), tmp_path / "none") == []
