import dataclasses
import json

import pytest
from conftest import build_bridge, condition_row, run_results

import persona_interp as pi
from persona_interp.report.results import ResultsError
from persona_interp.report.saved import config_differences, recorded_fingerprint, saved_results_for, saved_run_for
from persona_interp.studies.config import ReproduceConfig


def write(path, results):
    path.write_text(json.dumps(results))
    return path


def test_saved_results_are_used_only_for_the_model_they_record(llama, tokenizer, tmp_path):
    mine = pi.get_adapter(llama).fingerprint
    other = pi.get_adapter(build_bridge("llama", tokenizer, seed=5)).fingerprint
    assert mine != other
    path = write(tmp_path / "r.json", {"provenance": {"model": {"fingerprint": mine}}, "personas": {"power": {}}})
    saved = saved_results_for(llama, path, model_source="some/folder", personas=["power"])
    assert saved.usable and saved.results["personas"] == {"power": {}} and mine in saved.reason
    write(path, {"provenance": {"fingerprint": other}, "personas": {"power": {}}})
    saved = saved_results_for(llama, path, model_source="some/folder")
    assert not saved.usable and other in saved.reason and mine in saved.reason
    assert not saved_results_for(llama, tmp_path / "absent.json").usable


def test_a_saved_run_reads_typed_and_a_damaged_one_names_the_field(llama, tmp_path):
    results = run_results({"power": {"n_test": 4, "table": [condition_row()]}})
    results["provenance"]["fingerprint"] = pi.get_adapter(llama).fingerprint
    saved = saved_run_for(llama, write(tmp_path / "r.json", results), model_source="some/folder", personas=["power"])
    assert saved.results is not None and saved.results.personas["power"].table[0].accuracy == 0.5
    assert saved_run_for(llama, tmp_path / "absent.json").results is None
    results["personas"]["power"]["table"][0]["acuracy"] = 0.5
    with pytest.raises(ResultsError, match="r.json: personas.power.table.0.acuracy: Extra inputs are not permitted"):
        saved_run_for(llama, write(tmp_path / "r.json", results), model_source="some/folder")


def test_a_file_without_provenance_counts_as_the_embedded_models(llama, tmp_path):
    path = write(tmp_path / "r.json", {"personas": {"power": {}}})
    assert recorded_fingerprint(json.loads(path.read_text())) is None
    assert saved_results_for(llama, path, model_source=None).usable              # the notebook's MODEL is the embedded one
    refused = saved_results_for(llama, path, model_source="/models/llama")
    assert not refused.usable and "/models/llama" in refused.reason and "records no model" in refused.reason


def test_saved_results_need_the_same_protocol_and_personas(llama, tmp_path):
    config = ReproduceConfig(personas=["power"], n_calibration=8, dtype="bfloat16")
    saved_config = dataclasses.asdict(ReproduceConfig(personas=["power", "wealth"], n_calibration=8, dtype="bfloat16"))
    saved_config["mask_search"] = None                     # stands in for a different search space
    path = write(tmp_path / "r.json", {"config": saved_config, "personas": {"power": {}, "wealth": {}}})
    refused = saved_results_for(llama, path, config=config)
    assert not refused.usable and "['mask_search']" in refused.reason
    config.mask_search = None
    assert saved_results_for(llama, path, config=config, personas=["power"]).usable
    missing = saved_results_for(llama, path, config=config, personas=["power", "hallucination"])
    assert not missing.usable and "hallucination" in missing.reason


def test_config_differences_fill_in_what_old_files_ran_with():
    assert config_differences({"seed": 0, "dtype": "float32"}, {"seed": 0}) == []          # before dtype was recorded
    assert config_differences({"seed": 0, "dtype": "bfloat16"}, {"seed": 1}) == ["dtype", "seed"]
    assert config_differences({"seed": 0, "personas": ["a"]}, {"seed": 0, "personas": ["b"], "extra": 1}) == []


def test_an_atlas_records_its_model_through_its_signatures(llama, tmp_path):
    mine = pi.get_adapter(llama).fingerprint
    atlas = {"persona": "power", "signature_data": [{"fingerprint": mine, "side": "seek"}, {"fingerprint": mine, "side": "reject"}]}
    assert recorded_fingerprint(atlas) == mine
    assert saved_results_for(llama, write(tmp_path / "a.json", atlas), model_source="/a/folder").usable
    atlas["signature_data"][1]["fingerprint"] = "0123456789abcdef"       # two models: nothing recorded for sure
    assert recorded_fingerprint(atlas) is None
