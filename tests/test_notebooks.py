"""The notebooks, read as files (fast tier): each states its claim first, opens with its model cell, ends with
"What the small model shows", imports persona_interp, keeps method code in the library (no function or class
defined in a code cell), and carries the outputs of one clean full-size run or none.

Their CI run, top to bottom in SMALL mode, is tests/test_notebooks_tiny.py (a tiny random model saved to a folder);
the full-size execution on the embedded model (`jupyter nbconvert --execute --inplace`) is what commits outputs.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_ai_persona_table.ipynb",
    "03_mbti_subnetworks.ipynb",
    "04_where_subnetworks_sit.ipynb",
    "05_opposing_mask_overlap.ipynb",
    "06_causal_vs_steering.ipynb",
    "07_composition_and_regimes.ipynb",
    "08_damage_aware_masks.ipynb",
]
DEFINITION = re.compile(r"^(async\s+def|def|class)\s", re.MULTILINE)
IMPORT = re.compile(r"^\s*(import persona_interp\b|from persona_interp(\.\w+)* import )", re.MULTILINE)


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_structure(name):
    nb = read(name)
    nbformat.validate(nb)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("#"), "first cell: a markdown title"
    assert "claim" in first.source.lower(), "the first cell states the claim the notebook tests"
    assert last.cell_type == "markdown" and "What the small model shows" in last.source
    params = code_cells(nb)[0]
    assert 'SMALL = os.environ.get("PERSONA_INTERP_NOTEBOOK_SMALL") == "1"' in params, "the parameters cell comes first"
    for line in ('MODEL = os.environ.get("PERSONA_INTERP_MODEL") or None', "DEVICE = ", "DTYPE = ", "# Re-run time at full size"):
        assert line in params, f"the model cell comes first and sets {line.split('=')[0].strip()}"
    for source in code_cells(nb):
        assert "load_model()" not in source and not re.search(r"\breproduce\((?!\))(?![^)]*model=)", source), \
            f"every model load and reproduce() uses the model cell's MODEL:\n{source}"
    for source in code_cells(nb):
        assert not DEFINITION.search(source), f"method code belongs in the library, not in a notebook cell:\n{source}"
    assert any(IMPORT.search(source) for source in code_cells(nb)), "the notebook must use persona_interp"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_come_from_one_full_size_run(name):
    """A committed notebook carries either no outputs (its full-size inputs are not there yet) or the
    outputs of one clean full-size run: every code cell executed once, in order, without an error."""
    nb = read(name)
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if all(not cell.get("outputs") and cell.get("execution_count") is None for cell in cells):
        return
    added = [cell for cell in cells if cell.get("execution_count") is None and not cell.get("outputs")]
    if added:        # code cells added since the run: allowed only where the notebook says so, until it is re-executed
        assert nb.metadata.get("persona_interp", {}).get("outputs"), \
            f"{name}: {len(added)} code cells without outputs and no note in metadata.persona_interp.outputs"
        cells = [cell for cell in cells if cell not in added]
    assert [cell.get("execution_count") for cell in cells] == list(range(1, len(cells) + 1)), \
        f"{name}: outputs of a partial or out-of-order run"
    errors = [o for cell in cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: committed with an error output: {errors[0].get('ename')}"
    mode = "".join(o.get("text", "") for o in cells[0].get("outputs", []))       # nbformat joins stream text
    assert "mode: full size" in mode, f"{name}: committed outputs come from small mode, not the full-size run"
