"""The pages that quote the main job's results and the studies' stay in step with them (issue #34): the generated
blocks of README.md and docs/findings.md are what the code writes from the committed reports/results.json and the
study records beside it, rewriting them touches nothing outside the markers, and neither the findings page's "what
the full run shows" nor its section on the previous protocol and its studies has a figure or verdict written by
hand: their words follow the results and records when they change, and a clause whose field an older file lacks is
left out."""
import re
import shutil
from pathlib import Path

import pytest

import persona_interp as pi
from persona_interp import cli
from persona_interp.analysis.regimes import TransferCell
from persona_interp.evaluation.stats import Estimate
from persona_interp.report.findings import (BLOCK, Sources, full_run_markdown, previous_protocol_markdown, rewrite_generated,
                                            run_markdown)
from persona_interp.report.results import StageTime
from persona_interp.report.study_findings import atlas_findings_markdown, composition_findings_markdown, regimes_findings_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "findings.md"]


@pytest.fixture(scope="module")
def results():
    return pi.load_results(ROOT / "reports" / "results.json")


@pytest.fixture(scope="module")
def sources(results):
    return Sources(results, ROOT / "reports")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_committed_pages_are_what_the_committed_results_give(page, sources):
    text = page.read_text(encoding="utf-8")
    assert BLOCK.search(text), f"{page.name} has no generated block"
    assert rewrite_generated(text, sources) == text, (
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


def test_the_findings_page_has_the_full_run_and_study_blocks_and_the_readme_does_not(results):
    names = {page.name: [m["name"] for m in BLOCK.finditer(page.read_text(encoding="utf-8"))] for page in PAGES}
    assert names == {"README.md": ["findings"], "findings.md": ["run", "across-personas", "full-run-shows", "previous-protocol",
                                                                "atlas", "composition", "regimes"]}
    commands = {m["command"] for page in PAGES for m in BLOCK.finditer(page.read_text(encoding="utf-8"))}
    assert commands == {"persona-interp figures --results reports/results.json --docs README.md docs/findings.md"}


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
    assert "power not recorded, wealth not recorded" in text and "CPU not recorded" in text   # a file from before both
    timed = results.model_copy(deep=True)
    for i, entry in enumerate(timed.personas.values()):
        entry.revision = "abc1234"
        entry.stages = [StageTime(name="evaluation", seconds=600.0 * (i + 1), steps=3), StageTime(name="steering", seconds=60.0, steps=6)]
    text = run_markdown(timed)
    assert "computed by revision `abc1234`, finished" in text                    # one revision: no grouping
    assert "power 11 min, wealth 21 min" in text and "judging_perceiving 71 min: 287 min in all" in text
    timed.personas["wealth"].stages = None
    assert "wealth not recorded" in run_markdown(timed) and "at least 266 min in all" in run_markdown(timed)


# The previous protocol and its studies (docs/findings.md's last section): the verdict on the previous protocol from
# the run's results, the three studies' paragraphs from their records.

STUDY_SECTION = "## The previous protocol and its studies"
HISTORY = ["`0fb9a67`…`9105b2f`", "2026-11-29/30", "float32", "~6 h", "`git show 9da6f0b:reports/report.md`",
           "(committed 2026-11-29)", "notebooks 04 and 06", "notebook 07"]   # the static history's revisions and dates


def test_the_study_section_holds_no_hand_written_figure():
    text = PAGES[1].read_text(encoding="utf-8")
    section = text[text.index(STUDY_SECTION) + len(STUDY_SECTION):]
    assert "\n## " not in section                        # the section runs to the end of the page
    outside = BLOCK.sub("", section)
    assert [m["name"] for m in BLOCK.finditer(section)] == ["previous-protocol", "atlas", "composition", "regimes"]
    for allowed in HISTORY:
        assert allowed in outside, f"{allowed!r} is no longer in the section: drop it from HISTORY"
        outside = outside.replace(allowed, "")
    assert "at equal damage a mask never wins" in outside and "figures/atlas/power_dose_neuron_zero.png" in outside
    outside = outside.replace("figures/atlas/power_dose_neuron_zero.png", "")          # the figure's name, not a result
    assert not re.findall(r"\d", outside), f"hand-written figures in the section: {re.findall(r'.{20}[0-9].{20}', outside)}"


def test_a_study_block_needs_the_study_records(tmp_path, results):
    page = PAGES[1].read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="the study blocks are written from the study records"):
        rewrite_generated(page, results)
    shutil.copy(ROOT / "reports" / "results.json", tmp_path / "results.json")
    copy = tmp_path / "findings.md"
    copy.write_text(page, encoding="utf-8")
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path / "atlas" / "*.json")) + " matches no file"):
        cli.main(["figures", "--results", str(tmp_path / "results.json"), "--docs", str(copy)])
    assert copy.read_text(encoding="utf-8") == page


def test_the_previous_protocol_verdict_follows_the_results(results):
    text = previous_protocol_markdown(results)
    assert text.startswith("The full run above contradicts that summary on hallucination at KL ≤ 0.02: Contrastive-Wanda with its "
                           "prompt (the paper's protocol) separates the poles by +1.37 [+1.27, +1.46] nats/token; and, by the "
                           "reported-text rule, on intuition–sensing at KL ≤ 0.02:")
    hallucination = results.personas["hallucination"]
    no_win = _changed(results, "hallucination", budget_winners=_winner_as(hallucination, 0.02, "pca@kl0.02"))
    assert previous_protocol_markdown(no_win).startswith(
        "With picks made within the budget on the selection texts the full run above agrees with that summary (no mask wins a "
        "damage budget); by the reported-text rule it contradicts it on hallucination at KL ≤ 0.02: ")
    reported = [e.replace(pair="mean_difference@kl0.02", regime="mean_difference") if e.budget == 0.02 else e
                for e in results.personas["intuition_sensing"].equal_damage]
    only_selection = _changed(results, "intuition_sensing", equal_damage=reported)
    only_selection.personas["hallucination"].equal_damage = [
        e.replace(pair="pca@kl0.02", regime="pca") if e.budget == 0.02 else e for e in hallucination.equal_damage]
    text = previous_protocol_markdown(only_selection)
    assert "(a win the reported-text rule does not keep)." in text and "intuition–sensing" not in text
    neither = _changed(only_selection, "hallucination", budget_winners=_winner_as(hallucination, 0.02, "pca@kl0.02"))
    assert previous_protocol_markdown(neither) == ("The full run above agrees with that summary: no mask wins a damage budget under "
                                                   "either rule (picks within the budget on the selection texts or on the reported texts).\n")
    for entry in neither.personas.values():                          # a file without the reported-text rule
        entry.equal_damage = []
    assert previous_protocol_markdown(neither) == "The full run above agrees with that summary: no mask wins a damage budget.\n"


@pytest.fixture(scope="module")
def atlases(sources):
    return sources.atlases


def _atlas(atlases, persona, **fields):
    """A deep copy of ``atlases`` with ``persona``'s fields replaced."""
    copy = [a.model_copy(deep=True) for a in atlases]
    for a in copy:
        if a.persona == persona:
            for name, value in fields.items():
                setattr(a, name, value)
    return copy


def test_the_atlas_paragraphs_quote_the_records(atlases):
    text = atlas_findings_markdown(atlases)
    detail, pairs = text.strip().split("\n\n")
    assert detail.startswith("**Where the power persona sits, and whether its units are causal.**")
    assert [a.persona for a in atlases][:3] == ["power", "wealth", "hallucination"]            # the run's order
    assert "a cosine of at least 0.998 in every layer" in detail and "differ in 48–60 % of entries" in detail
    assert "toward seek by +0.426 [+0.243, +0.610] nats/token at +0.5 % perplexity, against +0.033 (seeds +0.003 to +0.055)" in detail
    assert "zeroed heads are not distinguishable from random at any k" in detail
    assert "mean-ablated heads are more than random at k = 1, 4 and 16 and not distinguishable from random at k = 64" in detail
    assert "moves it as much as steering, in either direction" in detail
    assert "more than as many random neurons on five of the seven pairs: power +0.43 [+0.24, +0.61] (random +0.03)" in pairs
    assert "toward reject on introversion–extraversion" in pairs and "each at ≤ 2.8 % perplexity" in pairs
    assert "the interval is across 0 on intuition–sensing +0.19 [-0.11, +0.49] (random -0.00, at +29 % perplexity)" in pairs
    assert ("more than mean-difference steering (+α / −α) on wealth (+0.64 vs +0.26 / -0.26) and hallucination (+1.20 vs +0.49 / -0.49), "
            "as much (intervals overlapping) on power") in pairs
    assert "head L25H7 ranks first for power and wealth and second for introversion–extraversion; L8H5 ranks first" in pairs


def test_the_atlas_verdicts_follow_the_records(atlases):
    thinking = next(a for a in atlases if a.persona == "thinking_feeling")
    k = max(r.k for r in thinking.dose_response)
    moved = [r.replace(shift=0.5, shift_low=0.3, shift_high=0.7) if (r.selection, r.k) == ("top", k) else r
             for r in thinking.dose_response]
    text = atlas_findings_markdown(_atlas(atlases, "thinking_feeling", dose_response=moved))
    assert "on six of the seven pairs" in text and "(random -0.02), thinking–feeling +0.50 [+0.30, +0.70] (random +0.01) and judging" in text
    assert "the interval is across 0 on intuition–sensing +0.19 [-0.11, +0.49] (random -0.00, at +29 % perplexity)." in text
    # inside the random draws' range but above 0: not distinguishable, and said so
    beside = [r.replace(shift=0.02, shift_low=0.01, shift_high=0.03) if (r.selection, r.k) == ("top", k) else r
              for r in thinking.dose_response]
    assert "the shift is not distinguishable from random on thinking–feeling +0.02 [+0.01, +0.03]" in atlas_findings_markdown(
        _atlas(atlases, "thinking_feeling", dose_response=beside))
    # power's zeroed heads above every random draw at every k
    power = atlases[0]
    heads = [r.replace(shift=5.0, shift_low=4.0, shift_high=6.0) if (r.kind, r.mode, r.selection) == ("head", "zero", "top") else r
             for r in power.dose_response]
    assert "zeroed heads are more than random at every k (k = 64: +5.000 [+4.000, +6.000]" in atlas_findings_markdown(
        _atlas(atlases, "power", dose_response=heads))
    # judging–perceiving's ablation falls below both steering directions: less, no longer as much
    judging = next(a for a in atlases if a.persona == "judging_perceiving")
    weaker = judging.equal_damage.model_copy(update={"ablation_shift": [0.1, 0.05, 0.15]})
    text = atlas_findings_markdown(_atlas(atlases, "judging_perceiving", equal_damage=weaker))
    assert "as much (intervals overlapping) on power (+0.43 vs +0.46 / -0.45) and less on" in text and "judging–perceiving (+0.10 vs" in text
    # the seek pole's curve no longer grows with k
    flat = [r.replace(shift=1.0, shift_low=0.9, shift_high=1.1) if (r.kind, r.mode, r.selection, r.system, r.k) == ("neuron", "zero", "top",
            "no prompt", 1) else r for r in power.dose_response]
    text = atlas_findings_markdown(_atlas(atlases, "power", dose_response=flat))
    assert "the shift does not grow steadily with k (k = 1: +1.000 against +0.004" in text


def test_missing_atlas_fields_leave_their_sentences_out(atlases):
    localised = [a.model_copy(update={"dose_response": None, "equal_damage": None, "grids": {}}) for a in atlases]
    text = atlas_findings_markdown(localised)
    assert text.startswith("The localisation of the seven pairs") and "\n\n" not in text.strip()
    assert "Zeroing" not in text and "At the same KL" not in text and "random" not in text
    no_equal_damage = [a.model_copy(update={"equal_damage": None, "grids": {}}) for a in atlases]
    text = atlas_findings_markdown(no_equal_damage)
    assert "At the same KL" not in text and "steering vector fit on" not in text and "layers and maps" not in text
    assert "more than as many random neurons on five of the seven pairs" in text
    alone = atlas_findings_markdown([localised[0]])
    assert alone.startswith("The localisation of the power pair (") and "lowest" not in alone and "recur" not in alone


@pytest.fixture(scope="module")
def composition(sources):
    return sources.composition


def _rows(study, condition, **fields):
    """``study`` with every type row of ``condition`` given ``fields``."""
    rows = [r.replace(**fields) if r.condition == condition else r for r in study.type_rows]
    return study.model_copy(update={"type_rows": rows})


def test_the_composition_paragraph_quotes_the_record(composition):
    text = composition_findings_markdown(composition)
    assert ("the composed type mask moves three of the four axes toward the type's pole (introversion +1.02 [+0.45, +1.59], thinking "
            "+0.47 [+0.00, +0.93], judging +1.02 [+0.50, +1.54]; intuition -0.10 [-0.78, +0.57], interval across 0)") in text
    assert "the composed mask is not distinguishable from random on any axis" in text
    assert "the intersection of the axis masks (61 % of weights removed) moves all four axes" in text
    assert "A type prompt moves only introversion (+0.20 [+0.02, +0.37])." in text
    assert "a positive trend (slope +1.00 [+0.54, +1.46] per unit fraction, no significant reversal)" in text
    assert "not monotone between 0.25 and 0.75" in text and text.endswith("on this model the fraction is not a usable dial.\n")


def test_the_composition_verdicts_follow_the_record(composition):
    moved = composition.model_copy(update={"type_rows": [
        r.replace(shift=0.9, shift_low=0.6, shift_high=1.2) if (r.condition, r.axis) == ("type-mask", "intuition_sensing") else r
        for r in composition.type_rows]})
    assert "the composed type mask moves all four axes toward the type's pole (introversion" in composition_findings_markdown(moved)
    beaten = _rows(composition, "random@type", shift=0.0, shift_low=-0.2, shift_high=0.2)
    assert ("the composed mask is more than random on introversion and judging and not distinguishable from random on intuition and "
            "thinking") in composition_findings_markdown(beaten)
    silent = _rows(composition, "type-prompt", shift=0.0, shift_low=-0.1, shift_high=0.1)
    assert "A type prompt moves no axis detectably (introversion +0.00 [-0.10, +0.10]," in composition_findings_markdown(silent)
    curve = composition.curve
    flat = curve.model_copy(update={"trend": curve.trend.model_copy(update={"slope": Estimate(0.1, -0.2, 0.4, 65)})})
    text = composition_findings_markdown(composition.model_copy(update={"curve": flat}))
    assert "no detectable trend (interval across 0) (slope +0.10 [-0.20, +0.40]" in text and "not a usable dial" in text
    rising = [r.replace(margin=float(i)) if r.fraction is not None else r for i, r in enumerate(curve.rows)]
    monotone = curve.model_copy(update={"rows": rising, "trend": curve.trend.model_copy(update={"monotonic": True, "reversals": 0})})
    text = composition_findings_markdown(composition.model_copy(update={"curve": monotone}))
    assert "(slope +1.00 [+0.54, +1.46] per unit fraction, no significant reversal), the curve is monotone and its intermediate" in text
    assert text.endswith("on this model the fraction works as a dial.\n")


def test_missing_composition_rows_leave_their_sentences_out(composition):
    rows = [r for r in composition.type_rows if r.condition in ("base", "type-mask", "intersection")]
    curve = composition.curve.model_copy(update={"rows": composition.curve.fractions()})
    text = composition_findings_markdown(composition.model_copy(update={"type_rows": rows, "curve": curve}))
    assert "random" not in text and "type prompt" not in text
    assert "moves three of the four axes" in text and "not monotone between 0.25 and 0.75: on this model" in text


@pytest.fixture(scope="module")
def regimes(sources):
    return sources.regimes


def _regime(studies, persona, **fields):
    return [s.model_copy(update=fields) if s.persona == persona else s for s in studies]


def test_the_regimes_paragraph_quotes_the_records(regimes):
    text = regimes_findings_markdown(regimes)
    assert "every pair's persona prompt (from +0.17 [+0.09, +0.26] on power to +0.35 [+0.20, +0.51] on judging–perceiving)" in text
    assert "the Contrastive-Wanda mask pair does on four pairs (power, hallucination, introversion–extraversion and judging–perceiving" in text
    assert "are nearly unrelated: cosines -0.10 to +0.45, |cos| ≤ 0.15 except hallucination's prompt vs mask (+0.34)" in text
    assert "only the steering direction reproduces another regime's whole effect (1.15–1.94× the mask's, 0.12–0.59× the prompt's)" in text
    assert "reproduce at most 0.06 and 0.31 of their own effects, and on hallucination (both) and judging–perceiving (the mask)" in text
    assert text.endswith("A prompt and a mask do not act through one direction at one layer.\n")
    assert "random directions" not in text                     # no file records the random band yet


def test_the_regimes_verdicts_follow_the_records(regimes):
    wealth = next(s for s in regimes if s.persona == "wealth")
    effect = {**wealth.effect, "mask": Estimate(1.0, 0.5, 1.5, 48)}
    text = regimes_findings_markdown(_regime(regimes, "wealth", effect=effect))
    assert "the Contrastive-Wanda mask pair does on five pairs (power, wealth, hallucination" in text
    assert "and not detectably on intuition–sensing (-0.55 [-1.18, +0.09]) and thinking–feeling" in text
    # most pairs' directions aligned: no longer nearly unrelated
    aligned = [s.model_copy(update={"cosine": {pair: [0.9] * len(values) for pair, values in s.cosine.items()}}) for s in regimes]
    text = regimes_findings_markdown(aligned)
    assert "are not unrelated: cosines +0.90 to +0.90" in text
    # a band of random cosines, where recorded, is quoted
    banded = [s.model_copy(update={"random_cosine_band": [-0.08, 0.08]}) for s in regimes]
    assert "95 % of random directions' cosines lie within -0.08 to +0.08" in regimes_findings_markdown(banded)
    # the mask's own injection carries its effect on power: no verdict that a mask does not act through one direction
    power = next(s for s in regimes if s.persona == "power")
    cell = power.transfer["mask"]["mask"]
    transfer = {**power.transfer, "mask": {**power.transfer["mask"], "mask": TransferCell(value=1.0, low=0.8, high=1.2, n=cell.n, ratio=0.86)}}
    text = regimes_findings_markdown(_regime(regimes, "power", transfer=transfer))
    assert "at most 0.06 and 0.86 of their own effects" in text and "do not act through one direction" not in text


def test_an_empty_study_is_an_error():
    with pytest.raises(ValueError, match="at least one atlas"):
        atlas_findings_markdown([])
    with pytest.raises(ValueError, match="at least one regime comparison"):
        regimes_findings_markdown([])
