import json

import persona_interp as pi
from persona_interp.atlas import AtlasConfig, persona_atlas, to_markdown

TINY = AtlasConfig(n_calibration=8, n_causal=4, ks=[1, 2], seeds=[0], n_neutral=2, n_top=3, batch_size=4)


def test_atlas_runs_end_to_end_on_a_tiny_model(llama, tmp_path):
    atlas = persona_atlas(llama, "introversion_extraversion", TINY, tmp_path, progress=False)
    adapter = pi.get_adapter(llama)
    assert len(atlas["signature_cosine"]) == adapter.n_layers and len(atlas["top_heads"]) == 3
    assert [r["pair"].split()[1] for r in atlas["overlap"]][:2] == ["contrastive_wanda@0.3", "contrastive_sparse@0.3"]
    assert all(0 <= r["overall"] <= 1 for r in atlas["overlap"])
    # 2 kinds x 2 modes x 2 ks x (top + 1 seed) x 3 systems
    assert len(atlas["dose_response"]) == 2 * 2 * 2 * 2 * 3
    assert {"ablation_shift", "steer_seek_shift", "steering_multiplier"} <= set(atlas["equal_damage"])
    for stem in ("differ_cw", "iou_removed_cw", "persona_specific", "signature_cosine", "heads", "neurons",
                 "dose_neuron_zero", "dose_head_mean"):
        assert (tmp_path / f"introversion_extraversion_{stem}.png").is_file()
    html = (tmp_path / "introversion_extraversion_top_neurons.html").read_text()
    assert "seek answer" in html and "reject answer" in html
    json.dumps(atlas)                                   # every number is serialisable
    text = to_markdown(atlas)
    assert "Dose–response" in text and "Equal damage" in text


def test_cli_analyse_writes_outputs_and_refuses_to_overwrite(llama, tmp_path, monkeypatch, capsys):
    import pytest

    from persona_interp import atlas, cli, models

    monkeypatch.setattr(atlas, "QUICK_ATLAS", TINY)
    monkeypatch.setattr(models, "load_model", lambda name=None: llama)
    args = ["analyse", "--persona", "thinking_feeling", "--quick", "--out", str(tmp_path / "tf"), "--figures", str(tmp_path / "fig")]
    cli.main(args)
    assert (tmp_path / "tf.md").read_text().startswith("## thinking_feeling")
    assert json.loads((tmp_path / "tf.json").read_text())["config"]["n_causal"] == TINY.n_causal
    assert (tmp_path / "fig" / "thinking_feeling_heads.svg").is_file()
    with pytest.raises(SystemExit, match="exists; pass --force"):
        cli.main(args)
    with pytest.raises(SystemExit):
        cli.main(["analyse", "--persona", "stoicism", "--out", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err
