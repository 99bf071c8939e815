import json
from pathlib import Path

import pytest
import torch
from conftest import unchecked

import persona_interp as pi
from persona_interp.masks.composition import (blend, compose, fractional_mask, intersection_type_mask, pole_scores,
                                              PoleScores, type_mask, type_poles)
from persona_interp.studies.composition import fractional_curve, type_comparison, type_prompt
from persona_interp.report.markdown import composition_markdown, made_by
from persona_interp.report.results import ResultsError
from persona_interp.report.study_results import FractionRow, load_composition, parse_composition
from persona_interp.masks.builders import contrastive_wanda_masks
from persona_interp.masks.mask import Mask
from persona_interp.model.adapter import ModelMismatchError
from test_masks import fake_signature

AXES = list(pi.data.personas.MBTI_AXES)


def random_pair(model, seed: int, dataset: str = "axis"):
    g = torch.Generator().manual_seed(seed)
    adapter = pi.get_adapter(model)
    means = {m.name: torch.rand(m.n_in, generator=g, dtype=torch.float64) * 3 for m in adapter.maps}
    variances = {m.name: torch.rand(m.n_in, generator=g, dtype=torch.float64) + 0.1 for m in adapter.maps}
    seek = fake_signature(model, means, variances, dataset=dataset, side="seek")
    shifted = {n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in means.items()}
    reject = fake_signature(model, shifted, variances, dataset=dataset, side="reject")
    return seek, reject


def test_type_poles():
    assert type_poles("intj") == dict.fromkeys(AXES, "seek")
    assert type_poles("ESFP") == dict.fromkeys(AXES, "reject")
    assert type_poles("ENTP") == {"introversion_extraversion": "reject", "intuition_sensing": "seek",
                                  "thinking_feeling": "seek", "judging_perceiving": "reject"}
    for bad in ("INT", "INTX", "IENJ", "INTJS"):
        with pytest.raises(ValueError, match="type code"):
            type_poles(bad)
    assert type_prompt("INTJ").startswith("Your personality type is INTJ.") and "introvert" in type_prompt("INTJ")


def test_fraction_endpoints_are_contrastive_wanda(llama):
    seek, reject = random_pair(llama, 0)
    cw_seek, cw_reject = contrastive_wanda_masks(llama, seek, reject, 0.4)
    for fraction, expected in ((1.0, cw_seek), (0.0, cw_reject)):
        mask = fractional_mask(llama, seek, reject, fraction, 0.4)
        assert mask.meta["fraction"] == fraction
        for name, keep in expected.keep.items():
            assert torch.equal(mask.keep[name], keep), name


def test_fraction_moves_kept_weights_monotonically(llama):
    seek, reject = random_pair(llama, 1)
    name = pi.get_adapter(llama).maps[0].name
    z = pi.masks.builders.contrast(seek, reject, name)
    seek_channels = z > 0
    counts = [int(fractional_mask(llama, seek, reject, f, 0.5).keep[name][:, seek_channels].sum())
              for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    with pytest.raises(ValueError, match="fraction"):
        fractional_mask(llama, seek, reject, 1.5, 0.5)


def test_blend_ranks_the_weighted_sum():
    a = PoleScores.fixed({"m": torch.tensor([[0.5, 0.3, 0.2, 0.0]])}, {"m": torch.zeros(1, 4)}, {"poles": [{"weight": 1.0}]})
    b = PoleScores.fixed({"m": torch.tensor([[0.0, 0.1, 0.2, 0.7]])}, {"m": torch.tensor([[0.0, 0.0, 1.0, 0.0]])},
                         {"poles": [{"weight": 1.0}]})
    assert blend([a, b]).mask(0.5).keep["m"].tolist() == [[True, False, False, True]]       # .5 .4 .4 .7
    assert blend([a, b], [1.0, 0.0]).mask(0.5).keep["m"].tolist() == [[True, True, False, False]]
    # 0.5·a + b = .25 .25 .3 .7 → keep 3 and 2; a tie between 0 and 1 at 75 % kept goes by the tiebreak, then index
    assert blend([a, b], [0.5, 1.0]).mask(0.5).keep["m"].tolist() == [[False, False, True, True]]
    assert blend([a, b], [0.5, 1.0]).meta["poles"] == [{"weight": 0.5}, {"weight": 1.0}]
    with pytest.raises(ValueError, match="non-negative"):
        blend([a, b], [1.0, -1.0])
    with pytest.raises(ValueError, match="weights for"):
        blend([a, b], [1.0])
    c = PoleScores.fixed({"other": torch.zeros(1, 4)}, {"other": torch.zeros(1, 4)})
    with pytest.raises(ModelMismatchError, match="different linear maps"):
        a + c


def test_type_mask_with_one_axis_weighted_is_that_axis_mask(llama):
    axes = {axis: random_pair(llama, i, axis) for i, axis in enumerate(AXES)}
    only_first = {axis: float(axis == AXES[0]) for axis in AXES}
    cw_seek, _ = contrastive_wanda_masks(llama, *axes[AXES[0]], 0.3)
    mask = type_mask(llama, axes, "INTJ", 0.3, weights=only_first)
    assert all(torch.equal(mask.keep[n], k) for n, k in cw_seek.keep.items())
    _, cw_reject = contrastive_wanda_masks(llama, *axes[AXES[0]], 0.3)
    mask = type_mask(llama, axes, "ENTJ", 0.3, weights=only_first)
    assert all(torch.equal(mask.keep[n], k) for n, k in cw_reject.keep.items())


def test_type_mask_has_the_asked_sparsity_and_intersection_removes_more(llama):
    axes = {axis: random_pair(llama, i, axis) for i, axis in enumerate(AXES)}
    composed = type_mask(llama, axes, "INFP", 0.3)
    for spec in pi.get_adapter(llama).maps:
        assert (composed.keep[spec.name].sum(1) == int(spec.n_in * 0.7)).all()
    inter = intersection_type_mask(llama, axes, "INFP", 0.3)
    assert inter.sparsity() > composed.sparsity() + 0.05 and inter.meta["per_axis_sparsity"] == 0.3
    with pytest.raises(ValueError, match="needs signatures"):
        type_mask(llama, {AXES[0]: axes[AXES[0]]}, "INFP", 0.3)


def test_pole_scores_rows_sum_to_one(llama):
    seek, reject = random_pair(llama, 3)
    scores = pole_scores(llama, seek, reject, "reject", modules=["mlp"])
    assert scores.names and all("mlp" in n for n in scores.names)
    for name in scores.names:
        sums = scores.map_scores(name)[0].sum(1)
        assert torch.all(((sums - 1).abs() < 1e-9) | (sums == 0))
    with unchecked(), pytest.raises(ValueError, match="pole"):
        pole_scores(llama, seek, reject, "both")


def test_compose_votes():
    a = Mask({"m": torch.tensor([[True, True, False, False]])}, {"method": "a"})
    b = Mask({"m": torch.tensor([[True, False, True, False]])}, {"method": "b"})
    c = Mask({"m": torch.tensor([[True, False, False, True]])}, {"method": "c"})
    assert compose([a, b, c]).keep["m"].tolist() == [[True, False, False, False]]              # strict majority
    assert compose([a, b, c], threshold=0.0).keep["m"].tolist() == (a | b | c).keep["m"].tolist()
    assert compose([a, b]).keep["m"].tolist() == (a & b).keep["m"].tolist()
    assert compose([a, b], weights=[0.7, 0.3]).keep["m"].tolist() == a.keep["m"].tolist()
    assert compose([a, b], weights=[0.3, 0.7], sparsity=0.5).keep["m"].tolist() == b.keep["m"].tolist()
    assert compose([a, b, c]).meta["parts"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least one"):
        compose([])
    with pytest.raises(ValueError, match="weights for"):
        compose([a, b], weights=[1.0])
    with pytest.raises(ModelMismatchError, match="different models"):
        compose([Mask(a.keep, {"fingerprint": "x"}), Mask(b.keep, {"fingerprint": "y"})])


ITEMS = [pi.PersonaItem("Stay in tonight?", "Yes, a quiet night alone.", "No, let's go out with everyone."),
         pi.PersonaItem("Big party?", "I'd rather not.", "Absolutely, the bigger the better."),
         pi.PersonaItem("Lunch with the team?", "I'll eat alone today.", "Yes, let's all go together!")]


def test_fractional_curve_and_type_comparison_run(llama):
    seek, reject = random_pair(llama, 4)
    curve = fractional_curve(llama, seek, reject, ITEMS, [1.0, 0.0, 0.5], 0.3, progress=False)
    assert [r.fraction for r in curve.rows] == [0.0, 0.5, 1.0, None]                      # sorted, then control
    assert curve.control() == curve.rows[-1] and curve.rows[-1].condition == "random@0.3"
    assert all(r.n == len(ITEMS) and r.margin_low <= r.margin <= r.margin_high for r in curve.rows)
    assert curve.trend.slope.n == len(ITEMS) and curve.trend.monotonic == (curve.trend.reversals == 0)
    assert curve.rows[-1].model_dump()["fraction"] is None                    # the control's fraction is written
    axes = {axis: random_pair(llama, i, axis) for i, axis in enumerate(AXES)}
    rows = type_comparison(llama, axes, "ISTJ", 0.3, dict.fromkeys(AXES, ITEMS), progress=False)
    assert len(rows) == 4 * 6
    base = [r for r in rows if r.condition == "base"]
    assert all(r.shift == 0 for r in base)
    sensing = [r for r in rows if r.axis == "intuition_sensing"]
    assert {r.pole for r in sensing} == {"sensing"}
    inter = next(r for r in rows if r.condition == "intersection")
    assert inter.sparsity == pytest.approx(next(r for r in rows if r.condition == "random@intersection").sparsity)


def test_cli_compose_writes_tables_and_figures(llama, tmp_path, monkeypatch):
    from persona_interp import cli
    from persona_interp.model import load as models

    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    folder = tmp_path / "sigs"
    for i, axis in enumerate(AXES):
        seek, reject = random_pair(llama, i, axis)
        seek.save(folder / f"{axis}_seek.safetensors")
        reject.save(folder / f"{axis}_reject.safetensors")
    args = ["compose", "--signatures", str(folder), "--type", "ENFP", "--n-test", "3", "--fractions", "0", "1",
            "--out", str(tmp_path / "study"), "--figures", str(tmp_path / "f")]
    cli.main(args)
    study = load_composition(tmp_path / "study.json")
    assert study.type == "ENFP" and study.n_test == dict.fromkeys(AXES, 3) and len(study.type_rows) == 4 * 6
    assert study.model_dump(mode="json") == json.loads((tmp_path / "study.json").read_text())
    assert [r.fraction for r in study.curve.rows] == [0.0, 1.0, None]
    assert "| introversion_extraversion | extraversion | type-mask |" in (tmp_path / "study.md").read_text()
    assert study.provenance is not None and study.provenance.fingerprint == pi.get_adapter(llama).fingerprint
    assert study.provenance.finished is not None and made_by(study.provenance) in (tmp_path / "study.md").read_text()
    assert (tmp_path / "f" / "type_ENFP_0.3.png").is_file() and (tmp_path / "f" / "fraction_introversion_extraversion_0.3.svg").is_file()
    with pytest.raises(SystemExit, match="exists"):
        cli.main(args)


REPORTS = Path(__file__).resolve().parent.parent / "reports"


def test_the_committed_composition_study_loads_writes_back_and_re_renders():
    """reports/composition.json reads into its record, writes back the same JSON text (as ``persona-interp compose``
    writes it) and renders its committed markdown."""
    path = REPORTS / "composition.json"
    study = load_composition(path)
    assert study.type == "INTJ" and len(study.type_rows) == 24 and study.curve.control().fraction is None
    assert json.dumps(study.model_dump(), indent=1) == path.read_text()
    assert composition_markdown(study) == path.with_suffix(".md").read_text()


def test_a_composition_study_with_a_misspelt_key_is_an_error_naming_it(tmp_path):
    data = json.loads((REPORTS / "composition.json").read_text())
    data["curve"]["trend"]["slope"]["hihg"] = data["curve"]["trend"]["slope"].pop("high")
    (tmp_path / "composition.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"composition.json: curve.trend.slope.high: Field required; "
                                           r"curve.trend.slope.hihg: Unexpected"):
        load_composition(tmp_path / "composition.json")
    data = json.loads((REPORTS / "composition.json").read_text())
    data["type_rows"][3]["shfit"] = data["type_rows"][3].pop("shift")
    with pytest.raises(ResultsError, match=r"composition: type_rows.3.shift: Field required; type_rows.3.shfit: Extra inputs"):
        parse_composition(data)
    del data["curve"]["rows"][-1]["fraction"]                       # the control's None fraction must be there
    with pytest.raises(ResultsError, match=r"curve.rows.5.fraction: Field required"):
        parse_composition(data)


def test_a_fraction_row_always_writes_its_fraction():
    row = FractionRow(condition="random@0.3", fraction=None, n=3, margin=0.1, margin_low=0.0, margin_high=0.2, shift=0.0,
                      shift_low=-0.1, shift_high=0.1, accuracy_seek=0.5, accuracy_low=0.2, accuracy_high=0.8)
    assert row.model_dump()["fraction"] is None and FractionRow.model_validate(row.model_dump()) == row
