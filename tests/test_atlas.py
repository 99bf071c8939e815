import dataclasses
from pathlib import Path

import pytest
import torch
import json

pytest.importorskip("matplotlib")          # absent from the TransformerLens 3.9 job's environment

import persona_interp as pi
from persona_interp.analysis.causal import DoseRow
from persona_interp.analysis.localise import PairOverlap, UnitDivergence
from persona_interp.data.personas import benchmarks_dir
from persona_interp.report.markdown import atlas_markdown, atlas_summary_markdown
from persona_interp.report.results import ResultsError
from persona_interp.report.saved import saved_study_for
from persona_interp.report.study_results import load_atlas, parse_atlas
from persona_interp.studies.atlas import persona_atlas
from persona_interp.studies.config import AtlasConfig

needs_ai_personas = pytest.mark.skipif(not benchmarks_dir().is_dir(),
                                       reason="../shared/benchmarks/ai_persona not present (nor $PERSONA_INTERP_BENCHMARKS)")
TINY = AtlasConfig(n_calibration=8, n_causal=4, ks=[1, 2], seeds=[0], n_neutral=2, n_top=3, batch_size=4)


def test_atlas_runs_end_to_end_on_a_tiny_model(llama, tmp_path):
    atlas = persona_atlas(llama, "introversion_extraversion", TINY, tmp_path, progress=False)
    adapter = pi.get_adapter(llama)
    assert len(atlas.signature_cosine) == adapter.n_layers and len(atlas.top_heads) == 3
    assert [r.pair.split()[1] for r in atlas.overlap][:2] == ["contrastive_wanda@0.3", "contrastive_sparse@0.3"]
    assert all(0 <= r.overall <= 1 for r in atlas.overlap)
    # 2 kinds x 2 modes x 2 ks x (top + 1 seed) x 3 systems
    assert atlas.dose_response is not None and len(atlas.dose_response) == 2 * 2 * 2 * 2 * 3
    assert atlas.equal_damage is not None and atlas.equal_damage.shift("ablation").n == TINY.n_causal
    for stem in ("differ_cw", "iou_removed_cw", "persona_specific", "signature_cosine", "heads", "neurons",
                 "dose_neuron_zero", "dose_head_mean"):
        assert (tmp_path / f"introversion_extraversion_{stem}.png").is_file()
    html = (tmp_path / "introversion_extraversion_top_neurons.html").read_text()
    assert "seek answer" in html and "reject answer" in html
    assert parse_atlas(json.loads(json.dumps(atlas.model_dump()))) == atlas      # written and read back: the same
    text = atlas_markdown(atlas)
    assert "Dose–response" in text and "Equal damage" in text
    assert atlas.provenance is not None and atlas.provenance.fingerprint == adapter.fingerprint
    assert atlas.provenance.finished is not None and atlas.provenance.header() in text


def test_cli_analyse_writes_outputs_and_refuses_to_overwrite(llama, tmp_path, monkeypatch, capsys):
    import pytest

    from persona_interp import cli
    from persona_interp.model import load as models
    from persona_interp.studies import config as study_configs

    monkeypatch.setattr(study_configs, "QUICK_ATLAS", TINY)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    args = ["analyse", "--persona", "thinking_feeling", "--quick", "--out", str(tmp_path / "tf"), "--figures", str(tmp_path / "fig")]
    cli.main(args)
    assert (tmp_path / "tf.md").read_text().startswith("## thinking_feeling")
    assert json.loads((tmp_path / "tf.json").read_text())["config"]["n_causal"] == TINY.n_causal
    assert (tmp_path / "fig" / "thinking_feeling_heads.svg").is_file()
    with pytest.raises(SystemExit, match="exists; pass --force"):
        cli.main(args)
    figure = (tmp_path / "fig" / "thinking_feeling_heads.svg").read_bytes()
    with pytest.raises(SystemExit, match="already holds .* figure file"):    # new report name, same figures: refused
        cli.main([*args[:-4], "--out", str(tmp_path / "other"), "--figures", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "thinking_feeling_heads.svg").read_bytes() == figure and not (tmp_path / "other.md").exists()
    with pytest.raises(SystemExit):
        cli.main(["analyse", "--persona", "stoicism", "--out", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err


def _unit(layer, unit, divergence):
    return UnitDivergence(layer, unit, divergence, 0.5)


def test_summary_markdown_one_row_per_pair_with_known_values():
    atlas = load_atlas(REPORTS / "atlas" / "power.json").model_copy(update={
        "persona": "power", "signature_cosine": [0.999, 0.9981, 0.99995],
        "overlap": [PairOverlap(pair="power contrastive_wanda@0.3", overall=0.6, attn=0.55, mlp=0.625)],
        "top_heads": [_unit(2, 7, 0.21), _unit(0, 1, 0.1)],
        "top_neurons": [_unit(16, 263, 1.33), _unit(13, 10, 1.0), _unit(18, 5, 0.9), _unit(14, 2, 0.8)], "dose_response": None})
    dose = [DoseRow(kind="neuron", mode="zero", system="no prompt", k=k, selection=sel, seed=seed, n=48,
                    shift=shift, shift_low=shift - 0.1, shift_high=shift + 0.1)
            for k, sel, seed, shift in ((4, "top", None, 0.2), (64, "top", None, 0.43), (64, "random", 0, 0.02), (64, "random", 1, 0.04))]
    dose.append(dose[1].replace(mode="mean", shift=9.0))                 # another mode: not in the column
    lines = atlas_summary_markdown([atlas, atlas.model_copy(update={"persona": "wealth", "dose_response": dose})], n_units=2).splitlines()
    assert len(lines) == 4 and lines[3].startswith("| wealth |")
    assert lines[2] == ("| power | 0.9981 (L1) | 60.0 % (55.0 / 62.5) | L2H7 (0.21), L0H1 (0.10) "
                        "| L16N263 (1.33), L13N10 (1.00) | 13–18 (median 16) | not measured |")
    assert lines[3].endswith("| 13–18 (median 16) | k = 64: +0.43 [+0.33, +0.53] (random +0.03) |")


@needs_ai_personas
def test_cli_analyse_localise_only_skips_the_causal_part(llama, tmp_path, monkeypatch):
    from persona_interp import cli
    from persona_interp.model import load as models
    from persona_interp.studies import config as study_configs

    monkeypatch.setattr(study_configs, "QUICK_ATLAS", TINY)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    cli.main(["analyse", "--persona", "power", "--quick", "--localise-only", "--out", str(tmp_path / "p"),
              "--figures", str(tmp_path / "fig")])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert "dose_response" not in saved and "equal_damage" not in saved and len(saved["top_neurons"]) == TINY.n_top
    assert [d["side"] for d in saved["signature_data"]] == ["seek", "reject"]
    assert saved["signature_data"][0]["n_samples"] == saved["fit_items"] == TINY.n_calibration
    text = (tmp_path / "p.md").read_text()
    assert "signatures of seek 8 / reject 8 calibration items" in text and "Localisation only" in text
    assert "Dose–response" not in text
    assert (tmp_path / "fig" / "power_top_heads.html").is_file() and not list((tmp_path / "fig").glob("power_dose_*"))


@needs_ai_personas
def test_cli_analyse_chooses_the_dose_response_it_measures(llama, tmp_path, monkeypatch, capsys):
    from persona_interp import cli
    from persona_interp.model import load as models
    from persona_interp.studies import config as study_configs

    monkeypatch.setattr(study_configs, "QUICK_ATLAS", TINY)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    cli.main(["analyse", "--persona", "power", "--quick", "--kinds", "neuron", "--modes", "zero", "--ks", "2",
              "--seeds", "0", "1", "--no-prompts", "--out", str(tmp_path / "p"), "--figures", str(tmp_path / "fig")])
    rows = json.loads((tmp_path / "p.json").read_text())["dose_response"]
    assert {(r["kind"], r["mode"], r["system"], r["k"]) for r in rows} == {("neuron", "zero", "no prompt", 2)}
    assert sorted((r["selection"], r["seed"]) for r in rows if r["selection"] == "random") == [("random", 0), ("random", 1)]
    assert len(rows) == 3 and "Equal damage" in (tmp_path / "p.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["analyse", "--persona", "power", "--ks", "0", "--out", str(tmp_path / "x")])
    assert "must be a positive count" in capsys.readouterr().err


def _with_token_sums(signature):
    """Per-token sums as well (the paper code's Contrastive-Sparse rule reads them)."""
    for stats in signature.sums.values():
        stats["token_sum"] = stats["norm_sum"] / 3
        stats["token_sq_sum"] = stats["norm_sq_sum"].clone()
    return signature


def test_overlap_study_rows_and_figures(llama, tmp_path):
    from persona_interp.analysis.diagnostics import OVERLAP_VARIANTS
    from persona_interp.report.markdown import overlap_markdown
    from persona_interp.studies.atlas import overlap_study, variant_slug
    from persona_interp.masks.builders import contrastive_sparse_masks, wanda_mask
    from persona_interp.masks.mask import fraction_differ
    from test_masks import fake_signature

    adapter = pi.get_adapter(llama)
    rng = torch.Generator().manual_seed(0)                            # no ties in z: the 2ρ construction holds
    seek = _with_token_sums(fake_signature(llama, {m.name: 0.5 + torch.rand(m.n_in, generator=rng, dtype=torch.float64)
                                                   for m in adapter.maps}))
    reject = _with_token_sums(fake_signature(llama, {}, side="reject"))
    relabel = lambda sig, side: dataclasses.replace(sig, meta={**sig.meta, "side": side})  # noqa: E731
    wealth = (relabel(reject, "seek"), relabel(seek, "reject"))          # a second pair: the first's poles reversed
    rows = overlap_study(llama, {"power": (seek, reject), "wealth": wealth}, [0.3, 0.5], tmp_path)
    assert len(rows) == 2 * 2 * len(OVERLAP_VARIANTS)
    pick = {(r.pair, r.variant, r.sparsity): r for r in rows}
    cs = pick["power", "contrastive_sparse (text: disjoint)", 0.5]
    assert cs.overall == pytest.approx(fraction_differ(*contrastive_sparse_masks(llama, seek, reject, 0.5)))
    a, b = wanda_mask(llama, seek, 0.3), wanda_mask(llama, reject, 0.3)
    wanda = pick["power", "wanda (per pole)", 0.3]                      # attention / MLP weighted by their entries
    for group, kinds in (("attn", ("q", "k", "v", "o")), ("mlp", ("gate", "up", "down"))):
        names = [m.name for m in adapter.maps if m.kind in kinds]
        differ = sum(int((a.keep[n] != b.keep[n]).sum()) for n in names) / sum(a.keep[n].numel() for n in names)
        assert getattr(wanda, group) == pytest.approx(differ)
    relu = pick["power", "contrastive_wanda relu", 0.3]
    assert relu.bound_low is not None and relu.bound_high is not None and wanda.bound_low is None
    assert relu.bound_low - 1e-9 <= relu.overall <= relu.bound_high + 1e-9 and "bound_low" not in wanda.model_dump()
    assert (tmp_path / "overlap_power_cw0.3.png").is_file()
    assert all((tmp_path / f"overlap_{variant_slug(v)}_0.5.svg").is_file() for v in OVERLAP_VARIANTS)
    text = overlap_markdown(rows)
    assert "| power | contrastive_wanda relu | 0.3 |" in text and "| power | wanda (per pole) | 0.3 |" in text


def test_cli_overlap_reads_saved_signatures(llama, tmp_path, monkeypatch):
    from persona_interp import cli
    from persona_interp.model import load as models
    from test_masks import fake_signature

    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    folder = tmp_path / "sigs"
    rng = torch.Generator().manual_seed(0)
    means = [{m.name: 1 + torch.rand(m.n_in, generator=rng, dtype=torch.float64) for m in pi.get_adapter(llama).maps}
             for _ in range(2)]                                        # two different poles (identical ones are refused)
    _with_token_sums(fake_signature(llama, means[0], side="seek")).save(folder / "power_seek.safetensors")
    _with_token_sums(fake_signature(llama, means[1], side="reject")).save(folder / "power_reject.safetensors")
    cli.main(["overlap", "--signatures", str(folder), "--sparsities", "0.5", "--out", str(tmp_path / "ov"), "--figures", str(tmp_path / "f")])
    rows = json.loads((tmp_path / "ov.json").read_text())
    from persona_interp.analysis.diagnostics import OVERLAP_VARIANTS

    assert [(r["pair"], r["variant"]) for r in rows] == [("power", variant) for variant in OVERLAP_VARIANTS]
    assert "(construction" not in (tmp_path / "ov.md").read_text() and "by construction" in (tmp_path / "ov.md").read_text()
    with pytest.raises(SystemExit, match="no saved signatures for 'wealth'"):
        cli.main(["overlap", "--signatures", str(folder), "--personas", "wealth", "--out", str(tmp_path / "ov2"),
                  "--figures", str(tmp_path / "f2")])


REPORTS = Path(__file__).resolve().parent.parent / "reports"


@pytest.mark.parametrize("path", sorted((REPORTS / "atlas").glob("*.json")), ids=lambda p: p.stem)
def test_committed_atlases_load_and_re_render(path):
    """Every committed atlas reads into its record, writes back the same JSON and renders its committed markdown."""
    atlas = load_atlas(path)
    assert atlas.persona == path.stem and atlas.dose_response and atlas.equal_damage is not None
    assert json.loads(json.dumps(atlas.model_dump())) == json.loads(path.read_text())
    assert atlas_markdown(atlas) == path.with_suffix(".md").read_text()


def test_an_atlas_with_a_misspelt_or_missing_key_is_an_error_naming_it(tmp_path):
    data = json.loads((REPORTS / "atlas" / "power.json").read_text())
    data["dose_response"][0]["shfit"] = data["dose_response"][0].pop("shift")
    (tmp_path / "power.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"power.json: dose_response.0.shift: Field required; dose_response.0.shfit: Extra inputs"):
        load_atlas(tmp_path / "power.json")
    data = json.loads((REPORTS / "atlas" / "power.json").read_text())
    data["top_heads"][0]["heads"] = 1
    with pytest.raises(ResultsError, match=r"atlas: top_heads.0.heads: Unexpected keyword argument"):
        parse_atlas(data)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ResultsError, match="bad.json is not JSON"):
        load_atlas(tmp_path / "bad.json")


def test_saved_study_for_types_a_saved_atlas(llama):
    saved = saved_study_for(llama, REPORTS / "atlas" / "power.json", parse_atlas)      # another model's atlas: refused
    assert saved.results is None and "not this one" in saved.reason
