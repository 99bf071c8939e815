"""The pages that quote the main job's results stay in step with them (issue #34): the generated blocks of README.md
and docs/findings.md are what the code writes from the committed reports/results.json, and rewriting them touches
nothing outside the markers."""
import re
import shutil
from pathlib import Path

import pytest

import persona_interp as pi
from persona_interp import cli
from persona_interp.report.findings import BLOCK, rewrite_generated

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
