import numpy as np

from persona_interp.figures import plot_layer_curve


def test_saving_the_same_figure_twice_gives_the_same_bytes(tmp_path):
    values = np.array([0.998, 0.999, 1.0])
    first = plot_layer_curve(values, tmp_path / "a", ylabel="cosine", title="t")
    second = plot_layer_curve(values, tmp_path / "b", ylabel="cosine", title="t")
    for one, two in zip(first, second):
        assert one.read_bytes() == two.read_bytes(), one.name
    assert b"<dc:date>" not in first[1].read_bytes()
