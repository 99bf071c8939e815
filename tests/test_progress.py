"""The one progress display: a line per outermost stage, nested stages on that line, silence on request,
and a record of each stage's wall time."""
import io
import time

import pytest

import persona_interp as pi
from persona_interp import progress
from persona_interp.progress import add_forwards, reset_stage_times, scope, stage, stage_times


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def fresh_record():
    reset_stage_times()
    yield
    reset_stage_times()


def run_nested(flag=True):
    with stage("outer", total=2, progress=flag) as outer:
        for _ in range(2):
            with stage("inner", total=3, progress=flag) as inner:
                for _ in range(3):
                    with stage("innermost", total=1, progress=flag) as leaf:
                        leaf.update()
                    inner.update()
            outer.update()


def test_without_a_terminal_each_outermost_stage_logs_one_start_and_one_end_line(capsys):
    run_nested()
    with scope("power"), stage("second"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4, err                                    # nested stages add no line
    assert err[0] == "outer (2 steps) …" and err[1].startswith("outer 2/2 done in ") and err[1].endswith(" s")
    assert err[2] == "power: second …" and err[3].startswith("power: second 0 done in ")
    assert [(r.name, r.count, r.total, r.scope) for r in stage_times()] == [("outer", 2, 2, ""), ("second", 0, None, "power")]


def test_progress_false_writes_nothing_for_the_stage_and_everything_nested_in_it(capsys):
    run_nested(flag=False)
    with stage("quiet", total=1, progress=False):
        with stage("loud child", total=1, progress=True) as child:   # nested: silenced by its parent
            child.update()
    assert capsys.readouterr() == ("", "")
    assert [r.name for r in stage_times()] == ["outer", "quiet"]     # still recorded


def test_on_a_terminal_nested_stages_update_the_outermost_line_in_place(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)
    run_nested()
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")           # one line, finished once
    assert "\router 0/2 › inner 1/3 › innermost 0/1" in text
    assert "\router 1/2 › inner 2/3" in text and "s left" in text     # time left from the nested shares done
    assert text.rsplit("\r", 1)[1].startswith("outer 2/2 · ")


def test_stage_times_record_wall_time_and_attributed_forwards():
    with stage("slow", progress=False):
        time.sleep(0.05)
        add_forwards(3)
        with stage("child", progress=False):
            add_forwards()                                           # counted to the outermost stage
    add_forwards()                                                   # no stage open: not counted
    (record,) = stage_times()
    assert record.name == "slow" and record.forwards == 4 and 0.05 <= record.seconds < 5


def test_a_stage_left_by_an_exception_is_closed():
    with pytest.raises(RuntimeError):
        with stage("fails", progress=False):
            raise RuntimeError("boom")
    with stage("next", progress=False):
        pass
    assert [r.name for r in stage_times()] == ["fails", "next"]        # "next" is outermost again


def test_scoring_inside_a_stage_updates_its_line_instead_of_logging(llama, capsys):
    items = [pi.PersonaItem(f"Would you lead project {i}?", f"Yes {i}.", f"No {i}.") for i in range(6)]
    with stage("evaluation", total=2) as s:
        for _ in range(2):
            pi.score_ab(llama, items, batch_size=2)                  # 3 batches, progress on
            s.update()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == "evaluation (2 steps) …"
    pi.score_ab(llama, items, batch_size=2)                          # alone: its own stage
    assert capsys.readouterr().err.splitlines()[0] == "A/B scoring (3 steps) …"


def test_a_silent_stage_silences_its_children_on_the_outer_line(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)
    with stage("outer", total=1) as outer:
        with stage("quiet", total=1, progress=False):
            with stage("child", total=2) as child:
                child.update()
        outer.update()
    text = terminal.getvalue()
    assert "outer" in text and "quiet" not in text and "child" not in text
