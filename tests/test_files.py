"""Outputs are written to a temporary name and renamed on success: an interrupted writer (a real process,
stopped by Ctrl-C or killed) leaves the previous file whole."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even when the runner ignores Ctrl-C
from persona_interp.data.files import atomic
with atomic(sys.argv[1]) as tmp:
    tmp.write_text("new, half written")
    print("writing", flush=True)
    time.sleep(60)
    tmp.write_text("new, complete")
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_writer_leaves_the_old_file_whole(tmp_path, how):
    target = tmp_path / "report.md"
    target.write_text("old report")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"         # inside the block, the new text half written
        proc.send_signal(how)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert target.read_text() == "old report"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report.md"]
    if how == signal.SIGINT:                                        # Ctrl-C runs the cleanup: nothing left
        assert leftovers == []
    else:                                                           # a kill cannot clean up: a hidden partial file
        assert all(name.startswith(".report.md.partial-") for name in leftovers)


def test_a_finished_write_replaces_the_file(tmp_path):
    from persona_interp.data.files import write_text

    target = tmp_path / "report.md"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_saved_files_get_the_mode_of_a_new_file(tmp_path):
    import torch

    from persona_interp.masks.mask import Mask

    old = os.umask(0o022)
    try:
        mask = Mask({"blocks.0.mlp.down": torch.ones(2, 3, dtype=torch.bool)}, {"method": "hand"})
        mask.save(tmp_path / "m.safetensors")                   # safetensors itself creates files 0600
        assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        mask.save(tmp_path / "private.safetensors")
        assert (tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
