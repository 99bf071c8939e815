"""Smoke runs of benchmarks/gpu_check.py (``--device cpu --size tiny``) and benchmarks/scale.py (``--size tiny``):
every stage runs without error, the JSON has its keys and ``ablate`` restores the weights bit-exact. No time is
asserted."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    """The module ``benchmarks/<name>.py`` (its folder put on ``sys.path``, as when it runs as a script)."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_clean(results: dict) -> None:
    assert not results["errors"], "\n".join(f"{stage}:\n{error}" for stage, error in results["errors"].items())
    assert {"config", "stages", "measures", "skipped", "total_s", "peak_rss_gb"} <= set(results)
    assert all(stage["seconds"] >= 0 for stage in results["stages"].values())


def test_gpu_check_cpu_tiny(tmp_path, capsys):
    gpu_check = load_script("gpu_check")
    status = gpu_check.main(["--device", "cpu", "--size", "tiny", "--n-calibration", "16", "--n-items", "8",
                             "--max-tokens", "192", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert_clean(results)
    assert status == 0
    assert {"tokenizer", "build_model", "load", "signatures_seek", "signatures_reject", "masks", "ablate", "throughput",
            "score_ab_ablated"} <= set(results["stages"])
    measures = results["measures"]
    assert measures["restore_bit_exact"] is True
    assert measures["ablate_changed_maps"] == measures["n_maps"]
    assert measures["weight_dtype"] == "torch.bfloat16"
    assert abs(measures["mask_sparsity"] - 0.3) < 0.05
    assert measures["ablated_margins_finite"] is True
    assert measures["forward_tokens_per_s"] > 0 and measures["score_ab_tokens_per_s"] > 0
    assert "sharded_load" in results["skipped"]
    assert "restore_bit_exact" in capsys.readouterr().out


def test_gpu_check_refuses_cuda_without_gpu(tmp_path, monkeypatch):
    gpu_check = load_script("gpu_check")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "gpu_check.json").exists()


def test_scale_tiny(tmp_path):
    scale = load_script("scale")
    out = tmp_path / "scale.json"
    assert scale.main(["--size", "tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert_clean(results)
    measures = results["measures"]
    assert measures["restore_bit_exact"] is True
    assert measures["ablate_changed_maps"] == measures["n_maps"]
    assert {"ablate_first_s", "ablate_fastest_s", "ablate_extra_rss_mb", "rho_times_weights_mb", "margin_mean",
            "ablated_margin_mean", "n_parameters"} <= set(measures)
    assert "embedded_ablate" in results["skipped"]
    with pytest.raises(SystemExit, match="--force"):
        scale.main(["--size", "tiny", "--out", str(out)])


def test_ablate_speed_times_and_checks_the_restore(llama, monkeypatch):
    import contextlib

    import torch

    import persona_interp as pi

    speed = load_script("ablate_speed")
    row = speed.enter_exit_seconds(llama, pi.random_mask(llama, 0.3), calls=3)
    assert set(row) == {"first", "median", "best"} and 0 <= row["best"] <= row["median"]

    @contextlib.contextmanager
    def leaky(model, mask):                                            # an ablate that forgets to restore one entry
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1
        yield model

    monkeypatch.setattr(pi, "ablate", leaky)
    with pytest.raises(AssertionError, match="not restored bit-exact"):
        speed.enter_exit_seconds(llama, pi.random_mask(llama, 0.3), calls=1)
