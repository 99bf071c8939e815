import math

import pytest
import torch

import persona_interp as pi
from persona_interp.analysis.localise import signature_cosine_by_layer
from persona_interp.analysis.nulls import (percentile_band, random_cosine_band, random_cosines, split_half_differ,
                                           split_half_signature_cosine)


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
        assert 0 <= row["overall"] <= 0.6 + 1e-9              # two masks at ρ = 0.3 differ in at most 2ρ of the entries
        assert min(row["attn"], row["mlp"]) <= row["overall"] <= max(row["attn"], row["mlp"])
        assert row["mlp_minus_attn"] == pytest.approx(row["mlp"] - row["attn"])
    same = split_half_differ(llama, seek_signature, 0.3, draws=1, seed=0)
    assert same[0] == rows[0]                                  # seeded
    with pytest.raises(ValueError, match="at least 4"):
        split_half_differ(llama, seek_signature.subset([0, 1, 2]), 0.3)


def test_figures_draw_the_nulls(tmp_path):
    from persona_interp.report.figures import plot_dose_response, plot_regime_comparison

    rows = [{"kind": "neuron", "mode": "zero", "k": k, "selection": "top", "seed": None, "system": "no prompt", "shift": 0.1 * k,
             "shift_low": 0.05 * k, "shift_high": 0.15 * k} for k in (1, 4)]
    rows += [{"kind": "neuron", "mode": "zero", "k": k, "selection": "random", "seed": s, "system": "no prompt",
              "shift": 0.01 * s, "shift_low": 0.0, "shift_high": 0.0} for k in (1, 4) for s in range(10)]
    assert all(p.stat().st_size > 1000 for p in plot_dose_response(rows, tmp_path / "dose", title="ten seeds"))
    effect = {"prompt": {"value": 0.2, "low": 0.1, "high": 0.3}, "mask": {"value": 0.3, "low": 0.1, "high": 0.4}}
    result = {"layers": [0, 1], "layer": 1, "effect": effect, "cosine": {"prompt|mask": [0.9, -0.5]}, "n_items": 3,
              "transfer": {s: {d: {"ratio": 1.0} for d in effect} for s in effect}, "random_cosine_band": [-0.08, 0.08]}
    assert all(p.stat().st_size > 1000 for p in plot_regime_comparison(result, tmp_path / "regimes", title="band"))
