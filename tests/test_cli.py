"""The `evaluate` and `figures` subcommands on a tiny model and the project's MBTI data."""
import json

import pytest
import torch

import persona_interp as pi
from persona_interp import cli
from persona_interp.model import load as models

AXIS = "thinking_feeling"


@pytest.fixture
def tiny_cli(llama, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    return llama


def test_evaluate_scores_saved_masks_with_prompts_and_a_control(tiny_cli, tmp_path, tokenizer):
    seek = pi.random_mask(tiny_cli, 0.3, seed=1)
    seek.meta.update(side="seek", method="wanda")            # stands in for a persona mask
    seek.save(tmp_path / "a_seek.safetensors")
    args = ["evaluate", "--persona", AXIS, "--masks", str(tmp_path / "a_seek.safetensors"), "--prompts", "--n-test", "3",
            "--n-neutral", "2", "--out", str(tmp_path / "ev"), "--figures", str(tmp_path / "f")]
    cli.main(args)
    study = json.loads((tmp_path / "ev.json").read_text())
    names = [r["condition"] for r in study["table"]]
    assert {"base", "prompt-seek", "prompt-reject", "a_seek", "random@0.3"} <= set(names)
    assert study["n_test"] == 3 and all(r["n"] == 3 for r in study["table"])
    assert [c["condition"] for c in study["controls"]] == ["a_seek"]
    assert (tmp_path / "f" / f"{AXIS}_evaluate.png").is_file() and "| a_seek | seek | 3 |" in (tmp_path / "ev.md").read_text()
    with pytest.raises(SystemExit, match="exists"):
        cli.main(args)
    from conftest import build_bridge

    other = pi.random_mask(build_bridge("llama", tokenizer, seed=5), 0.3)
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(SystemExit, match="other.safetensors: mask"):
        cli.main(["evaluate", "--persona", AXIS, "--masks", str(tmp_path / "other.safetensors"), "--out", str(tmp_path / "ev2")])


def test_figures_rerenders_from_results(tmp_path):
    from conftest import condition_row, frontier_row, run_results

    row = condition_row()

    results = tmp_path / "results.json"
    results.write_text(json.dumps(run_results({"power": {"n_test": 4, "table": [row, {**row, "side": "reject"}]}})))
    cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "power_accuracy.png").is_file() and not (tmp_path / "figs" / "power_frontier.png").exists()
    assert not (tmp_path / "figs" / "stability.png").exists()            # no diagnostics in these results
    frontier = [frontier_row(), frontier_row(line="wanda", pair="wanda@kl0.1", kl=0.05, budgets=[0.1]),
                frontier_row(line="wanda+prompt", pair="wanda@kl0.1+prompt", kl=0.05, budgets=[0.1])]
    results.write_text(json.dumps(run_results({"power": {"n_test": 4, "table": [row, {**row, "side": "reject"}],
                                                         "frontier": frontier}})))
    cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figs"), "--force"])
    assert (tmp_path / "figs" / "power_frontier.png").is_file() and (tmp_path / "figs" / "power_frontier.svg").is_file()
    with pytest.raises(SystemExit, match="exists"):
        cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figs")])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["figures", "--results", str(tmp_path / "none.json"), "--out", str(tmp_path / "f2")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="error: .*bad.json is not a persona-interp results file"):
        cli.main(["figures", "--results", str(tmp_path / "bad.json"), "--out", str(tmp_path / "f2")])
    partial = run_results({"power": {"table": [row]}})
    del partial["personas"]["power"]["n_test"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(SystemExit, match="error: .*partial.json: personas.power.n_test: Field required"):
        cli.main(["figures", "--results", str(tmp_path / "partial.json"), "--out", str(tmp_path / "f2")])
    for text in ("", "5"):
        (tmp_path / "junk.json").write_text(text)
        with pytest.raises(SystemExit, match="error: .*junk.json is not"):
            cli.main(["figures", "--results", str(tmp_path / "junk.json"), "--out", str(tmp_path / "f2")])
    assert not (tmp_path / "f2").exists()


@pytest.mark.parametrize("argv", [
    ["--model", "M", "--dtype", "bfloat16", "collect", "--persona", AXIS, "--side", "seek", "--out", "x"],
    ["collect", "--persona", AXIS, "--side", "seek", "--out", "x", "--model", "M", "--dtype", "bfloat16"],
])
def test_model_options_work_before_and_after_the_subcommand(argv, monkeypatch):
    seen = {}
    monkeypatch.setattr(models, "load_model", lambda name, **kw: seen.update(name=name, **kw) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert seen == {"name": "M", "dtype": "bfloat16", "device": None, "device_map": None}


@pytest.mark.parametrize("argv", [
    ["collect", "--persona", AXIS, "--side", "seek", "--out", "x"],
    ["regimes", "--persona", AXIS, "--out", "x"],
    ["compose", "--out", "x"],
])
def test_every_subcommand_loads_its_model_in_auto_dtype_unless_told(argv, monkeypatch, tmp_path):
    """Like the main job, the studies run in ``auto`` (bfloat16 only where the CPU computes it fast), recorded in
    their results' provenance; ``--dtype`` still decides."""
    monkeypatch.chdir(tmp_path)
    seen: dict = {}
    monkeypatch.setattr(models, "load_model", lambda name, **kw: seen.update(name=name, **kw) or (_ for _ in ()).throw(SystemExit(0)))
    for extra, want in (([], "auto"), (["--dtype", "float32"], "float32")):
        seen.clear()
        with pytest.raises(SystemExit):
            cli.main([*argv, *extra])
        assert seen["dtype"] == want, argv


def test_reproduce_passes_the_dtype_into_the_run_config(monkeypatch):
    from persona_interp.studies import reproduce as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "reproduce", lambda config, *a, **kw: seen.update(dtype=config.dtype, model=kw["model"]) or "r")
    cli.main(["reproduce", "--quick", "--dtype", "bfloat16", "--out", "unused"])
    assert seen == {"dtype": "bfloat16", "model": None}
    cli.main(["reproduce", "--quick", "--out", "unused"])          # the main job's default, resolved when the model loads
    assert seen == {"dtype": "auto", "model": None}
    cli.main(["reproduce", "--quick", "--dtype", "float32", "--out", "unused"])
    assert seen == {"dtype": "float32", "model": None}



def test_reproduce_racing_sets_the_searches_successive_halving(monkeypatch):
    from persona_interp.evaluation.search import Racing
    from persona_interp.studies import reproduce as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "reproduce", lambda config, *a, **kw: seen.update(racing=config.racing) or "r")
    cli.main(["reproduce", "--quick", "--racing", "4", "--out", "unused"])
    assert seen == {"racing": Racing(first=4)}
    cli.main(["reproduce", "--quick", "--out", "unused"])
    assert seen == {"racing": None}
    with pytest.raises(SystemExit, match="racing needs first >= 2"):
        cli.main(["reproduce", "--quick", "--racing", "1", "--out", "unused"])


def test_every_subcommand_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["collect", "--help"])
    assert "(default: 256)" in capsys.readouterr().out


def test_bad_input_ends_in_one_error_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_text("not a mask", encoding="utf-8")
    with pytest.raises(SystemExit, match="error: .*junk.safetensors is not a readable persona_interp"):
        cli.main(["inspect", str(tmp_path / "junk.safetensors")])
    with pytest.raises(SystemExit, match="error: no signature file at"):
        cli.main(["build-mask", "--method", "wanda", "--seek", str(tmp_path / "absent.safetensors"), "--sparsity", "0.3",
                  "--out", str(tmp_path / "m")])
    with pytest.raises(SystemExit):
        cli.main(["build-mask", "--method", "wanda", "--sparsity", "lots", "--out", str(tmp_path / "m")])
    assert "_sparsity" not in capsys.readouterr().err


def test_study_figures_default_to_a_folder_beside_the_report(tiny_cli, tmp_path):
    seek = pi.random_mask(tiny_cli, 0.3, seed=1)
    seek.meta.update(side="seek", method="wanda")
    seek.save(tmp_path / "a_seek.safetensors")
    cli.main(["evaluate", "--persona", AXIS, "--masks", str(tmp_path / "a_seek.safetensors"), "--n-test", "2",
              "--n-neutral", "2", "--out", str(tmp_path / "ev")])
    assert (tmp_path / "ev_figures" / f"{AXIS}_evaluate.png").is_file() and (tmp_path / "ev.md").is_file()
    with pytest.raises(SystemExit, match="ev_figures already holds"):                 # the report's figures, not lost
        cli.main(["evaluate", "--persona", AXIS, "--masks", str(tmp_path / "a_seek.safetensors"), "--n-test", "2",
                  "--n-neutral", "2", "--out", str(tmp_path / "ev2"), "--figures", str(tmp_path / "ev_figures")])


def test_build_mask_wanda_builds_each_pole_given_and_refuses_swapped_signatures(tiny_cli, tmp_path):
    from test_masks import fake_signature

    means = [{m.name: 1 + m.layer + torch.arange(m.n_in, dtype=torch.float64) * (1 if i else -1) % 7
              for m in pi.get_adapter(tiny_cli).maps} for i in range(2)]
    fake_signature(tiny_cli, means[0], side="seek").save(tmp_path / "s.safetensors")
    fake_signature(tiny_cli, means[1], side="reject").save(tmp_path / "r.safetensors")
    cli.main(["build-mask", "--method", "wanda", "--seek", str(tmp_path / "s.safetensors"), "--reject",
              str(tmp_path / "r.safetensors"), "--sparsity", "0.3", "--out", str(tmp_path / "w")])
    seek, reject = (pi.Mask.load(tmp_path / f"w_{side}.safetensors") for side in ("seek", "reject"))
    assert (seek.meta["side"], reject.meta["side"]) == ("seek", "reject") and pi.fraction_differ(seek, reject) > 0
    for method in ("wanda", "contrastive_wanda"):
        with pytest.raises(SystemExit, match="error: the signature passed as the seek pole records side 'reject'"):
            cli.main(["build-mask", "--method", method, "--seek", str(tmp_path / "r.safetensors"), "--reject",
                      str(tmp_path / "s.safetensors"), "--sparsity", "0.3", "--out", str(tmp_path / f"x{method}")])


def test_an_unusable_device_is_one_error_line(tmp_path):
    args = ["collect", "--persona", AXIS, "--side", "seek", "--out", str(tmp_path / "s.safetensors")]
    with pytest.raises(SystemExit, match=r"^error: unknown device 'nonsense': use cpu, cuda, cuda:N or mps$"):
        cli.main(["--device", "nonsense", *args])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=r"^error: device 'cuda' asked for, but (this torch build has no CUDA|no CUDA GPU)"):
            cli.main(["--device", "cuda", *args])
    assert not (tmp_path / "s.safetensors").exists()


def test_reproduce_refuses_a_figures_folder_with_files_before_loading_a_model(tmp_path, monkeypatch):
    from persona_interp.studies import reproduce as pipeline

    for module in (models, pipeline):
        monkeypatch.setattr(module, "load_model", lambda *a, **kw: pytest.fail("loaded a model before refusing"))
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "stability.png").write_bytes(b"kept")
    with pytest.raises(SystemExit, match="error: .*figs is not empty; pass force=True \\(--force\\)"):
        cli.main(["reproduce", "--quick", "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "stability.png").read_bytes() == b"kept"


def test_build_mask_damage_aware_methods_take_the_inputs_they_declare(tiny_cli, tmp_path):
    sig = {side: str(tmp_path / f"{side}.safetensors") for side in ("seek", "reject", "neutral")}
    for side in ("seek", "reject"):
        cli.main(["collect", "--persona", AXIS, "--side", side, "--n", "4", "--out", sig[side]])
    cli.main(["collect", "--neutral", "--n", "3", "--out", sig["neutral"]])
    neutral = pi.Signature.load(sig["neutral"])
    assert neutral.meta["side"] == "neutral" and neutral.n_samples == 3
    poles = ["--seek", sig["seek"], "--reject", sig["reject"]]
    items = ["--persona", AXIS, "--n-items", "4", "--n-neutral", "3", "--batch-size", "2"]
    inputs = {"retain_ratio": [*poles, "--neutral-signature", sig["neutral"]],
              "set_difference": [*poles, "--neutral-signature", sig["neutral"], "--utility", "0.5"],
              "snip_set_difference": items, "gradient": items, "learned_gates": [*poles, *items, "--steps", "2"]}
    for method, given in inputs.items():
        cli.main(["build-mask", "--method", method, *given, "--sparsity", "0.1", "--out", str(tmp_path / method)])
        for side in ("seek", "reject"):
            mask = pi.Mask.load(tmp_path / f"{method}_{side}.safetensors")
            assert (mask.meta["method"], mask.meta["side"], mask.meta["sparsity"]) == (method, side, 0.1)
    assert pi.Mask.load(tmp_path / "set_difference_seek.safetensors").meta["utility"] == 0.5
    assert pi.Mask.load(tmp_path / "gradient_seek.safetensors").meta["n_items"] == 4
    assert pi.Mask.load(tmp_path / "learned_gates_seek.safetensors").meta["gate_steps"] == 2
    refused = {"needs neutral signatures: pass --neutral-signature": ["retain_ratio", *poles],
               "needs calibration items: pass --persona": ["gradient", "--n-neutral", "3"],
               "needs neutral texts: pass --n-neutral": ["learned_gates", *poles, "--persona", AXIS],
               "uses no neutral texts; leave out --n-neutral": ["contrastive_wanda", *poles, "--n-neutral", "3"],
               "uses no calibration items; leave out --persona and --n-items": ["retain_ratio", *poles, "--neutral-signature",
                                                                                sig["neutral"], *items[:4]],
               "uses no signatures; leave out --seek and --reject": ["gradient", *poles, *items],
               "signature of plain texts": ["retain_ratio", *poles, "--neutral-signature", sig["seek"]]}
    for message, argv in refused.items():
        with pytest.raises(SystemExit, match=f"error: .*{message}"):
            cli.main(["build-mask", "--method", *argv, "--sparsity", "0.1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="error: --neutral collects on neutral texts: leave out --persona"):
        cli.main(["collect", "--neutral", "--persona", AXIS, "--out", str(tmp_path / "n2.safetensors")])
    with pytest.raises(SystemExit, match="error: collect needs --persona and --side"):
        cli.main(["collect", "--persona", AXIS, "--out", str(tmp_path / "n3.safetensors")])
