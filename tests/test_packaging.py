"""A non-editable install ships the package data: every persona and prompt loads from the wheel alone."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from persona_interp.data.personas import benchmarks_dir

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json, sys
import persona_interp as pi
from persona_interp.data.personas import DATA_DIR, persona_prompts
assert pi.__file__.startswith(sys.argv[1]), pi.__file__            # the installed copy, not the checkout
for name in pi.persona_names():
    for split in ("train", "test"):
        assert len(pi.load_persona(name, split)) > 0, (name, split)
prompts = json.loads((DATA_DIR / "prompts.json").read_text())
for name in (k for k in prompts if not k.startswith("_")):
    assert persona_prompts(name, "seek") and persona_prompts(name, "reject"), name
assert len(pi.load_neutral_texts()) >= 24
print("ok", len(pi.persona_names()))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout (``pip wheel``, no build isolation: nothing downloaded; the
    copy keeps setuptools' build folders out of the checkout), unpacked."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(ROOT / "persona_interp", source / "persona_interp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    wheel = next(out.glob("persona_interp-*.whl"))
    target = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_the_wheel_holds_every_subpackage_and_the_data_sets(installed):
    files = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    sets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "persona_interp" / "data" / "sets").rglob("*") if p.is_file()}
    assert sets and sets <= files
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "persona_interp").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= files


def test_an_installed_copy_loads_every_persona_and_prompt(installed, tmp_path):
    if not benchmarks_dir().is_dir():
        pytest.skip("../shared/benchmarks/ai_persona is not beside this checkout")
    env = {**os.environ, "PYTHONPATH": str(installed), "PERSONA_INTERP_BENCHMARKS": str(benchmarks_dir())}
    done = subprocess.run([sys.executable, "-c", CHECK, str(installed)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
