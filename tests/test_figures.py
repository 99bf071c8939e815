import numpy as np
import torch

from persona_interp.report.figures import plot_accuracy, plot_layer_curve
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
            rows.append({"condition": condition, "regime": regime, "side": side, "n": 100,
                         "accuracy": acc.value, "accuracy_low": acc.low, "accuracy_high": acc.high,
                         "shift": shift.value, "shift_low": shift.low, "shift_high": shift.high})
    paths = plot_accuracy(rows, tmp_path / "acc", title="t")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)
