"""The pages that quote the main job's results stay in step with them (issue #34): the generated blocks of README.md
and docs/findings.md are what the code writes from the committed reports/results.json, rewriting them touches
nothing outside the markers, and the findings page's "what the full run shows" has no figure or verdict written by
hand: its words follow the results when they change, and a clause whose field an older file lacks is left out."""
import re
import shutil
from pathlib import Path

import pytest

import persona_interp as pi
from persona_interp import cli
from persona_interp.report.findings import BLOCK, full_run_markdown, rewrite_generated, run_markdown
from persona_interp.report.results import StageTime

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "findings.md"]


@pytest.fixture(scope="module")
def results():
    return pi.load_results(ROOT / "reports" / "results.json")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_committed_pages_are_what_the_committed_results_give(page, results):
    text = page.read_text(encoding="utf-8")
    assert BLOCK.search(text), f"{page.name} has no generated block"
    assert rewrite_generated(text, results) == text, (
        f"{page.name} is stale: run `persona-interp figures --results reports/results.json --docs README.md docs/findings.md`")


def test_a_changed_number_is_seen_and_written_back(results):
    text = PAGES[0].read_text(encoding="utf-8")
    stale = text.replace("+1.37 [+1.27, +1.46]", "+1.38 [+1.27, +1.46]", 1)
    assert stale != text and rewrite_generated(stale, results) == text


def test_the_rewrite_leaves_everything_outside_the_markers_byte_identical(tmp_path, results, capsys):
    pages = []
    for page in PAGES:
        copy = tmp_path / page.name
        text = page.read_text(encoding="utf-8")
        body = lambda m: m.group(0)[:m.start("body") - m.start()] + "old\n<!-- end generated -->"   # noqa: E731
        copy.write_text("Before, with a number 1.37.\n" + BLOCK.sub(body, text) + "After: 49.5 %\n", encoding="utf-8")
        pages.append(copy)
    cli.main(["figures", "--results", str(ROOT / "reports" / "results.json"), "--docs", *map(str, pages)])
    assert "rewrote the generated blocks of 2 of 2 page(s)" in capsys.readouterr().out
    for page, copy in zip(PAGES, pages):
        new = copy.read_text(encoding="utf-8")
        assert new == "Before, with a number 1.37.\n" + page.read_text(encoding="utf-8") + "After: 49.5 %\n"


@pytest.mark.parametrize("text, error", [
    ("<!-- generated: findings (x) -->\nno end\n", r"1 '<!-- generated: …' and 0 '<!-- end generated -->' marker\(s\)"),
    ("<!-- generated: tables (x) -->\n<!-- end generated -->\n", "unknown generated block 'tables'"),
    ("no markers\n", "has no generated block")])
def test_broken_markers_are_refused_and_the_page_left_alone(tmp_path, results, text, error):
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit, match=re.escape(str(page)) + ".*" + error):
        cli.main(["figures", "--results", str(ROOT / "reports" / "results.json"), "--docs", str(page)])
    assert page.read_text(encoding="utf-8") == text


def test_figures_needs_out_or_docs(tmp_path):
    with pytest.raises(SystemExit, match="--out .*--docs"):
        cli.main(["figures", "--results", str(ROOT / "reports" / "results.json")])
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    with pytest.raises(SystemExit, match="--report links its figures from --out"):
        cli.main(["figures", "--results", str(ROOT / "reports" / "results.json"), "--docs", str(tmp_path / "README.md"),
                  "--report", str(tmp_path / "r.md")])
    assert (tmp_path / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()


# What the full run shows (docs/findings.md's full-run-shows block): every figure and verdict from the results.

def _changed(results, persona, **fields):
    """A deep copy of ``results`` with ``persona``'s fields replaced."""
    copy = results.model_copy(deep=True)
    for name, value in fields.items():
        setattr(copy.personas[persona], name, value)
    return copy


def _winner_as(entry, budget, pair):
    """``entry``'s budget winners with the one at ``budget`` replaced by the pick ``pair`` (its test contrast)."""
    contrast = {row.pair: row for row in entry.contrasts}[pair]
    regime = contrast.regime
    return [w.replace(pair=pair, regime=regime, difference=contrast.difference, difference_low=contrast.difference_low,
                      difference_high=contrast.difference_high) if w.budget == budget else w for w in entry.budget_winners]


def test_the_findings_page_has_the_full_run_block_and_the_readme_does_not(results):
    names = {page.name: [m["name"] for m in BLOCK.finditer(page.read_text(encoding="utf-8"))] for page in PAGES}
    assert names == {"README.md": ["findings"], "findings.md": ["run", "across-personas", "full-run-shows"]}


def test_the_full_run_section_holds_no_hand_written_figure():
    text = PAGES[1].read_text(encoding="utf-8")
    start = text.index("What the full run shows")
    end = text.index("\n![", start)                       # the section ends at its figures
    outside = BLOCK.sub("", text[start:end])
    assert "full-run-shows" in text[start:end] and "Contrastive-Wanda" in outside     # the static text is still there
    assert not re.findall(r"\d", outside), f"hand-written figures in the section: {re.findall(r'.{20}[0-9].{20}', outside)}"


def test_the_full_run_bullets_quote_the_results(results):
    text = full_run_markdown(results)
    headings = [line.split("**")[1] for line in text.splitlines()]
    assert headings[0] == "At equal damage, steering or fine-tuning wins, and a mask wins once."
    assert len(headings) == 7 and headings[-1] == "Accuracy"
    hallucination = results.personas["hallucination"]
    winner = hallucination.budget_winners[0]
    assert f"{winner.test_kl:.4f}" in text and winner.estimate("difference").signed(2) in text
    judging = results.personas["judging_perceiving"].budget_winners[0]
    assert judging.decisive is False and f"decisive except judging–perceiving's at KL ≤ 0.02 ({judging.estimate('lead').signed(2)}" in text


def test_the_verdict_words_follow_the_results(results):
    base = full_run_markdown(results)
    assert "Every winner's lead over its runner-up is decisive except" in base
    # the one lead that is not decisive becomes decisive
    judging = results.personas["judging_perceiving"]
    decisive = _changed(results, "judging_perceiving",
                        budget_winners=[w.replace(decisive=True) for w in judging.budget_winners])
    assert "Every winner's lead over its runner-up is decisive." in full_run_markdown(decisive)
    none = results.model_copy(deep=True)
    for entry in none.personas.values():
        entry.budget_winners = [w.replace(decisive=False) if w.pair is not None else w for w in entry.budget_winners]
    assert "No winner's lead over its runner-up is decisive: " in full_run_markdown(none)
    # wealth's stability interval flips from across 0 to above it
    wealth = results.personas["wealth"]
    stable = wealth.used.model_copy(deep=True)
    s = stable.diagnostics.stability.summary
    stable.diagnostics.stability.summary = s.replace(separation=0.3, separation_low=0.1, separation_high=0.5)
    flipped = full_run_markdown(_changed(results, "wealth", used=stable))
    assert "across 0 on wealth" in base and "across 0 on intuition–sensing (" in flipped and "wealth (+0.30 [+0.10, +0.50])" in flipped
    # wealth's paper mask with its prompt separates the poles, and its seek mask beats its random control
    contrasts = [c.replace(difference_low=0.05) if c.pair == "contrastive_wanda@0.3+prompt" else c for c in wealth.contrasts]
    controls = [c.replace(beats_control=True) if c.condition == "contrastive_wanda-seek@0.3" else c for c in wealth.controls]
    paper = full_run_markdown(_changed(results, "wealth", contrasts=contrasts, controls=controls))
    assert "does not detectably separate them on wealth" in base and "does not detectably separate them on intuition–sensing (" in paper
    assert "Its seek mask beats its random control of the same sparsity on power, wealth, hallucination" in paper
    assert "neither pole's mask does on intuition–sensing or thinking–feeling" in paper


def test_the_winners_bullet_follows_a_mask_that_wins_more_budgets(results):
    power = results.personas["power"]
    won = _changed(results, "power", budget_winners=_winner_as(power, 0.1, "contrastive_wanda@kl0.1+prompt"))
    text = full_run_markdown(won)
    assert text.startswith("- **At equal damage, steering or fine-tuning wins, and a mask wins twice.**")
    assert "The exceptions are power at KL ≤ 0.1: Contrastive-Wanda with its prompt (the paper's protocol) separates" in text
    assert "On power at KL ≤ 0.1 the winning mask costs KL" in text
    assert "From KL ≤ 0.5 up, steering or LoRA wins under either rule." in text        # a mask wins at 0.1 now
    assert "the KL ≤ 0.1 winner becomes mean-difference steering on power (" in text     # the reported-text rule keeps it
    # every persona's KL ≤ 0.5 pick goes to a mask: no budget is won by other regimes under both rules any more
    masks = results.model_copy(deep=True)
    for entry in masks.personas.values():
        pair = next(r.pair for r in entry.frontier if r.line == "contrastive_wanda+prompt" and r.budgets and 0.5 in r.budgets)
        entry.budget_winners = _winner_as(entry, 0.5, pair)
    text = full_run_markdown(masks)
    assert "a mask wins 8 times" in text and "under either rule" not in text
    assert "LoRA wins hallucination at KL ≤ 0.1 (" in text


def test_new_methods_are_named(results):
    power = results.personas["power"]
    renamed = [c.replace(pair="weight_edit@kl0.5", regime="weight_edit") if c.pair == "mean_difference@kl0.5" else c
               for c in power.contrasts]
    edited = _changed(results, "power", contrasts=renamed)
    edited.personas["power"].budget_winners = _winner_as(edited.personas["power"], 0.5, "weight_edit@kl0.5")
    text = full_run_markdown(edited)
    assert "weight-edit steering at KL ≤ 0.5 on power" in text and "a mask wins once" in text


def test_missing_fields_leave_their_clauses_out(results):
    old = results.model_copy(deep=True)
    old.config = old.config.model_copy(update={"n_selection_neutral": None, "n_neutral": None})
    for entry in old.personas.values():
        entry.used = entry.used.model_copy(update={"diagnostics": None})
        entry.controls, entry.prompt_additions, entry.frontier = [], [], []
    text = full_run_markdown(old)
    headings = [line.split("**")[1] for line in text.splitlines()]
    assert headings == ["At equal damage, steering or fine-tuning wins, and a mask wins once.",
                        "Which regime wins at KL ≤ 0.02 and 0.1 depends on which texts enforce the budget.",
                        "The paper's rows (ρ = 0.3).", "Accuracy"]
    assert "on the selection texts; on the reported texts five winners" in text
    assert "random control" not in text and "to the prompt" not in text and "best mask" not in text
    for entry in old.personas.values():
        entry.equal_damage = []
    assert "depends on which texts" not in full_run_markdown(old)


def test_the_run_block_says_what_computed_each_persona_and_how_long_it_took(results):
    text = run_markdown(results)
    assert "revision `2ec75e2` (power and wealth) and `a1d9906` (hallucination and the four MBTI axes)" in text
    assert "test items: 100 (power, wealth and hallucination) and 65 (the four MBTI axes)" in text
    assert "Compute times per persona: not recorded" in text and "CPU not recorded" in text   # a file from before both
    timed = results.model_copy(deep=True)
    for i, entry in enumerate(timed.personas.values()):
        entry.revision = "abc1234"
        entry.stages = [StageTime(name="evaluation", seconds=600.0 * (i + 1), steps=3), StageTime(name="steering", seconds=60.0, steps=6)]
    text = run_markdown(timed)
    assert "computed by revision `abc1234`, finished" in text                    # one revision: no grouping
    assert "power 11 min, wealth 21 min" in text and "judging–perceiving 71 min; 4.8 h for those recorded" in text
    timed.personas["wealth"].stages = None
    assert "wealth not recorded" in run_markdown(timed)
