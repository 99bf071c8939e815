import math

import pytest
import torch

import persona_interp as pi
from persona_interp.analysis.localise import signature_cosine_by_layer
from persona_interp.analysis.localise import UnitDivergence, neuron_divergence
from persona_interp.analysis.nulls import (MaskDiffer, NullUnits, above_null, null_signature_cosine, null_units, percentile_band,
                                           random_cosine_band, random_cosines, split_half_differ, split_half_signature_cosine,
                                           split_halves, swapped_poles)


def test_random_cosines_shrink_as_one_over_root_d():
    for d in (64, 576):
        cos = random_cosines(d, n=20000, seed=1)
        assert abs(float(cos.mean())) < 3 / math.sqrt(20000 * d)
        assert float(cos.std()) == pytest.approx(1 / math.sqrt(d), rel=0.03)     # the variance of a random cosine is 1/d
    low, high = random_cosine_band(576, level=0.95)
    assert low == pytest.approx(-1.96 / 24, abs=0.006) and high == pytest.approx(1.96 / 24, abs=0.006)
    assert random_cosine_band(576, level=0.68, seed=3)[1] == pytest.approx(1 / 24, abs=0.004)
    with pytest.raises(ValueError, match="d ≥ 2"):
        random_cosines(1)


def test_percentile_band_hand_computed():
    assert percentile_band([4.0, 0.0, 2.0, 1.0, 3.0], level=0.5) == (1.0, 3.0)
    assert percentile_band(torch.arange(11.0), level=0.8) == pytest.approx((1.0, 9.0))
    with pytest.raises(ValueError, match="at least 2"):
        percentile_band([1.0])
    with pytest.raises(ValueError, match="level"):
        percentile_band([1.0, 2.0], level=1.0)


@pytest.fixture
def seek_signature(llama, pairs):
    return pi.collect_signatures(llama, [(q, a) for q, a in pairs] * 2, side="seek", per_sample=True, progress=False)


def test_split_half_signature_cosine_compares_disjoint_halves(seek_signature):
    cos = split_half_signature_cosine(seek_signature, draws=2, seed=0)
    assert cos.shape == (2, 2)                                   # draws × layers of the tiny model
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    a, b = sorted(order[:5]), sorted(order[5:10])
    expected = signature_cosine_by_layer(seek_signature.subset(a), seek_signature.subset(b))
    torch.testing.assert_close(cos[0], expected)
    assert bool((cos <= 1 + 1e-9).all())


def test_split_half_differ_within_a_pole(llama, seek_signature):
    rows = split_half_differ(llama, seek_signature, 0.3, draws=2, seed=0)
    assert len(rows) == 2
    for row in rows:
        assert 0 <= row.overall <= 0.6 + 1e-9              # two masks at ρ = 0.3 differ in at most 2ρ of the entries
        assert min(row.attn, row.mlp) <= row.overall <= max(row.attn, row.mlp)
        assert row.mlp_minus_attn == pytest.approx(row.mlp - row.attn)
    same = split_half_differ(llama, seek_signature, 0.3, draws=1, seed=0)
    assert same[0] == rows[0]                                  # seeded
    with pytest.raises(ValueError, match="at least 4"):
        split_half_differ(llama, seek_signature.subset([0, 1, 2]), 0.3)


def test_figures_draw_the_nulls(tmp_path):
    from persona_interp.analysis.causal import DoseRow
    from persona_interp.analysis.regimes import RegimeComparison, RegimeNorms, TransferCell
    from persona_interp.evaluation.stats import Estimate
    from persona_interp.report.figures import plot_dose_response, plot_regime_comparison

    rows = [DoseRow(kind="neuron", mode="zero", k=k, selection="top", seed=None, system="no prompt", n=4, shift=0.1 * k,
                    shift_low=0.05 * k, shift_high=0.15 * k) for k in (1, 4)]
    rows += [DoseRow(kind="neuron", mode="zero", k=k, selection="random", seed=s, system="no prompt", n=4,
                     shift=0.01 * s, shift_low=0.0, shift_high=0.0) for k in (1, 4) for s in range(10)]
    assert all(p.stat().st_size > 1000 for p in plot_dose_response(rows, tmp_path / "dose", title="ten seeds"))
    effect = {"prompt": Estimate(0.2, 0.1, 0.3, 3), "mask": Estimate(0.3, 0.1, 0.4, 3)}
    norms = RegimeNorms(seek=[0.0, 1.0], reject=[0.0, 1.0], direction=[0.0, 1.0])
    result = RegimeComparison(layers=[0, 1], layer=1, n_texts=2, n_items=3, effect=effect, norms=dict.fromkeys(effect, norms),
                              cosine={"prompt|mask": [0.9, -0.5]}, cosine_seek={"prompt|mask": [0.9, -0.5]},
                              transfer={s: {d: TransferCell(value=0.1, low=0.0, high=0.2, n=3, ratio=1.0) for d in effect} for s in effect})
    paths = plot_regime_comparison(result, tmp_path / "regimes", title="band", band=[-0.08, 0.08])
    assert all(p.stat().st_size > 1000 for p in paths)


def test_null_units_rank_the_halves_of_one_pole(llama, seek_signature):
    null = null_units(llama, split_halves(seek_signature, draws=2, seed=0), top=5)
    assert null.n_per_side == 5 and len(null.heads) == len(null.neurons) == 2 and len(null.neurons[0]) == 5
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    a, b = sorted(order[:5]), sorted(order[5:10])
    expected = neuron_divergence(llama, seek_signature.subset(a), seek_signature.subset(b))[:5]
    assert [(u.layer, u.unit, u.divergence) for u in null.neurons[0]] == [(u.layer, u.unit, u.divergence) for u in expected]
    assert null.ceiling("neuron") == max(draw[0].divergence for draw in null.neurons)
    ranked = [UnitDivergence(3, 1, null.ceiling("neuron") + 0.1, 0.5), UnitDivergence(2, 7, null.ceiling("neuron"), 0.5)]
    assert above_null(ranked, null, "neuron") == ranked[:1]          # strictly above every draw's top unit
    with pytest.raises(ValueError, match="'head' or 'neuron'"):
        null.ceiling("layer")


@pytest.fixture
def poles(llama):
    """Both poles on the same six items, in the same order, with per-sample rows."""
    items = pi.load_persona("introversion_extraversion", "train").sample(6, seed=0)
    return tuple(pi.collect_signatures(llama, items, side, per_sample=True, progress=False) for side in ("seek", "reject"))


def test_swapped_poles_exchange_each_items_answers(llama, poles):
    seek, reject = poles
    first, second = swapped_poles(seek, reject, draws=1, seed=0, n=4)[0]
    g = torch.Generator().manual_seed(0)                              # the draw, by hand
    items = torch.randperm(6, generator=g)[:4].sort().values
    flip = torch.rand(4, generator=g) < 0.5
    site = next(iter(seek.map_sites))
    for mixed, take_reject in ((first, flip), (second, ~flip)):
        expected = sum(float((reject if r else seek).rows[seek.map_sites[site]]["norm"][i, 0]) for i, r in zip(items.tolist(), take_reject))
        assert mixed.n_samples == 4 and float(mixed.sample_mean(site)[0]) * 4 == pytest.approx(expected)
    every = swapped_poles(seek, reject, draws=3, seed=1)
    assert all(a.n_samples == b.n_samples == 6 for a, b in every)
    cos = null_signature_cosine(every)
    assert cos.shape == (3, 2) and bool((cos <= 1 + 1e-9).all())
    with pytest.raises(ValueError, match="same items"):
        swapped_poles(seek, pi.collect_signatures(llama, [("Question?", "Answer.")] * 6, "reject", per_sample=True, progress=False))
    with pytest.raises(ValueError, match="per-sample rows"):
        swapped_poles(seek, reject.subset(range(6)))


@pytest.fixture
def figure(monkeypatch):
    """The figure a null_figures function draws (instead of saving it)."""
    import persona_interp.report.null_figures as null_figures

    drawn = []
    monkeypatch.setattr(null_figures, "save", lambda fig, stem: drawn.append(fig) or [])
    return drawn


def test_signature_cosine_figure_draws_the_split_half_band_and_neutral(figure):
    from persona_interp.report.null_figures import plot_signature_cosine

    split = torch.tensor([[0.99, 0.97, 0.995], [0.98, 0.99, 0.999]], dtype=torch.float64)
    swapped = torch.tensor([[0.5, 0.5, 0.5], [0.4, 0.6, 0.5]], dtype=torch.float64)
    plot_signature_cosine([0.9, 0.95, 0.999], "x", nulls={"halves": split, "swapped": swapped}, neutral=[0.5, 0.6, 0.7])
    ax = figure[0].axes[0]
    for collection, (low, high) in zip(ax.collections, ((0.97, 0.999), (0.4, 0.6))):      # the range over draws, as 1 − cosine
        band = collection.get_paths()[0].vertices[:, 1]
        assert band.min() == pytest.approx(1 - high) and band.max() == pytest.approx(1 - low)
    assert [list(line.get_ydata()) for line in ax.lines] == [pytest.approx([0.5, 0.4, 0.3]), pytest.approx([0.1, 0.05, 0.001])]
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="2 layers"):
        plot_signature_cosine([0.9, 0.95, 0.999], "x", nulls={"halves": split[:, :2]})
    with pytest.raises(ValueError, match="at most 2"):
        plot_signature_cosine([0.9, 0.95, 0.999], "x", nulls={"a": split, "b": split, "c": split})


def test_unit_divergence_figure_draws_the_halves_and_their_ceiling(figure):
    from persona_interp.report.null_figures import plot_unit_divergence

    draws = tuple(tuple(UnitDivergence(0, u, d, 0.5) for u, d in enumerate(values)) for values in ([0.3, 0.2, 0.1], [0.4, 0.1, 0.05]))
    null = NullUnits(heads=draws, neurons=draws, n_per_side=8)
    ranked = [UnitDivergence(5, 2, 1.0, 0.6), UnitDivergence(6, 3, 0.35, 0.6)]
    plot_unit_divergence({"neuron": ranked}, null, "x")
    ys = [list(line.get_ydata()) for line in figure[0].axes[0].lines]
    assert [0.3, 0.2] in ys and [0.4, 0.1] in ys and [1.0, 0.35] in ys and [0.4, 0.4] in ys     # draws, observed, ceiling


def test_overlap_figure_draws_the_split_half_range_per_pair(figure):
    from persona_interp.report.null_figures import plot_overlap_null

    null = {"power": [MaskDiffer(0.010, 0.008, 0.011), MaskDiffer(0.012, 0.013, 0.012)]}
    plot_overlap_null({"power": MaskDiffer(0.02, 0.01, 0.03), "wealth": MaskDiffer(0.02, 0.01, 0.03)}, null, "x")
    left, right = figure[0].axes
    assert [t.get_text() for t in left.get_xticklabels()] == ["power"]          # a pair without draws is not drawn
    assert list(left.lines[0].get_ydata()) == pytest.approx([1.0, 1.2]) and list(left.lines[1].get_ydata()) == pytest.approx([2.0])
    assert list(right.lines[0].get_ydata()) == pytest.approx([-0.1, 0.3]) and list(right.lines[1].get_ydata()) == pytest.approx([2.0])
    with pytest.raises(ValueError, match="no pair"):
        plot_overlap_null({"wealth": MaskDiffer(0.02, 0.01, 0.03)}, null, "x")
