"""How far each mask method falls short of the best regime that is no mask (persona_interp.report.shortfall, notebook
08): checked against hand computations on small hand-built results and on the committed reports/results.json, and a
mask that separates the poles more is reported as a win."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from conftest import frontier_row, run_results

from persona_interp.interventions.conditions import WeightEditCondition
from persona_interp.masks.damage_aware import DAMAGE_AWARE_METHODS
from persona_interp.report.results import RunResults, load_results
from persona_interp.report.shortfall import (
    IDEAS,
    closest_mask,
    closing_ideas,
    control_table,
    control_verdicts,
    decisive_winners,
    idea_rows,
    mask_kind,
    median_closed,
    searched_methods,
    shortfall_rows,
    shortfall_table,
)
from persona_interp.report.summary import compute_times, is_mask

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "results.json"


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and paired t 95 % interval, by hand."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# each pair: (frontier line, budgets, per-item seek − reject margins on 4 test items)
PAIRS = {
    "prompt": ("prompt", None, [0.1, 0.2, 0.3, 0.2]),
    "mean_difference@kl0.1": ("mean_difference", [0.1], [1.0, 1.2, 0.8, 1.0]),
    "weight_edit@kl0.1": ("weight_edit", [0.1], [0.5, 0.7, 0.6, 0.6]),
    "contrastive_wanda@kl0.02": ("contrastive_wanda", [0.02, 0.1], [0.2, 0.4, 0.3, 0.3]),
    "contrastive_wanda@kl0.02+prompt": ("contrastive_wanda+prompt", [0.02, 0.1], [0.3, 0.4, 0.3, 0.3]),
    "contrastive_wanda@0.3": ("contrastive_wanda", None, [2.0, 2.0, 2.5, 2.5]),      # the paper's row: no pick
    "retain_ratio@kl0.1": ("retain_ratio", [0.1], [1.5, 1.7, 1.6, 1.6]),
    "learned_gates@kl0.1": ("learned_gates", [0.1], [0.6, 0.6, 0.9, 0.7]),
}


def condition(pair: str, side: str) -> str:
    """``retain_ratio@kl0.1+prompt`` → ``retain_ratio-seek@kl0.1+prompt``, as the main job names a pair's conditions."""
    if "@" not in pair:
        return f"{pair}-{side}"
    method, tag = pair.split("@", 1)
    return f"{method}-{side}@{tag}"


def control(pair: str, side: str, beats: bool, matched: bool | None = None) -> dict:
    row = {"persona": "power", "condition": condition(pair, side), "control": f"random@{pair.split('@')[1]}", "n": 4,
           "advantage": 0.5 if beats else -0.1, "advantage_low": 0.1 if beats else -0.5, "advantage_high": 0.9, "beats_control": beats}
    if matched is not None:
        row.update(matched_control=f"random-matched:{condition(pair, side)}", matched_advantage=0.1, matched_advantage_low=-0.1,
                   matched_advantage_high=0.3, beats_matched=matched)
    return row


def hand_built(pairs: dict = PAIRS, controls: list | None = None, **entry) -> RunResults:
    """One persona's results with these pairs: contrasts, per-item margins (seek = the values, reject = 0) and frontier
    rows whose effects are the values' mean and t interval; damage budgets 0.02 and 0.1."""
    contrasts, per_item, frontier = [], {}, []
    for pair, (line, budgets, values) in pairs.items():
        mean, low, high = t_interval(values)
        contrasts.append({"persona": "power", "pair": pair, "regime": line.removesuffix("+prompt"), "seek_condition": condition(pair, "seek"),
                          "reject_condition": condition(pair, "reject"), "n": 4, "difference": mean, "difference_low": low,
                          "difference_high": high, "items_seek_only": 0, "items_reject_only": 0})
        per_item[condition(pair, "seek")] = {"margin_sum": values, "margin_mean": values}
        per_item[condition(pair, "reject")] = {"margin_sum": [0.0] * 4, "margin_mean": [0.0] * 4}
        frontier.append(frontier_row(line=line, pair=pair, budgets=budgets, kl=0.05 if budgets else 0.0, difference=mean,
                                     difference_low=low, difference_high=high))
    if controls is None:
        controls = [control("retain_ratio@kl0.1", "seek", True, True), control("retain_ratio@kl0.1", "reject", True, False),
                    control("contrastive_wanda@kl0.02", "seek", False), control("contrastive_wanda@kl0.02", "reject", True)]
    return RunResults.model_validate(run_results({"power": {"n_test": 4, "contrasts": contrasts, "per_item": per_item,
                                                            "frontier": frontier, "controls": controls, **entry}},
                                                 damage_budgets=[0.02, 0.1]))


def row_of(rows, budget, method, prompt=False):
    return next(r for r in rows if r.budget == budget and r.method == method and r.prompt == prompt)


def test_a_shortfall_is_the_paired_difference_to_the_best_regime_that_is_no_mask():
    rows = shortfall_rows(hand_built())
    row = row_of(rows, 0.1, "contrastive_wanda")
    # by hand: at KL ≤ 0.1 the best regime that is no mask is mean_difference (mean 1.0 > weight edit 0.6 > prompt 0.2)
    best, mask = PAIRS["mean_difference@kl0.1"][2], PAIRS["contrastive_wanda@kl0.02"][2]
    value, low, high = t_interval([b - m for b, m in zip(best, mask)])
    assert (row.pair, row.best, row.kind) == ("contrastive_wanda@kl0.02", "mean_difference@kl0.1", "signature-only")
    assert row.shortfall == pytest.approx(0.7) and row.shortfall == pytest.approx(value)
    assert (row.shortfall_low, row.shortfall_high) == (pytest.approx(low), pytest.approx(high))
    assert row.wins is False and row.decisive is True                 # it falls short, decisively
    assert row.best_difference == pytest.approx(1.0)


def test_a_mask_that_separates_more_is_reported_as_a_win():
    rows = shortfall_rows(hand_built())
    aware = row_of(rows, 0.1, "retain_ratio")                         # 1.6 against mean_difference's 1.0, every item
    value, low, high = t_interval([b - m for b, m in zip(PAIRS["mean_difference@kl0.1"][2], PAIRS["retain_ratio@kl0.1"][2])])
    assert aware.kind == "damage-aware" and aware.wins is True and aware.decisive is True
    assert (aware.shortfall, aware.shortfall_low, aware.shortfall_high) == (pytest.approx(value), pytest.approx(low), pytest.approx(high))
    assert high < 0
    assert decisive_winners(rows, 0.1) == ["power"]
    assert closest_mask(rows, "power", 0.1) == aware
    cell = next(t for t in shortfall_table(rows, 0.1) if t["method"] == "retain_ratio" and t["protocol"] == "alone")["power"]
    assert cell == f"{value:+.2f} ± {(high - low) / 2:.2f} (wins, decisive)"
    # at KL ≤ 0.02 the only regime that is no mask is the prompt (0.2): Contrastive-Wanda's 0.3 passes it, not decisively
    small = row_of(rows, 0.02, "contrastive_wanda")
    assert small.best == "prompt" and small.wins is True and small.decisive is False
    assert small.shortfall == pytest.approx(-0.1)
    assert decisive_winners(rows, 0.02) == []


def test_no_pick_within_a_budget_and_methods_not_searched():
    results = hand_built()
    rows = shortfall_rows(results)
    missing = row_of(rows, 0.02, "retain_ratio")                      # its one pick is for KL ≤ 0.1
    assert missing.pair is None and missing.shortfall is None and missing.wins is None and missing.best == "prompt"
    assert searched_methods(results.personas["power"]) == ["contrastive_wanda", "retain_ratio", "learned_gates"]
    assert {r.method for r in rows} == {"contrastive_wanda", "retain_ratio", "learned_gates"}    # nothing of gradient
    table = shortfall_table(rows, 0.02)
    assert next(t for t in table if t["method"] == "retain_ratio")["power"] == "no pick"
    assert [(t["method"], t["protocol"]) for t in table][:2] == [("contrastive_wanda", "alone"), ("contrastive_wanda", "+ prompt")]


def test_without_per_item_margins_the_shortfall_has_no_interval():
    results = hand_built()
    entry = results.personas["power"]
    bare = results.model_copy(update={"personas": {"power": entry.model_copy(update={"per_item": {}})}})
    row = row_of(shortfall_rows(bare), 0.1, "contrastive_wanda")
    assert row.shortfall == pytest.approx(0.7) and row.shortfall_low is None and row.decisive is None and row.wins is False


def test_the_controls_of_each_pick_per_pole():
    rows = shortfall_rows(hand_built())
    aware = row_of(rows, 0.1, "retain_ratio")
    assert (aware.seek_beats_random, aware.reject_beats_random, aware.seek_beats_matched, aware.reject_beats_matched) == (True, True, True, False)
    cw = row_of(rows, 0.1, "contrastive_wanda")
    assert (cw.seek_beats_random, cw.reject_beats_random, cw.seek_beats_matched) == (False, True, None)
    assert row_of(rows, 0.1, "contrastive_wanda", prompt=True).seek_beats_random is None       # +prompt picks have none
    # a pick for two budgets counts once: retain_ratio's two poles, Contrastive-Wanda's two, learned gates has none
    assert sorted(control_verdicts(rows)) == [False, True, True, True]
    assert sorted(control_verdicts(rows, matched=True)) == [False, True]
    by_method = {t["method"]: t["power"] for t in control_table(rows)}
    assert by_method == {"contrastive_wanda": "same sparsity 1 of 2; equal damage —",
                         "retain_ratio": "same sparsity 2 of 2; equal damage 1 of 2",
                         "learned_gates": "same sparsity —; equal damage —"}


def test_the_share_of_the_gap_each_idea_closed():
    rows = idea_rows(hand_built())
    at = {(r.budget, r.idea): r for r in rows}
    # KL ≤ 0.1: from Contrastive-Wanda (0.3) to mean_difference (1.0; the weight edit is an idea, not the reference)
    gap = 1.0 - 0.3
    for idea, pair, effect in (("retain-aware scores", "retain_ratio@kl0.1", 1.6), ("learned gates", "learned_gates@kl0.1", 0.7),
                               ("weight-edit steering", "weight_edit@kl0.1", 0.6)):
        row = at[(0.1, idea)]
        assert (row.pair, row.signature_best, row.reference) == (pair, "contrastive_wanda@kl0.02", "mean_difference@kl0.1")
        assert row.gap == pytest.approx(gap) and row.gain == pytest.approx(effect - 0.3)
        assert row.closed == pytest.approx((effect - 0.3) / gap)
        value, low, high = t_interval([a - b for a, b in zip(PAIRS[pair][2], PAIRS["contrastive_wanda@kl0.02"][2])])
        assert (row.gain_low, row.gain_high) == (pytest.approx(low), pytest.approx(high))
    # KL ≤ 0.02: the mask already passes the prompt, so there is no gap to close, and no idea has a pick
    assert all(at[(0.02, idea)].closed is None and at[(0.02, idea)].pair is None for idea in IDEAS)
    assert at[(0.02, "learned gates")].gap == pytest.approx(0.2 - 0.3)
    assert closing_ideas(rows) == {"retain-aware scores": 1, "learned gates": 0, "weight-edit steering": 0}
    assert median_closed(rows, "learned gates") == pytest.approx(0.4 / 0.7)
    assert median_closed(rows, "retain-aware scores") == pytest.approx(1.3 / 0.7)


def test_without_a_signature_only_pick_the_gap_starts_at_the_unchanged_model():
    pairs = {k: v for k, v in PAIRS.items() if not k.startswith("contrastive_wanda")}
    row = next(r for r in idea_rows(hand_built(pairs, controls=[])) if r.budget == 0.1 and r.idea == "retain-aware scores")
    assert row.signature_best is None and row.gap == pytest.approx(1.0) and row.gain == pytest.approx(1.6)
    value, low, high = t_interval(PAIRS["retain_ratio@kl0.1"][2])
    assert (row.gain_low, row.gain_high, row.closed) == (pytest.approx(low), pytest.approx(high), pytest.approx(1.6))


def test_the_ideas_cover_every_damage_aware_method_and_the_weight_edit_once():
    members = [m for regimes in IDEAS.values() for m in regimes]
    assert sorted(members) == sorted([*DAMAGE_AWARE_METHODS, "weight_edit"]) and len(set(members)) == len(members)
    assert all(mask_kind(m) == "damage-aware" for m in DAMAGE_AWARE_METHODS)
    assert {f.name: f.default for f in dataclasses.fields(WeightEditCondition)}["regime"] in IDEAS["weight-edit steering"]


@pytest.fixture(scope="module")
def committed():
    return load_results(COMMITTED), json.loads(COMMITTED.read_text())


def test_on_the_committed_results_a_shortfall_matches_the_hand_computation(committed):
    results, raw = committed
    entry = raw["personas"]["power"]
    contrasts = {c["pair"]: c for c in entry["contrasts"]}

    def items(pair):
        c = contrasts[pair]
        seek, reject = entry["per_item"][c["seek_condition"]]["margin_mean"], entry["per_item"][c["reject_condition"]]["margin_mean"]
        return [s - r for s, r in zip(seek, reject)]

    eligible = [f for f in entry["frontier"] if f["line"] in ("prompt", "rag") or 0.1 in (f["budgets"] or [])]
    best = max((f for f in eligible if not is_mask(f["line"])), key=lambda f: f["difference"])
    mask = max((f for f in eligible if f["line"] == "contrastive_wanda"), key=lambda f: f["difference"])
    value, low, high = t_interval([b - m for b, m in zip(items(best["pair"]), items(mask["pair"]))])
    row = row_of([r for r in shortfall_rows(results) if r.persona == "power"], 0.1, "contrastive_wanda")
    assert (row.best, row.pair) == (best["pair"], mask["pair"])
    assert (row.shortfall, row.shortfall_low, row.shortfall_high) == (pytest.approx(value), pytest.approx(low), pytest.approx(high))


def test_on_the_committed_results_the_best_regime_is_the_budget_winner_unless_a_mask_wins(committed):
    results, _ = committed
    rows = shortfall_rows(results)
    for persona, entry in results.personas.items():
        for w in entry.budget_winners:
            mine = [r for r in rows if r.persona == persona and r.budget == w.budget]
            if is_mask(w.pair):                            # a mask won the budget: its row says so
                winner = next(r for r in mine if r.pair == w.pair)
                assert winner.wins is True and winner.shortfall < 0
            else:
                assert {r.best for r in mine} == {w.pair} and not any(r.wins and r.prompt for r in mine)
    # hallucination at KL ≤ 0.02: Contrastive-Wanda with its prompt is the budget winner, reported as a decisive win
    won = row_of([r for r in rows if r.persona == "hallucination"], 0.02, "contrastive_wanda", prompt=True)
    assert won.pair == "contrastive_wanda@kl0.02+prompt" and won.wins is True and won.decisive is True


def test_compute_times_from_the_stages():
    stages = [{"name": "steering", "seconds": 600.0, "steps": 6}, {"name": "evaluation", "seconds": 1500.0, "steps": 1}]
    results = RunResults.model_validate(run_results({"power": {"stages": stages}, "wealth": {}}))
    assert results.personas["power"].seconds == 2100.0
    assert compute_times(results, ["power"]) == "power 35 min (float32 on test CPU, cpu)"
    assert compute_times(results) == "power 35 min, wealth not recorded: at least 35 min in all (float32 on test CPU, cpu)"
    assert compute_times(results, ["wealth"]).endswith("(a run before per-persona stage times were recorded)")


def test_the_mask_frontier_figure_draws_the_picks_in_the_mask_colours(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    from persona_interp.report import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [stem])
    figures.plot_mask_frontier(hand_built().personas["power"], tmp_path / "f")
    ax = drawn[0].axes[0]
    lines = {container.get_label(): container.lines[0] for container in ax.containers}     # each errorbar's data line
    assert sorted(lines) == sorted({line for line, _, _ in PAIRS.values()})                  # one line per regime
    assert len(lines["contrastive_wanda"].get_xdata()) == 1                                 # its paper row left out
    assert lines["contrastive_wanda"].get_marker() == "o" and lines["retain_ratio"].get_marker() == "D"
    assert lines["contrastive_wanda+prompt"].get_linestyle() == "--"
    warm = [to_rgba(lines[name].get_color()) for name in ("contrastive_wanda", "retain_ratio", "learned_gates")]
    assert all(r > b for r, _, b, _ in warm)                                              # masks: oranges and reds
    r, _, b, _ = to_rgba(lines["mean_difference"].get_color())
    assert b > r                                                                          # steering: blues


def test_the_weight_edit_is_measured_against_the_gap_not_part_of_it():
    pairs = {**PAIRS, "weight_edit@kl0.1": ("weight_edit", [0.1], [1.3, 1.5, 1.4, 1.4])}      # above mean_difference's 1.0
    results = hand_built(pairs)
    edit = next(r for r in idea_rows(results) if r.budget == 0.1 and r.idea == "weight-edit steering")
    assert edit.reference == "mean_difference@kl0.1" and edit.closed == pytest.approx((1.4 - 0.3) / 0.7)
    assert {r.best for r in shortfall_rows(results) if r.budget == 0.1} == {"weight_edit@kl0.1"}     # yet no mask
