"""The main job end to end on a tiny model and a made-up persona dataset."""
import functools
import json
import subprocess

import pytest
import torch

pytest.importorskip("matplotlib")          # absent from the TransformerLens 3.9 job's environment

import persona_interp as pi
from persona_interp.analysis import diagnostics
from persona_interp.evaluation import search
from persona_interp.interventions import lora
from persona_interp.studies import reproduce as pipeline
from persona_interp.interventions.lora import LoRAConfig
from persona_interp.evaluation.controls import MatchedControlConfig
from persona_interp.evaluation.tuning import MaskSpace
from persona_interp.studies.config import QUICK, ReproduceConfig
from persona_interp.evaluation.evaluate import equal_damage_summary
from persona_interp.evaluation.rows import BudgetWinnerRow, ConditionRow, ContrastRow, EqualDamageRow, NoPick, SteeringSearchRow
from persona_interp.progress import reset_stage_times, stage_times
from persona_interp.report.results import RecordedConfig, RunResults, load_results


def fake_persona(name, split="train"):
    n = 30 if split == "train" else 8
    items = [pi.PersonaItem(f"{split} question {i}: would you take control of project {i}?",
                            f"Yes, I take control {i}.", f"No, I decline {i}.") for i in range(n)]
    return pi.PersonaDataset(f"{name}:{split}", items)


@pytest.fixture
def tiny_pipeline(monkeypatch, llama):
    monkeypatch.setattr(pipeline, "load_persona", fake_persona)
    monkeypatch.setattr(pipeline, "load_neutral_texts", lambda: ["plain neutral text one", "another neutral text",
                                                                 "selection text one", "selection text two", "fit text one",
                                                                 "unused"])
    seen = []
    real = search.score_ab

    def spy(model, items, **kw):
        seen.extend(item.question for item in items)
        return real(model, items, **kw)

    monkeypatch.setattr(search, "score_ab", spy)
    monkeypatch.setattr(diagnostics, "score_ab", spy)
    monkeypatch.setattr(pipeline, "persona_prompts", lambda persona, side: [f"You {side} power.", f"Always {side} power."])
    config = ReproduceConfig(personas=["power"], sparsities=[0.3], n_calibration=10, n_test=None,
                                      n_neutral=2, n_selection_neutral=2, n_fit_neutral=1, n_other_texts=4,
                                      damage_aware_methods=["retain_ratio", "gradient"], steering_layers=[0.5], steering_multipliers=[1.0, 2.0],
                                      n_validation=4, damage_budgets=[1e-9, 1000.0], stability_draws=2,
                                      mask_search=MaskSpace(sparsities=[0.2, 0.4], modules=[None, "mlp"], layer_ranges=["all"],
                                                            token_scopes=["all", "answer"]),
                                      lora=LoRAConfig(rank=2, epochs=2, batch_size=4), weight_edit_strengths=[1.0],
                                      matched_controls=MatchedControlConfig(methods=["wanda", "contrastive_wanda"], max_iter=4))
    return llama, config, seen


def test_reproduce_writes_report_and_never_tunes_on_test_items(tiny_pipeline, tmp_path, capsys):
    model, config, seen = tiny_pipeline
    reset_stage_times()
    report = pipeline.reproduce(config, tmp_path / "out", model=model)
    # one progress stage per step, each logged once at its start and once at its end (stderr is no terminal here)
    stages = stage_times()
    log = capsys.readouterr().err.splitlines()
    assert len(log) == 2 * len(stages) and all(r.scope == "power" for r in stages)
    assert [r.name for r in stages] == ["neutral signature", "signatures", "selection damage reference", "prompt search",
                                        "steering", "LoRA search", "paper masks",
                                        *(f"mask search ({m.name})" for m in pipeline.searched_methods(config)),
                                        "diagnostics", "evaluation", "report and figures"]
    assert log[2] == "power: signatures (4 steps) …" and log[3].startswith("power: signatures 4/4 done in ")
    text = report.read_text()
    assert "## power (8 test items)" in text and "seed 0" in text and "Revision" in text
    results = load_results(tmp_path / "out" / "results.json")
    entry = results.personas["power"]
    assert entry.stages is not None and [s.name for s in entry.stages] == [r.name for r in stages][:-1]   # not the report's
    assert [s.seconds for s in entry.stages] == [round(r.seconds, 1) for r in stages][:-1]
    assert all(s.peak_mb is not None and s.peak_mb > 0 and 0 <= (s.peak_rise_mb or 0) <= s.peak_mb for s in entry.stages)
    assert entry.seconds == pytest.approx(sum(s.seconds for s in entry.stages))
    counted = {s.name: s for s in entry.stages}
    assert counted["evaluation"].rows >= entry.n_test and counted["evaluation"].tokens > counted["evaluation"].rows
    assert counted["signatures"].forwards > 0 and all(s.rows >= s.forwards for s in entry.stages)
    assert f" min and {sum(s.rows for s in entry.stages):,} sequences forwarded (" in text
    table, used = entry.table, entry.used
    names = {row.condition for row in table}
    assert {"base", "prompt-seek", "rag-reject", "mean_difference-seek@kl1000", "pca-reject@kl1000", "ode-seek@kl1000",
            "wanda-seek@0.3", "wanda-seek@0.3+prompt", "contrastive_wanda-reject@0.3", "contrastive_sparse-seek@0.3",
            "contrastive_sparse_code-reject@0.3+prompt", "random@0.3", "random@0.3+prompt-seek"} <= names
    assert {"lora-seek@kl1000", "lora-reject@kl1000", "wanda-seek@kl1000", "contrastive_wanda-reject@kl1000+prompt",
            "contrastive_sparse-seek@kl1000", "random@kl1000-contrastive_sparse"} <= names
    assert not any("@kl1e-09" in name for name in names)            # nothing is within a budget of 1e-9 nats/token
    assert all(row.n == 8 for row in table)
    assert used.lora_search is not None and used.lora_search.epochs in (1, 2)
    assert used.prompt_search is not None and len(used.prompt_search) == 4
    assert used.mask_search is not None and len(used.mask_search["contrastive_wanda"].table) == 2 * 2 * 2
    controls = {c.condition: c for c in entry.controls}
    assert controls["wanda-seek@0.3"].control == "random@0.3" and controls["wanda-reject@kl1000"].control == "random@kl1000-wanda"
    assert controls["wanda-seek@0.3+prompt"].control == "random@0.3+prompt-seek"
    # weight-edit steering searched per budget like steering; a damage-matched random control beside each mask's
    assert {"weight_edit-seek@kl1000", "weight_edit-reject@kl1000"} <= names
    assert used.steering_search is not None
    edits = used.steering_search["weight_edit"].table
    assert len(edits) == len(config.weight_edit_strengths)
    assert all(row.separation is not None and row.separation >= 0 and row.orientation in (1.0, -1.0) for row in edits)
    assert used.matched_controls is not None
    for mask in ("wanda-seek@0.3", "contrastive_wanda-reject@kl1000"):
        matched = controls[mask].matched_control
        assert matched == f"random-matched:{mask}" and matched in names and "beats_matched" in controls[mask].model_fields_set
        found = used.matched_controls[matched]
        assert found.converged or len(found.tried) == config.matched_controls.max_iter
    raw = json.loads((tmp_path / "out" / "results.json").read_text())["personas"]["power"]
    assert "matched_control" not in next(c for c in raw["controls"] if c["condition"] == "wanda-seek@0.3+prompt")
    assert "beats_matched" in text and "against the random mask of equal damage" in text
    added = {(r.condition, r.side): r for r in entry.prompt_additions}
    margins = {name: torch.tensor(v.margin_mean) for name, v in entry.per_item.items()}
    assert added["wanda-reject@0.3+prompt", "reject"].added == pytest.approx(
        float((margins["prompt-reject"] - margins["wanda-reject@0.3+prompt"]).mean()))
    damage = entry.damage
    assert damage["wanda-seek@0.3+prompt"] == damage["wanda-seek@0.3"]      # the prompt never meets the neutral text
    assert [w.budget for w in entry.budget_winners] == config.damage_budgets
    assert used.diagnostics is not None
    assert {r.variant for r in used.diagnostics.overlap} >= {"wanda (per pole)", "contrastive_wanda relu"}
    assert "mask+prompt" not in text or "paper's protocol" in text
    assert (tmp_path / "out" / "figures" / "power_frontier.png").is_file()
    assert (tmp_path / "out" / "figures" / "stability.png").is_file()          # the halves, across personas
    assert [r.budget for r in entry.equal_damage] == config.damage_budgets
    assert "at equal damage" in text and "- LoRA:" in text
    assert lora.LoRA.load(tmp_path / "out" / "lora" / "power_seek.safetensors").meta["side"] == "seek"
    assert len(entry.per_item["base"].margin_mean) == 8
    assert (tmp_path / "out" / "figures" / "power_accuracy.png").is_file()
    seek = pi.Signature.load(tmp_path / "out" / "signatures" / "power_seek.safetensors")
    assert seek.meta["n_samples"] == 10 and seek.meta["side"] == "seek"
    # the steering search saw validation items only, never a test item
    assert seen and not any(q.startswith("test question") for q in seen)
    assert used.split is not None
    val = set(used.split.validation_indices)
    assert {int(q.split()[2].rstrip(":")) for q in seen} <= val
    with pytest.raises(FileExistsError, match="force"):
        pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)


def test_the_search_runs_damage_aware_methods_on_fit_texts_apart_from_the_selection_and_reported_ones(
        tiny_pipeline, tmp_path, monkeypatch):
    import dataclasses

    from persona_interp.evaluation.scoring import DamageReference
    from persona_interp.report.summary import winner_rows

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, lora=None, prompt_search=False, diagnostics=False, steering_multipliers=[1.0])
    references, plain = [], []
    real_build, real_collect = DamageReference.build.__func__, pipeline.collect_signatures
    monkeypatch.setattr(DamageReference, "build", classmethod(
        lambda cls, model, texts, *a, **k: references.append(list(texts)) or real_build(cls, model, texts, *a, **k)))
    monkeypatch.setattr(pipeline, "collect_signatures", lambda model, data, *a, **k: (
        plain.append(list(data)) if all(isinstance(t, str) for t in data) else None) or real_collect(model, data, *a, **k))
    pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
    reported, selection, fit = ["plain neutral text one", "another neutral text"], ["selection text one", "selection text two"], \
        ["fit text one"]
    assert selection in references and reported in references and plain == [fit]       # one neutral signature, on fit texts
    assert not any(set(fit) & set(texts) for texts in references)          # no damage is ever measured on a fit text
    others = [texts for texts in references if texts not in (reported, selection)]
    assert len(others) == 1 and len(others[0]) == 4 and not set(others[0]) & set(reported + selection)
    results = load_results(tmp_path / "out" / "results.json")
    entry = results.personas["power"]
    assert entry.used.fit_neutral_texts == 1 and entry.used.other_texts == 4
    rows = {row.condition: row for row in entry.table}                  # the second damage measure
    assert rows["base"].kl_other == pytest.approx(0.0, abs=1e-3) and rows["gradient-seek@kl1000"].kl_other > 0
    assert rows["retain_ratio-seek@kl1000+prompt"].kl_other == rows["retain_ratio-seek@kl1000"].kl_other
    assert all(w.other_kl is not None for w in entry.budget_winners if isinstance(w, BudgetWinnerRow))
    assert "KL other personas" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="second damage measure beside neutral_texts: pass both"):
        pi.evaluate(model, [], [], persona="power", other_texts=["a question\nan answer"])
    names = {row.condition for row in entry.table}
    assert {"retain_ratio-seek@kl1000", "retain_ratio-reject@kl1000+prompt", "random@kl1000-retain_ratio",
            "gradient-reject@kl1000", "gradient-seek@kl1000+prompt"} <= names
    assert not any(name.startswith(("set_difference", "learned_gates", "snip_set_difference")) for name in names)
    assert not any(name.startswith("retain_ratio") and "@0.3" in name for name in names)      # the paper's rows as they were
    search = entry.used.mask_search
    assert search is not None
    assert len(search["retain_ratio"].table) == 2 * 2 * 2                     # sparsity × modules × token scope
    assert len(search["gradient"].table) == 2 * 2          # sparsity × modules: no token scope, it reads no signatures
    lines = {row.line for row in entry.frontier}
    assert {"retain_ratio", "gradient+prompt"} <= lines
    masks = [r for r in entry.frontier if r.line in ("retain_ratio", "gradient", "wanda", "contrastive_wanda",
                                                      "contrastive_sparse", "contrastive_sparse_code")
             and 1000.0 in (r.budgets or [])]
    best = max(masks, key=lambda r: r.difference)
    assert winner_rows(results)[-1]["best mask"].startswith(best.pair + " ")
    with pytest.raises(ValueError, match="unknown method\\(s\\) \\['gradients'\\]"):
        pipeline.searched_methods(dataclasses.replace(config, damage_aware_methods=["gradients"]))
    with pytest.raises(ValueError, match="fit on neutral texts: set n_fit_neutral > 0"):
        pipeline.searched_methods(dataclasses.replace(config, n_fit_neutral=0))


def test_neutral_split_is_three_disjoint_parts_in_file_order():
    from persona_interp.data.personas import neutral_split

    texts = [f"text {i}" for i in range(10)]
    split = neutral_split(3, 2, 4, texts)
    assert (split.reported, split.selection, split.fit) == (texts[:3], texts[3:5], texts[5:9])
    with pytest.raises(ValueError, match="need 11 neutral texts; there are 10"):
        neutral_split(3, 4, 4, texts)
    with pytest.raises(ValueError, match="whole numbers >= 0"):
        neutral_split(3, -1, 4, texts)


def test_the_report_summarises_across_personas_and_renders_again_from_results_json(tiny_pipeline, tmp_path):
    from persona_interp import cli
    from persona_interp.report.markdown import render_report

    model, config, _ = tiny_pipeline
    text = pipeline.reproduce(config, tmp_path / "out", model=model, progress=False).read_text()
    results = load_results(tmp_path / "out" / "results.json")
    entry = results.personas["power"]
    assert text.index("## Across personas") < text.index("## power")
    strict, generous = entry.budget_winners                        # budgets 1e-9 and 1000 nats/token
    assert isinstance(strict, BudgetWinnerRow) and isinstance(generous, BudgetWinnerRow)
    assert strict.regime in ("prompt", "rag") and f"| power | KL ≤ 1e-09 | {strict.pair} |" in text
    assert f"| power | KL ≤ 1000 | {generous.pair} | {generous.estimate('difference').signed(2)} |" in text
    cw = next(c for c in entry.contrasts if c.pair == "contrastive_wanda@0.3+prompt")
    assert cw.estimate("difference").signed(2) in text
    assert entry.used.diagnostics is not None
    stability = entry.used.diagnostics.stability.summary
    assert f"| {100 * stability.within_pole:.0f} % | {100 * stability.between_poles:.0f} % |" in text
    assert "(construction " in text                                  # the ReLU overlap beside its 2ρ range
    (tmp_path / "out" / "report.md").unlink()                        # rendered again from results.json alone: the same
    assert render_report(results, tmp_path / "out" / "report.md", tmp_path / "out" / "figures").read_text() == text
    raw = json.loads((tmp_path / "out" / "results.json").read_text())           # or from its JSON, validated
    assert render_report(raw, tmp_path / "out" / "report.md", tmp_path / "out" / "figures").read_text() == text
    argv = ["figures", "--results", str(tmp_path / "out" / "results.json"), "--out", str(tmp_path / "figs"),
            "--report", str(tmp_path / "report.md")]
    assert "![stability across personas](figures/stability.png)" in text
    cli.main(argv)
    assert "## Across personas" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "figs" / "stability.png").is_file() and (tmp_path / "figs" / "power_frontier.svg").is_file()
    argv[argv.index("--out") + 1] = str(tmp_path / "figs2")         # new figures, the same report: refused
    with pytest.raises(SystemExit, match="report.md exists"):
        cli.main(argv)


def test_equal_damage_summary_picks_the_best_pair_within_each_budget():
    from conftest import condition_row

    kls = {"p-seek": 0.0, "p-reject": 0.0, "m-seek": 0.05, "m-reject": 0.3, "s-seek": 0.08, "s-reject": 0.01}
    table = [ConditionRow.model_validate(condition_row(condition=name, kl=kl)) for name, kl in kls.items()]
    common = {"persona": "power", "n": 5, "items_seek_only": 0, "items_reject_only": 0}
    contrasts = [ContrastRow(pair="prompt", regime="prompt", seek_condition="p-seek", reject_condition="p-reject",
                             difference=0.1, difference_low=0.0, difference_high=0.2, **common),
                 ContrastRow(pair="mask", regime="cw", seek_condition="m-seek", reject_condition="m-reject",
                             difference=0.9, difference_low=0.5, difference_high=1.3, **common),
                 ContrastRow(pair="steer", regime="caa", seek_condition="s-seek", reject_condition="s-reject",
                             difference=0.4, difference_low=0.2, difference_high=0.6, **common)]
    rows = equal_damage_summary(table, contrasts, [0.02, 0.1, 0.5])
    assert all(isinstance(r, EqualDamageRow) for r in rows)
    assert [r.pair for r in rows] == ["prompt", "steer", "mask"]
    assert [(r.n_eligible, r.damage) for r in rows if isinstance(r, EqualDamageRow)] == [(1, 0.0), (2, 0.08), (3, 0.3)]
    assert equal_damage_summary(table, contrasts[1:], [0.02]) == [NoPick(budget=0.02, pair=None)]


def test_winner_rows_flag_a_pick_over_its_budget_on_the_reported_texts():
    from conftest import run_results

    from persona_interp.report.summary import winner_rows

    win = {"budget": 0.02, "pair": "pca@kl0.02", "regime": "pca", "n": 9, "difference": 0.9, "difference_low": 0.8,
           "difference_high": 1.0, "n_eligible": 3, "test_kl": 0.0216, "runner_up": "rag", "lead": 0.2, "lead_low": 0.1,
           "lead_high": 0.3, "decisive": True}
    within = {**win, "budget": 0.1, "pair": "steer@kl0.1", "test_kl": 0.05}
    fallback = {"budget": 0.02, "pair": "rag", "regime": "rag", "n": 9, "difference": 0.3, "difference_low": 0.2,
                "difference_high": 0.4, "n_eligible": 1, "damage": 0.0}
    same = {k: v for k, v in within.items() if k not in ("test_kl", "runner_up", "lead", "lead_low", "lead_high", "decisive")}
    entry = {"budget_winners": [win, within], "equal_damage": [fallback, {**same, "damage": 0.05}]}
    tight, loose = winner_rows(RunResults.model_validate(run_results({"tf": entry})))
    assert tight["KL"] == "0.0216 (over)" and tight["by reported-text KL"] == "rag +0.30 [+0.20, +0.40]"
    assert loose["KL"] == "0.0500" and loose["by reported-text KL"] == "same"


def test_resume_keeps_finished_personas_and_refuses_another_config(tiny_pipeline, tmp_path, monkeypatch):
    import dataclasses

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, mask_search=None, lora=None, prompt_search=False, steering_multipliers=[1.0])
    pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
    first = json.loads((tmp_path / "out" / "results.json").read_text())["personas"]["power"]
    ran = []
    real = pipeline.persona_conditions
    monkeypatch.setattr(pipeline, "persona_conditions", lambda m, persona, *a, **k: ran.append(persona) or real(m, persona, *a, **k))
    two = dataclasses.replace(config, personas=["power", "wealth"])
    report = pipeline.reproduce(two, tmp_path / "out", model=model, progress=False, resume=True)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert ran == ["wealth"] and results["complete"] and results["personas"]["power"] == first
    text = report.read_text()
    assert "## power (8 test items)" in text and "## wealth (8 test items)" in text and "Partial run" not in text
    with pytest.raises(ValueError, match="differs in \\['seed'\\]"):
        pipeline.reproduce(dataclasses.replace(two, seed=1), tmp_path / "out", model=model, progress=False, resume=True)



def _cut_off(real, calls, limit):
    """``real`` (a scorer), counting its calls in ``calls``; after ``limit`` calls the session ends (None: never)."""
    def score(model, items, **kw):
        if limit is not None and len(calls) >= limit:
            raise KeyboardInterrupt
        calls.append(1)
        return real(model, items, **kw)
    return score


def test_a_persona_cut_off_in_its_evaluation_resumes_there_with_the_same_results(tiny_pipeline, tmp_path, monkeypatch):
    """A run stopped after a few conditions were scored keeps them in out/checkpoints/power.json; --resume searches
    again (the same tables, so the checkpoint's key matches), reads them back and scores only the rest; the results
    equal an uninterrupted run's and the checkpoint is gone once the persona is saved. A run started again without
    --resume, or with other settings, scores everything."""
    import dataclasses

    from persona_interp.evaluation import evaluate as evaluation

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, mask_search=None, lora=None, prompt_search=False, steering_multipliers=[1.0])
    real, scored = evaluation.score_ab, []
    scorer = functools.partial(_cut_off, real, scored)
    monkeypatch.setattr(evaluation, "score_ab", scorer(None))
    whole = pipeline.reproduce(config, tmp_path / "whole", model=model, progress=False)
    expected = json.loads(whole.with_name("results.json").read_text())["personas"]["power"]
    n_scored = len(scored)                         # fewer than the conditions: a control's twin is copied, not scored
    assert n_scored < len(expected["per_item"])
    scored.clear()

    monkeypatch.setattr(evaluation, "score_ab", scorer(5))
    with pytest.raises(KeyboardInterrupt):
        pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
    saved = tmp_path / "out" / "checkpoints" / "power.json"
    assert len(json.loads(saved.read_text())["scored"]) >= 5                      # the 5 scored and any copied
    scored.clear()
    monkeypatch.setattr(evaluation, "score_ab", scorer(None))
    pipeline.reproduce(config, tmp_path / "out", model=model, progress=False, resume=True)
    resumed = json.loads((tmp_path / "out" / "results.json").read_text())["personas"]["power"]
    assert len(scored) == n_scored - 5 and not saved.parent.exists()               # file and empty folder removed
    for key in ("per_item", "damage", "contrasts", "controls", "budget_winners", "table"):
        assert resumed[key] == expected[key], key                                   # bit-exact, read back or not
    scored.clear()
    checkpoint = pipeline.EvaluationCheckpoint(tmp_path / "again" / "checkpoints" / "power.json", key="another run's")
    checkpoint.save("base", real(model, list(pipeline.test_items("power", config)), progress=False), None)
    with pytest.warns(UserWarning, match="written for another run or code"):                 # another key: not read
        pipeline.evaluate(model, list(pipeline.test_items("power", config)), [pi.Condition()], persona="power",
                          progress=False, checkpoint=pipeline.EvaluationCheckpoint(checkpoint.path, key="this run's"))
    assert len(scored) == 1
    monkeypatch.setattr(evaluation, "score_ab", scorer(1))
    with pytest.raises(KeyboardInterrupt):                    # started again without --resume: the file is removed first
        pipeline.reproduce(config, tmp_path / "again", model=model, progress=False, force=True)
    assert not checkpoint.path.exists()



def test_racing_in_the_main_job_drops_candidates_that_cannot_win_and_is_recorded(tiny_pipeline, tmp_path):
    """config.racing: every search but the weight edit's scores its candidates on the first items and only those
    that can still win a budget on the rest (raced_out rows); the configuration records it."""
    import dataclasses

    from persona_interp.evaluation.search import Racing

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, lora=None, prompt_search=False, racing=Racing(first=2, width=0.01),
                                 steering_multipliers=[1.0, 2.0, 4.0], damage_budgets=[1000.0], diagnostics=False,
                                 matched_controls=None, damage_aware_methods=[])
    recorded = RecordedConfig.model_validate(dataclasses.asdict(config))
    assert RecordedConfig.model_validate_json(recorded.model_dump_json()).racing == Racing(first=2, width=0.01)
    _, used, _ = pipeline.persona_conditions(model, "power", config, progress=False)   # the searches (no evaluation)
    steering = [row for method, search in used.steering_search.items() if method != "weight_edit" for row in search.table]
    masks = [row for search in used.mask_search.values() for row in search.table]
    raced = [row for row in steering + masks if row.raced_out]
    assert raced and all(row.scored for row in raced)                 # scored on the first items only
    assert not any(row.raced_out for row in used.steering_search["weight_edit"].table)


def test_weight_edit_rows_swap_poles_when_amplifying_moves_toward_reject():
    table = [SteeringSearchRow(layer=1, multiplier=1.0, separation=-0.3, seek_margin=-0.5, reject_margin=-0.2, kl=0.1),
             SteeringSearchRow(layer=1, multiplier=2.0, separation=0.1, seek_margin=0.2, reject_margin=0.1, kl=0.4),
             SteeringSearchRow(layer=1, multiplier=4.0, separation=None, seek_margin=None, reject_margin=None, kl=0.9,
                               scored=False)]
    oriented = pipeline._oriented(table)
    assert oriented[0].model_dump() == {**table[0].model_dump(), "orientation": -1.0, "separation": 0.3, "seek_margin": -0.2,
                                        "reject_margin": -0.5}
    assert oriented[1].model_dump() == {**table[1].model_dump(), "orientation": 1.0}
    assert oriented[2] is table[2] and "orientation" not in oriented[2].model_dump()            # not scored: left as it is
    assert search.pick_within(oriented, None) == 0 and search.pick_within(table, None) == 1


def test_revision_is_dirty_for_changed_code_or_data_but_not_for_the_runs_own_outputs(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for path in ("persona_interp/x.py", "persona_interp/data/sets/d.jsonl", "pyproject.toml", "reports/results.json", "figures/f.svg"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = pipeline.git_revision(tmp_path)
    assert clean and not clean.endswith("-dirty") and clean != "unknown"
    (tmp_path / "reports/results.json").write_text("1\n")                   # a resumed run rewrote its outputs
    (tmp_path / "figures/f.svg").write_text("1\n")
    assert pipeline.git_revision(tmp_path) == clean
    for path in ("persona_interp/data/sets/d.jsonl", "persona_interp/x.py", "pyproject.toml"):
        (tmp_path / path).write_text("1\n")
        assert pipeline.git_revision(tmp_path) == clean + "-dirty", path
        (tmp_path / path).write_text("0\n")


def test_reproduce_never_casts_a_model_it_was_given(tokenizer, tmp_path, monkeypatch):
    import dataclasses

    from conftest import build_hf

    model = pi.load_model(build_hf("llama", len(tokenizer)), tokenizer=tokenizer, dtype="bfloat16")
    with pytest.raises(ValueError, match="the model passed in is torch.bfloat16, the configuration says float32"):
        pipeline.reproduce(dataclasses.replace(QUICK, dtype="float32"), tmp_path / "out", model=model, progress=False)
    assert pi.get_adapter(model).dtype == torch.bfloat16

    class Started(Exception):
        pass

    def first_report(out_dir, figures_dir, config, results):
        raise Started(results)

    monkeypatch.setattr(pipeline, "write_report", first_report)
    assert QUICK.dtype == "auto"                          # auto: whatever dtype the model has, recorded as it ran
    with pytest.raises(Started) as started:
        pipeline.reproduce(QUICK, tmp_path / "out2", model=model, progress=False)
    results = started.value.args[0]
    assert results.config.dtype == "auto" and results.provenance.dtype == "bfloat16"
    assert pi.get_adapter(model).dtype == torch.bfloat16


def test_a_run_on_a_model_folder_names_that_folder_in_its_report_and_results(tiny_pipeline, tokenizer, tmp_path, monkeypatch):
    import dataclasses

    from conftest import build_hf
    from persona_interp.model import machine

    monkeypatch.setattr(machine, "cpu_info", lambda: machine.CPU("test CPU", ("avx2",)))     # dtype auto: float32 here
    _, config, _ = tiny_pipeline
    assert config.dtype == "auto"
    config = dataclasses.replace(config, mask_search=None, lora=None, prompt_search=False, diagnostics=False,
                                 steering_multipliers=[1.0])
    folder = tmp_path / "my-tiny-llama"
    build_hf("llama", len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = pipeline.reproduce(config, tmp_path / "out", model=str(folder), progress=False).read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    ran = results["provenance"]
    expected = pi.get_adapter(pi.load_model(folder)).fingerprint
    assert ran["model"] == str(folder) and ran["fingerprint"] == expected and ran["dtype"] == "float32"
    assert ran["device"] == "cpu" and ran["seed"] == config.seed and ran["torch"] == torch.__version__
    assert ran["started"] <= ran["finished"] and ran["revision"] == results["revision"]
    assert set(ran["cpu"]["flags"]) <= {"amx_bf16", "avx512_bf16", "avx512f", "avx2"} and ran["cpu"]["model"]
    assert results["personas"]["power"]["provenance"]["fingerprint"] == expected
    header = text.split("\n\n")[1]
    assert header.startswith(f"Model: `{folder}` (weights' fingerprint {expected}), float32, on cpu") and "SmolLM2" not in text


def test_a_persona_cut_off_in_its_searches_resumes_them_with_the_same_results(tiny_pipeline, tmp_path, monkeypatch):
    """A run stopped halfway through its searches keeps every measured row in out/checkpoints/power-searches.json and
    what it trained (LoRA adapters, learned gates) beside it; --resume reads them back (scoring only the candidates
    left, at most one candidate's poles again; training nothing twice), and its results equal an uninterrupted run's;
    the files are gone once the persona is saved."""
    import dataclasses

    from persona_interp.evaluation import tuning
    from persona_interp.masks import damage_aware

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, diagnostics=False, matched_controls=None, lora=dataclasses.replace(config.lora, epochs=2),
                                 damage_aware_methods=["retain_ratio", "learned_gates"])
    real, calls = search.score_ab, []
    scorer = functools.partial(_cut_off, real, calls)
    trained: dict[str, int] = {"lora": 0, "gates": 0}

    def counting(real, what):
        def train(*args, **kwargs):
            trained[what] += 1
            return real(*args, **kwargs)
        return train

    monkeypatch.setattr(tuning, "train_lora", counting(tuning.train_lora, "lora"))
    monkeypatch.setattr(damage_aware, "train_gates", counting(damage_aware.train_gates, "gates"))

    monkeypatch.setattr(search, "score_ab", scorer(None))
    whole = pipeline.reproduce(config, tmp_path / "whole", model=model, progress=False)
    expected = json.loads(whole.with_name("results.json").read_text())["personas"]["power"]
    n_calls, cut = len(calls), len(calls) - 3             # in the last search (learned gates), after all training
    whole_trained = dict(trained)                          # 2 LoRAs (one per pole); gates per configuration
    assert n_calls > 10 and whole_trained["lora"] == 2 and whole_trained["gates"] >= 1
    calls.clear()
    trained.update(lora=0, gates=0)
    monkeypatch.setattr(search, "score_ab", scorer(cut))
    with pytest.raises(KeyboardInterrupt):
        pipeline.reproduce(config, tmp_path / "out", model=model, progress=False)
    saved = tmp_path / "out" / "checkpoints" / "power-searches.json"
    assert len(json.loads(saved.read_text())["scored"]) >= (cut - 2) // 2
    assert trained["lora"] == 2                            # the LoRA search comes before the mask searches
    calls.clear()
    monkeypatch.setattr(search, "score_ab", scorer(None))
    pipeline.reproduce(config, tmp_path / "out", model=model, progress=False, resume=True)
    assert n_calls - cut <= len(calls) <= n_calls - cut + 2 and not saved.parent.exists()
    assert trained == whole_trained                        # cut-off run and resumed run together: each trained once
    resumed = json.loads((tmp_path / "out" / "results.json").read_text())["personas"]["power"]
    for key in ("used", "per_item", "damage", "contrasts", "budget_winners", "table"):
        assert resumed[key] == expected[key], key


def test_resume_refuses_a_run_of_another_model_dtype_or_cpu_kind_unless_mixing_is_allowed(tiny_pipeline, tokenizer, tmp_path,
                                                                                           monkeypatch):
    import dataclasses

    from conftest import build_bridge
    from persona_interp.model.machine import CPU
    from persona_interp.report import results as recorded

    model, config, _ = tiny_pipeline
    config = dataclasses.replace(config, mask_search=None, lora=None, prompt_search=False, diagnostics=False,
                                 steering_multipliers=[1.0])
    out = tmp_path / "out"
    pipeline.reproduce(config, out, model=model, progress=False)
    first = json.loads((out / "results.json").read_text())["personas"]["power"]
    other = build_bridge("llama", tokenizer, seed=5)                         # same name and shapes, other weights
    theirs, mine = first["provenance"]["fingerprint"], pi.get_adapter(other).fingerprint
    with pytest.raises(ValueError, match=f"power was computed on another set-up \\(weights' fingerprint '{theirs}' there, '{mine}' now"):
        pipeline.reproduce(config, out, model=other, progress=False, resume=True)
    bf16 = pi.load_model(build_bridge("llama", tokenizer), dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype 'float32' there, 'bfloat16' now"):
        pipeline.reproduce(dataclasses.replace(config, dtype="bfloat16"), out, model=bf16, progress=False, resume=True)
    monkeypatch.setattr(recorded, "cpu_info", lambda: CPU("Xeon", ("amx_bf16", "avx512_bf16", "avx512f", "avx2")))
    cpu = first["provenance"]["cpu"]
    kind = CPU(cpu["model"], tuple(cpu["flags"])).kind           # JSON gives a list; CPU holds a tuple
    with pytest.raises(ValueError, match=f"CPU kind '{kind}' there, 'amx_bf16\\+avx512_bf16' now"):
        pipeline.reproduce(config, out, model=model, progress=False, resume=True)
    assert json.loads((out / "results.json").read_text())["personas"]["power"] == first     # nothing written
    two = dataclasses.replace(config, personas=["power"])
    text = pipeline.reproduce(two, out, model=other, progress=False, resume=True, allow_mixed=True).read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["personas"]["power"] == first and results["provenance"]["fingerprint"] == mine
    assert results["provenance"]["cpu"]["model"] == "Xeon" and f"weights' fingerprint {theirs}" in text


def test_reproduce_refuses_a_figures_folder_with_files_without_force(tiny_pipeline, tmp_path):
    model, config, _ = tiny_pipeline
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "power_accuracy.png").write_bytes(b"an earlier run's figure")
    with pytest.raises(FileExistsError, match="figs is not empty; pass force=True"):
        pipeline.reproduce(config, tmp_path / "out", tmp_path / "figs", model=model, progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / "figs" / "power_accuracy.png").read_bytes() == b"an earlier run's figure"
