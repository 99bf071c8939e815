import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")          # absent from the TransformerLens 3.9 job's environment

import persona_interp as pi
from persona_interp.interventions.conditions import MaskCondition, Prompt, SteeringCondition
from persona_interp.report.figures import plot_regime_comparison
from persona_interp.analysis.regimes import RegimeNorms, TransferCell, compare_regimes, regime_cosines, regime_shifts
from persona_interp.evaluation.stats import Estimate
from persona_interp.report.results import ResultsError
from persona_interp.report.study_results import RegimesStudy, SteeringChoice, load_regimes, parse_regimes
from persona_interp.report.markdown import made_by, regimes_markdown, regimes_summary_markdown, transfer_ratio
from persona_interp.interventions.steering import SteeringVector

TEXTS = ["The river ran past the old mill and into the valley.", "Bread needs flour, water, salt and time."]
ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Take control?", "Sure, give me control.", "No, leave it.")]


def steering_pair(model, layer: int, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    vector = SteeringVector(layer, scale * torch.randn(pi.get_adapter(model).d_model, generator=g))
    return (SteeringCondition("steer-seek", side="seek", vector=vector, multiplier=2.0),
            SteeringCondition("steer-reject", side="reject", vector=vector, multiplier=-2.0)), vector


def test_steering_shift_is_exactly_the_added_vector(llama):
    pair, vector = steering_pair(llama, layer=1)
    shifts = regime_shifts(llama, {"steering": pair}, TEXTS, layers=[0, 1])
    assert torch.all(shifts["steering"]["seek"][0] == 0)                               # before the steered block
    torch.testing.assert_close(shifts["steering"]["seek"][1], 2.0 * vector.direction.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shifts["steering"]["direction"][1], 4.0 * vector.direction.double(), rtol=1e-4, atol=1e-5)


def test_prompt_shift_compares_the_same_tokens(llama):
    pair = (Prompt("p-seek", side="seek", system="You love power."), Prompt("p-reject", side="reject", system="You shun power."))
    shifts = regime_shifts(llama, {"prompt": pair}, TEXTS, layers=[0, 1])
    assert torch.all(shifts["prompt"]["seek"][0] == 0)             # rotary model: same text tokens, same embeddings
    assert shifts["prompt"]["seek"][1].norm() > 0                  # the system prompt changes the context
    with pytest.raises(ValueError, match="per-question system prompt"):
        regime_shifts(llama, {"rag": (Prompt("r", system=lambda q: "x"), Prompt("s"))}, TEXTS)


def test_cosines_per_layer():
    shifts = {"a": {"direction": torch.tensor([[1.0, 0.0], [1.0, 1.0]])},
              "b": {"direction": torch.tensor([[0.0, 1.0], [-2.0, -2.0]])}}
    cos = regime_cosines(shifts)
    assert list(cos) == ["a|b"] and cos["a|b"] == pytest.approx([0.0, -1.0])


def _study(cosine: list[float]) -> RegimesStudy:
    """Two regimes: prompt's effect clear of 0, mask's not; every transfer 0.05 [0.01, 0.09] with ratios 0.25 and -7."""
    effect = {"prompt": Estimate(0.2, 0.1, 0.3, 3), "mask": Estimate(-0.3, -0.9, 0.4, 3)}
    transfer = {src: {d: TransferCell(ratio=r, value=0.05, low=0.01, high=0.09, n=3) for d, r in (("prompt", 0.25), ("mask", -7.0))}
                for src in effect}
    return RegimesStudy(persona="wealth", seed=0, n_texts=2, n_items=3, fit_items=4, validation_items=4, sparsity=0.3,
                        steering=SteeringChoice(layer=1, multiplier=2.0), layers=[0, 1], layer=1, effect=effect,
                        norms={n: RegimeNorms(seek=[0.0, 1.0], reject=[0.0, 1.0], direction=[0.0, 1.0]) for n in effect},
                        cosine={"prompt|mask": cosine}, cosine_seek={"prompt|mask": cosine}, transfer=transfer)


def test_markdown_gives_no_transfer_fraction_of_an_effect_indistinguishable_from_zero():
    result = _study([0.0, 0.5])
    rows = [line for line in regimes_markdown(result).splitlines() if line.startswith(("| prompt |", "| mask |"))][-2:]
    assert rows == ["| prompt | 0.25 (+0.0500 [+0.0100, +0.0900]) | n/a (+0.0500 [+0.0100, +0.0900]) |",
                    "| mask | 0.25 (+0.0500 [+0.0100, +0.0900]) | n/a (+0.0500 [+0.0100, +0.0900]) |"]


def test_summary_gives_cosines_at_the_steering_layer_and_no_ratio_to_a_null_effect():
    result = _study([0.9, -0.5])
    lines = regimes_summary_markdown({"wealth": result}).splitlines()
    assert lines[:3] == ["| persona | layer | prompt vs mask |", "|---|---|---|", "| wealth | 1 | -0.500 |"]
    assert lines[-2:] == ["| wealth | prompt | 0.25 | n/a |", "| wealth | mask | 0.25 | n/a |"]
    assert transfer_ratio(result, "mask", "prompt") == 0.25 and transfer_ratio(result, "prompt", "mask") is None


def test_compare_regimes_transfer_of_a_steering_regime_to_itself_is_one(llama, tmp_path):
    steer, _ = steering_pair(llama, layer=1, scale=3.0)
    mask = pi.random_mask(llama, 0.3, seed=1)
    regimes = {"steering": steer,
               "mask": (MaskCondition("m-seek", side="seek", mask=mask), MaskCondition("m-reject", side="reject", mask=~mask)),
               "prompt": (Prompt("p-seek", side="seek", system="You love power."), Prompt("p-reject", side="reject", system="No power."))}
    result = compare_regimes(llama, regimes, TEXTS, ITEMS, layer=1, layers=[0])
    assert result.layers == [0, 1] and result.n_items == 3
    assert set(result.cosine) == {"steering|mask", "steering|prompt", "mask|prompt"}
    assert abs(result.effect["steering"].value) > 1e-4
    # the steering regime's own direction at its own layer, at its own norm, is the same intervention
    assert result.transfer["steering"]["steering"].ratio == pytest.approx(1.0, rel=1e-3)
    assert all(abs(c) <= 1 + 1e-9 for values in result.cosine.values() for c in values)
    paths = plot_regime_comparison(result, tmp_path / "regimes", title="tiny")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="A/B items"):
        compare_regimes(llama, regimes, TEXTS, [])


def test_cli_regimes_on_an_mbti_axis(llama, tmp_path, monkeypatch):
    import json

    from persona_interp import cli
    from persona_interp.model import load as models
    from test_composition import random_pair

    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    folder = tmp_path / "sigs"
    seek, reject = random_pair(llama, 0, "introversion_extraversion")
    seek.save(folder / "introversion_extraversion_seek.safetensors")
    reject.save(folder / "introversion_extraversion_reject.safetensors")
    cli.main(["regimes", "--persona", "introversion_extraversion", "--signatures", str(folder), "--n-items", "3",
              "--n-texts", "2", "--n-calibration", "4", "--out", str(tmp_path / "reg"), "--figures", str(tmp_path / "f")])
    study = load_regimes(tmp_path / "reg.json")
    assert set(study.transfer) == {"prompt", "mask", "steering"} and study.n_items == 3 and study.fit_items == 4
    assert study.random_cosine_band is not None and study.model_dump(mode="json") == json.loads((tmp_path / "reg.json").read_text())
    assert "prompt vs mask" in (tmp_path / "reg.md").read_text()
    made = study.provenance                            # which model, dtype, CPU and code: in the JSON and the markdown
    assert made is not None and made.fingerprint == pi.get_adapter(llama).fingerprint and made.dtype == "float32"
    assert made.finished is not None and made.started <= made.finished and made.seed == 0
    assert made_by(made) in (tmp_path / "reg.md").read_text() and made.revision in made_by(made)
    assert (tmp_path / "f" / "regimes_introversion_extraversion.png").is_file()


REPORTS = Path(__file__).resolve().parent.parent / "reports"


@pytest.mark.parametrize("path", sorted((REPORTS / "regimes").glob("*.json")), ids=lambda p: p.stem)
def test_committed_regime_comparisons_load_and_re_render(path):
    """Every committed comparison reads into its record, writes back the same JSON and renders its committed markdown."""
    study = load_regimes(path)
    assert study.persona == path.stem and set(study.effect) == {"prompt", "mask", "steering"}
    assert json.loads(json.dumps(study.model_dump())) == json.loads(path.read_text())
    assert regimes_markdown(study) == path.with_suffix(".md").read_text()


def test_a_regime_comparison_with_a_misspelt_key_is_an_error_naming_it(tmp_path):
    data = json.loads((REPORTS / "regimes" / "power.json").read_text())
    data["effect"]["mask"]["hgih"] = data["effect"]["mask"].pop("high")
    (tmp_path / "power.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"power.json: effect.mask.high: Field required; effect.mask.hgih: Unexpected"):
        load_regimes(tmp_path / "power.json")
    data = json.loads((REPORTS / "regimes" / "power.json").read_text())
    data["steering"]["alpha"] = data["steering"].pop("multiplier")
    with pytest.raises(ResultsError, match=r"regimes: steering.multiplier: Field required; steering.alpha: Extra inputs"):
        parse_regimes(data)
