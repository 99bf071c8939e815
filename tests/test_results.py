"""Typed, versioned results: the loader, its errors, and the committed full run read through it."""
import json
from pathlib import Path

import pytest
from conftest import condition_row, run_results

from persona_interp.report.markdown import render_report
from persona_interp.report.results import NOT_RECORDED, SCHEMA_VERSION, Provenance, ResultsError, RunResults, load_results

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "reports" / "results.json"


def test_the_committed_run_loads_with_what_it_never_recorded_marked_not_recorded():
    raw = json.loads(COMMITTED.read_text())
    assert "schema_version" not in raw and "provenance" not in raw             # written before either existed
    results = load_results(COMMITTED)
    assert results.schema_version == SCHEMA_VERSION and results.complete
    ran = results.provenance
    assert (ran.model, ran.fingerprint, ran.device, ran.device_map, ran.cpu, ran.torch, ran.transformers) == (NOT_RECORDED,) * 7
    assert ran.dtype == raw["config"]["dtype"] == "bfloat16" and ran.seed == raw["config"]["seed"]
    assert (ran.revision, ran.started, ran.finished) == (raw["revision"], raw["started"], raw["finished"])
    for persona, entry in results.personas.items():              # each persona keeps the revision that computed it
        assert entry.provenance.revision == entry.revision == raw["personas"][persona]["revision"]
        assert entry.provenance.model == NOT_RECORDED and entry.provenance.dtype == "bfloat16"
        assert entry.provenance.finished == entry.finished and entry.provenance.started == NOT_RECORDED
        assert entry.model_dump(exclude={"provenance"}) == raw["personas"][persona]     # typed rows, the same JSON


def test_the_committed_report_renders_again_from_the_loaded_results_but_for_the_provenance_line(tmp_path):
    (tmp_path / "reports").mkdir()
    rendered = render_report(load_results(COMMITTED), tmp_path / "reports" / "report.md", tmp_path / "figures")
    old, new = (REPO / "reports" / "report.md").read_text().splitlines(), rendered.read_text().splitlines()
    assert len(old) == len(new)
    differ = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert set(differ) <= {2}                                         # the header's model line, nothing else
    provenance, rest = new[2].split(" Revision ")
    assert provenance == ("Model: not recorded (weights' fingerprint not recorded), bfloat16, device not recorded; "
                          "CPU not recorded; torch not recorded, transformers not recorded.")
    if differ:                                                        # as committed: the header the old code hard-coded
        assert old[2].startswith("Model: SmolLM2-135M-Instruct (embedded). Revision `2ec75e2`, `a1d9906`, seed 0")
        assert "Revision " + rest == old[2].split(". ", 1)[1]


def test_results_round_trip_through_save_and_load(tmp_path):
    row = condition_row(n=3, margin=float("nan"), kl=0.0)
    results = RunResults.model_validate(run_results({"power": {"n_test": 3, "table": [row]}}))
    assert isinstance(results.provenance, Provenance) and results.provenance.cpu.kind == "no bf16 instructions"
    loaded = load_results(results.save(tmp_path / "results.json"))
    assert loaded.personas["power"].table[0].condition == "base" and loaded.provenance == results.provenance
    assert loaded.model_dump_json() == results.model_dump_json()
    saved = json.loads((tmp_path / "results.json").read_text())["personas"]["power"]["table"][0]
    assert set(saved) == set(row) and "perplexity" not in saved          # a field the row never had stays out


@pytest.mark.parametrize("text, error", [
    ("", "is not JSON \\(Expecting value: line 1 column 1"),
    ("5", "is not a persona-interp results file \\(no 'personas'\\): it holds a JSON int"),
    ('{"config": {}}', "is not a persona-interp results file \\(no 'personas'\\): it holds an object without 'personas'"),
])
def test_a_file_that_is_not_a_runs_results_is_an_error_naming_it(tmp_path, text, error):
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(ResultsError, match=f"^{tmp_path / 'results.json'} {error}"):
        load_results(tmp_path / "results.json")


@pytest.mark.parametrize("damage, error", [
    (lambda r: r["personas"]["power"].pop("n_test"), "personas.power.n_test: Field required"),
    (lambda r: r["personas"]["power"].update(n_test="eight"), "personas.power.n_test: Input should be a valid integer"),
    (lambda r: r["personas"]["power"]["provenance"].pop("fingerprint"), "personas.power.provenance.fingerprint: Field required"),
    (lambda r: r["config"].pop("seed"), "config.seed: Field required"),
    (lambda r: r["config"].update(n_neutrl=4), "config.n_neutrl: Extra inputs are not permitted"),
    (lambda r: r.update(schema_version=99), "schema_version 99 is not one this persona_interp reads"),
    (lambda r: r["personas"]["power"].update(tabel=[]), "personas.power.tabel: Extra inputs are not permitted"),
])
def test_a_partial_or_damaged_file_is_an_error_naming_the_file_and_the_field(tmp_path, damage, error):
    results = run_results({"power": {"n_test": 3}})
    damage(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ResultsError, match=f"^{tmp_path / 'results.json'}: {error}"):
        load_results(tmp_path / "results.json")


@pytest.mark.parametrize("entry, named", [
    ({"table": [condition_row(margn=0.1)]}, ["table.0.margn: Extra inputs are not permitted"]),
    ({"table": [{k: v for k, v in condition_row().items() if k != "margin"} | {"margn": 0.1}]},
     ["table.0.margin: Field required", "table.0.margn: Extra inputs are not permitted"]),
    ({"table": [condition_row(side="Seek")]}, ["table.0.side: Input should be 'seek' or 'reject'"]),
    ({"equal_damage": [{"budget": 0.1, "pair": None, "damage": 0.0}]}, ["equal_damage.0.none.damage: Extra inputs"]),
    ({"damage": {"base": {"perplexity": 12.0, "kl": 0.0, "kl_othr": 0.1}}}, ["damage.base.kl_othr: Extra inputs"]),
    ({"used": {"fit_items": 4, "validation_items": 2, "prompt_search": [{"side": "seek", "prompt": "p", "margn": 0.1}]}},
     ["used.prompt_search.0.margn: Extra inputs are not permitted"]),
    ({"used": {"fit_items": 4, "validation_items": 2, "fit_item": 4}}, ["used.fit_item: Extra inputs are not permitted"]),
])
def test_a_misspelt_row_key_is_refused_naming_the_file_and_the_field(tmp_path, entry, named):
    (tmp_path / "results.json").write_text(json.dumps(run_results({"power": entry})))
    with pytest.raises(ResultsError, match=f"^{tmp_path / 'results.json'}: ") as error:
        load_results(tmp_path / "results.json")
    assert all(f"personas.power.{field}" in str(error.value) for field in named), str(error.value)


def test_a_version_1_file_missing_a_persona_field_names_it_too(tmp_path):
    results = run_results({"power": {"n_test": 3}})
    del results["schema_version"], results["provenance"], results["personas"]["power"]["provenance"]
    del results["personas"]["power"]["contrasts"]
    (tmp_path / "old.json").write_text(json.dumps(results))
    with pytest.raises(ResultsError, match="old.json: personas.power.contrasts: Field required"):
        load_results(tmp_path / "old.json")
    results["personas"]["power"]["contrasts"] = []
    del results["config"]["dtype"]                                    # from before the dtype was recorded at all
    (tmp_path / "old.json").write_text(json.dumps(results))
    old = load_results(tmp_path / "old.json").personas["power"].provenance
    assert old.model == old.dtype == old.cpu == NOT_RECORDED and old.seed == 0 and old.revision == "abc1234"


USED = {"fit_items": 4, "validation_items": 2}


def test_the_header_names_each_personas_set_up_when_a_resumed_run_mixed_them(tmp_path):
    results = run_results({"power": {"used": USED}, "wealth": {"used": USED}}, sparsities=[0.3], damage_budgets=[0.1])
    other = results["personas"]["wealth"]["provenance"]
    other.update(model="/models/other", dtype="bfloat16", cpu={"model": "Xeon", "flags": ["amx_bf16", "avx2"]})
    text = render_report(results, tmp_path / "report.md", tmp_path / "figures").read_text()
    assert "**Mixed set-ups** (resumed with `--allow-mixed`):" in text
    assert ("- wealth: Model: `/models/other` (weights' fingerprint 0123456789abcdef), bfloat16, on cpu; "
            "CPU Xeon (amx_bf16, avx2); torch 2, transformers 5.") in text
    assert "- power: Model: `tiny-llama` (weights' fingerprint 0123456789abcdef), float32, on cpu; CPU test CPU (avx2)" in text
    same = run_results({"power": {"used": USED}, "wealth": {"used": USED}}, sparsities=[0.3], damage_budgets=[0.1])
    one = render_report(same, tmp_path / "one.md", tmp_path / "figures").read_text()
    assert "Mixed" not in one and one.count("Model: `tiny-llama`") == 1
