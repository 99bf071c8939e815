"""Smoke mode of benchmarks/bench.py and benchmarks/pipeline.py on a tiny model: every measurement runs and the
naive reference agrees with the streaming signatures (no time is asserted)."""
import importlib.util
from pathlib import Path

import pytest

import persona_interp as pi

spec = importlib.util.spec_from_file_location("bench", Path(__file__).parent.parent / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

ITEMS = [pi.PersonaItem(f"Would you take control of project {i}?", f"Yes, I take control {i}.", f"No, I decline {i}.") for i in range(12)]


def test_benchmark_smoke(llama):
    results = bench.run(llama, ITEMS, ITEMS[:4], n_calibration=8, n_test=4, batch_size=4)
    assert results["naive_max_abs_diff"] < 1e-4
    assert set(bench.GOALS) <= set(results)
    assert all(results[key] > 0 for key in ("signatures_over_forward", "naive_over_ours_time", "batching_speedup", "end_to_end_s"))
    assert {"ablate_enter_exit_best_s", "ablate_extra_memory_mb"} <= set(results)
    text = bench.table({"float32": results, "bfloat16_over_float32": bench.speedups(results, results)})
    assert "float32.signatures_over_forward" in text and ("met" in text or "MISSED" in text)
    assert "bfloat16_over_float32.end_to_end_speedup" in text


def test_pipeline_benchmark_smoke(llama, tmp_path):
    """benchmarks/pipeline.py on the quick job's shape at tiny sizes: every forward falls inside a stage, the shares
    and the time outside the stages add up to the wall time, and the hook counts the signature batches."""
    import dataclasses

    from persona_interp.studies.config import QUICK

    spec = importlib.util.spec_from_file_location("pipeline_bench", Path(__file__).parent.parent / "benchmarks" / "pipeline.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    config = dataclasses.replace(QUICK, personas=["introversion_extraversion"], n_calibration=6, n_test=4, n_validation=4,
                                 n_neutral=2, n_selection_neutral=2, lora=None, prompt_search=False, diagnostics=False,
                                 mask_search=None)                 # the searches' stages: tests/test_pipeline.py
    result = pipeline.run(llama, config, tmp_path / "out", progress=False)
    stages = {s["stage"]: s for s in result["stages"]}
    assert {"signatures", "steering", "paper masks", "evaluation", "report and figures"} <= set(stages)
    assert stages["signatures"]["forwards"] == 2                    # one batch of 6 items per pole, token scope "all"
    assert stages["signatures"]["rows"] == 12 and stages["signatures"]["tokens"] > 12 * 5
    assert result["forwards"] == sum(s["forwards"] for s in stages.values()) > 0
    assert result["rows_forwarded"] >= result["forwards"] and result["peak_rss_mb"] > 0
    evaluation, entry = stages["evaluation"], pi.load_results(tmp_path / "out" / "results.json").personas["introversion_extraversion"]
    texts = config.n_neutral + entry.used.other_texts
    assert evaluation["rows"] - evaluation["minimum_rows"] == texts  # only the base model's own damage row, kept twice
    rises = [s["peak_rise_mb"] for s in result["stages"]]
    assert all(r >= 0 for r in rises) and sum(rises) <= result["peak_rss_mb"]     # rises of one peak, never more
    assert sum(s["share"] for s in stages.values()) + result["outside_stages_share"] == pytest.approx(1.0)
    assert 0 <= result["outside_stages_s"] < result["wall_s"]
    assert (tmp_path / "out" / "results.json").is_file()
    text = pipeline.table(result)
    assert "evaluation" in text and "peak resident memory" in text and f"{result['forwards']:9d}" in text


def test_agreement_reads_typed_results_and_counts_changed_verdicts_and_choices():
    """benchmarks/agreement.py on the committed results against themselves and against a copy with one contrast's
    interval moved above 0, one steering pick moved and the reject phrasing swapped."""
    spec = importlib.util.spec_from_file_location("agreement", Path(__file__).parent.parent / "benchmarks" / "agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    results = pi.load_results(Path(__file__).parent.parent / "reports" / "results.json").only(["power"])
    same = agreement.compare(results, results)["power"]
    assert same["verdicts_changed"] == 0 and same["choices_differ"] == []
    assert same["margins"]["base"]["max_abs"] == 0 and same["margins"]["base"]["n"] == results.personas["power"].n_test

    power = results.personas["power"]
    contrast = power.contrasts[0]
    assert agreement.verdict(contrast.difference_low, contrast.difference_high) != "+"
    moved = contrast.replace(difference_low=1.0, difference_high=2.0)                   # interval above 0 now
    steering = power.used.steering_search["pca"].model_copy(update={"layer": power.used.steering_search["pca"].layer + 1})
    reject = [r for r in power.used.prompt_search if r.side == "reject"]
    worst = max(reject, key=lambda r: r.margin)                     # the reject phrasing furthest from the pole
    assert len(reject) > 1 and worst.margin > min(r.margin for r in reject)
    phrasing = [r.replace(margin=-99.0) if r is worst else r for r in power.used.prompt_search]
    used = power.used.model_copy(update={"steering_search": {**power.used.steering_search, "pca": steering},
                                         "prompt_search": phrasing})
    other = results.model_copy(update={"personas": {"power": power.model_copy(
        update={"contrasts": [moved, *power.contrasts[1:]], "used": used})}})
    changed = agreement.compare(results, other)["power"]
    assert changed["verdicts_changed"] == 1 and not changed["contrasts"][0]["same"] and changed["contrasts"][0]["verdict_b"] == "+"
    assert changed["choices_differ"] == ["prompt_search", "steering_search"]
    assert agreement.choices(power.used)["prompt_search"]["reject"] != agreement.choices(used)["prompt_search"]["reject"]
    text = agreement.markdown({"power": changed}, ("float32", "bfloat16"))
    assert "**changed**" in text and "Validation choices that differ: prompt_search, steering_search" in text


def test_search_agreement_compares_the_rows_and_picks_of_two_search_checkpoints():
    """benchmarks/search_agreement.py's comparison on power's committed search checkpoint against itself and against a
    copy where the gradient row the KL <= 0.1 budget picks lost its separation: the pick moves, the difference shows."""
    import json

    spec = importlib.util.spec_from_file_location("search_agreement", Path(__file__).parent.parent / "benchmarks" / "search_agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    theirs = json.loads((Path(__file__).parent.parent / "reports" / "rerun" / "checkpoints" / "power-searches.json").read_text())["scored"]
    budgets = [0.02, 0.1, 0.5]
    same = agreement.compare(theirs, theirs, ["gradient"], budgets)["gradient"]
    gradient = [k for k in theirs if k.startswith("masks gradient\x00")]
    assert same["same_picks"] and same["n_both"] == len(gradient) > 0 and same["max_abs_kl_difference"] == 0
    picked = same["picks"]["mine"]["0.1"]
    key = next(k for k in gradient if json.loads(k.split("\x00", 1)[1]) == picked)
    mine = {**theirs, key: {**theirs[key], "separation": theirs[key]["separation"] - 100.0}}
    moved = agreement.compare(mine, theirs, ["gradient"], budgets)["gradient"]
    assert not moved["same_picks"] and moved["picks"]["mine"]["0.1"] != picked and moved["picks"]["theirs"]["0.1"] == picked
    assert moved["max_abs_separation_difference"] == 100.0 and moved["max_abs_kl_difference"] == 0


def test_profile_eval_groups_every_operator_and_times_the_bridge_against_transformers(llama):
    """benchmarks/profile_eval.py on a tiny model: the grouped shares cover all operator time and matrix products are
    found; both forwards are timed on the same tokens."""
    spec = importlib.util.spec_from_file_location("profile_eval", Path(__file__).parent.parent / "benchmarks" / "profile_eval.py")
    profile_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_eval)
    run = profile_eval.profile_scoring(llama, ITEMS[:4], batch_size=2)
    assert sum(run["shares"].values()) == pytest.approx(1.0) and run["shares"]["matrix products"] > 0
    overhead = profile_eval.bridge_overhead(llama, batch=2, length=8, rounds=2)
    assert overhead["bridge_s"] > 0 and overhead["bridge_over_transformers"] == pytest.approx(
        overhead["bridge_s"] / overhead["transformers_s"])
