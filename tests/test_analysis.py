import math

import pytest
import torch

import persona_interp as pi
from persona_interp.analysis.localise import (head_divergence, KINDS, layer_kind_grid, neuron_divergence,
                                              persona_specific_removal, signature_cosine_by_layer)
from persona_interp.masks.mask import Mask
from test_masks import fake_signature


def test_layer_kind_grid():
    grid, kinds = layer_kind_grid({"blocks.1.attn.k": 0.5, "blocks.0.mlp.down": 0.25}, n_layers=2)
    assert kinds == KINDS and grid.shape == (2, 7)
    assert grid[1, KINDS.index("k")] == 0.5 and grid[0, KINDS.index("down")] == 0.25
    assert math.isnan(grid[0, 0])


def test_persona_specific_removal():
    persona = Mask({"blocks.0.attn.q": torch.tensor([[0, 0, 1, 1]], dtype=torch.bool)})
    magnitude = Mask({"blocks.0.attn.q": torch.tensor([[0, 1, 0, 1]], dtype=torch.bool)})
    assert persona_specific_removal(persona, magnitude) == {"blocks.0.attn.q": 0.5}


def test_signature_cosine(llama):
    adapter = pi.get_adapter(llama)
    a = fake_signature(llama, {m.name: torch.ones(m.n_in) for m in adapter.maps})
    b = fake_signature(llama, {m.name: (torch.ones(m.n_in) if m.layer == 0 else -torch.ones(m.n_in)) for m in adapter.maps})
    cos = signature_cosine_by_layer(a, b)
    assert cos.tolist() == pytest.approx([1.0, -1.0])


def test_head_and_neuron_divergence_known_answers(llama):
    adapter = pi.get_adapter(llama)
    up = {m.name: torch.ones(m.n_in) for m in adapter.maps}
    up["blocks.1.attn.o"] = torch.ones(adapter.n_heads * adapter.d_head)
    up["blocks.1.attn.o"][2 * adapter.d_head:3 * adapter.d_head] = 3.0     # head 2 of layer 1 diverges
    up["blocks.0.mlp.down"] = torch.ones(adapter.d_mlp)
    up["blocks.0.mlp.down"][7] = 5.0                                          # neuron 7 of layer 0 diverges
    seek, reject = fake_signature(llama, up), fake_signature(llama, {}, side="reject")
    o = "blocks.1.attn.o"
    keep_b = torch.ones(adapter.d_model, adapter.n_heads * adapter.d_head, dtype=torch.bool)
    keep_b[:, 2 * adapter.d_head] = False                                     # one column of head 2 differs
    a = Mask({o: torch.ones_like(keep_b)}, {})
    b = Mask({o: keep_b}, {})
    heads = head_divergence(llama, seek, reject, a, b)
    assert (heads[0].layer, heads[0].unit) == (1, 2)
    assert heads[0].divergence == pytest.approx(2 / math.sqrt(2 + 1e-8))
    assert heads[0].weights_differ == pytest.approx(adapter.d_model / (adapter.d_model * adapter.d_head))
    other = next(h for h in heads if (h.layer, h.unit) == (1, 0))
    assert other.weights_differ == 0.0 and other.divergence == 0.0
    assert math.isnan(next(h for h in heads if h.layer == 0).weights_differ)     # layer 0 not covered by the masks
    neurons = neuron_divergence(llama, seek, reject)
    assert (neurons[0].layer, neurons[0].unit) == (0, 7) and math.isnan(neurons[0].weights_differ)
    assert len(neurons) == adapter.n_layers * adapter.d_mlp


def test_overlap_row_known_answer():
    from persona_interp.analysis.localise import overlap_row

    a = Mask({"blocks.0.attn.q": torch.tensor([[1, 1, 1, 1]], dtype=torch.bool),
              "blocks.0.mlp.up": torch.tensor([[1, 1], [1, 1]], dtype=torch.bool)})
    b = Mask({"blocks.0.attn.q": torch.tensor([[1, 0, 1, 1]], dtype=torch.bool),
              "blocks.0.mlp.up": torch.tensor([[0, 0], [1, 1]], dtype=torch.bool)})
    row = overlap_row("power", a, b)
    assert row.model_dump() == {"pair": "power", "overall": pytest.approx(3 / 8), "attn": pytest.approx(1 / 4), "mlp": pytest.approx(2 / 4)}


def test_figures_render_without_display(tmp_path, llama):
    from persona_interp.analysis.causal import DoseRow
    from persona_interp.analysis.diagnostics import GroupedOverlapRow
    from persona_interp.analysis.localise import UnitDivergence
    from persona_interp.report.figures import (plot_dose_response, plot_layer_kind_heatmap, plot_overlap_bars,
                                               plot_unit_map)

    grid, kinds = layer_kind_grid({"blocks.1.attn.k": 0.5, "blocks.0.mlp.down": 0.25}, n_layers=2)
    paths = plot_layer_kind_heatmap(grid, kinds, tmp_path / "heat", title="t", colorbar="fraction")
    paths += plot_overlap_bars([GroupedOverlapRow(pair="power", variant="wanda (per pole)", sparsity=0.3, overall=0.01, attn=0.005,
                                                  mlp=0.02)], tmp_path / "bars")
    paths += plot_unit_map([UnitDivergence(0, 1, 2.0, 0.1), UnitDivergence(1, 0, 1.0, 0.0)], 2, 4, tmp_path / "heads", unit_label="head")
    rows = [DoseRow(kind="head", mode="zero", k=k, selection=sel, seed=seed, system="none", n=4, shift=v,
                    shift_low=v - 0.1, shift_high=v + 0.1) for k, sel, seed, v in
            [(1, "top", None, 0.1), (2, "top", None, 0.3), (1, "random", 0, 0.0), (2, "random", 0, 0.05),
             (1, "random", 1, -0.02), (2, "random", 1, 0.01)]]
    paths += plot_dose_response(rows, tmp_path / "dose", title="dose")
    assert len(paths) == 8 and all(p.stat().st_size > 1000 for p in paths)
    assert {p.suffix for p in paths} == {".png", ".svg"}
