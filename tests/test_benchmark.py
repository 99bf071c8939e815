"""Smoke mode of benchmarks/bench.py on a tiny model: every measurement runs and the naive
reference agrees with the streaming signatures (no time is asserted)."""
import importlib.util
from pathlib import Path

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
