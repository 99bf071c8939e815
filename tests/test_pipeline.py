"""The main job end to end on a tiny model and a made-up persona dataset."""
import json

import pytest

import persona_interp as pi
from persona_interp import pipeline, tuning


def fake_persona(name, split="train"):
    n = 30 if split == "train" else 8
    items = [pi.PersonaItem(f"{split} question {i}: would you take control of project {i}?",
                            f"Yes, I take control {i}.", f"No, I decline {i}.") for i in range(n)]
    return pi.PersonaDataset(f"{name}:{split}", items)


@pytest.fixture
def tiny_pipeline(monkeypatch, llama):
    monkeypatch.setattr(pipeline, "load_persona", fake_persona)
    monkeypatch.setattr(pipeline, "load_neutral_texts", lambda: ["plain neutral text one", "another neutral text"])
    seen = []
    real = tuning.score_ab

    def spy(model, items, **kw):
        seen.extend(item.question for item in items)
        return real(model, items, **kw)

    monkeypatch.setattr(tuning, "score_ab", spy)
    config = pipeline.ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=10, n_test=None,
                                      n_neutral=2, steering_layers=[0.5], steering_multipliers=[1.0, 2.0], n_validation=4)
    return llama, config, seen


def test_reproduce_writes_report_and_never_tunes_on_test_items(tiny_pipeline, tmp_path):
    model, config, seen = tiny_pipeline
    report = pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
    text = report.read_text()
    assert "## power (8 test items)" in text and "seed 0" in text and "Revision" in text
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    table = results["personas"]["power"]["table"]
    names = {row["condition"] for row in table}
    assert {"base", "prompt-seek", "rag-reject", "mean_difference-seek", "pca-reject", "ode-seek", "ode-reject", "wanda-seek@0.3",
            "contrastive_wanda-reject@0.3", "contrastive_sparse-seek@0.3", "random@0.3"} <= names
    assert all(row["n"] == 8 for row in table)
    assert len(results["personas"]["power"]["per_item"]["base"]["margin_mean"]) == 8
    assert (tmp_path / "out" / "figures" / "power_accuracy.png").is_file()
    seek = pi.Signature.load(tmp_path / "out" / "signatures" / "power_seek.safetensors")
    assert seek.meta["n_samples"] == 10 and seek.meta["side"] == "seek"
    # the steering search saw validation items only, never a test item
    assert seen and not any(q.startswith("test question") for q in seen)
    val = set(results["personas"]["power"]["used"]["split"]["validation_indices"])
    assert {int(q.split()[2].rstrip(":")) for q in seen} <= val
    with pytest.raises(FileExistsError, match="force"):
        pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
