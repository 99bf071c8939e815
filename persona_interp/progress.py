"""One progress display for every long step: one line per stage with its count and time left.

A stage opened while another is active does not open a line of its own: it updates its outermost stage's
line (``mask search (contrastive_wanda) 3/8 › A/B scoring 1/2 · 12 s, ~20 s left``). On a terminal the line
is rewritten in place; when stderr is not a terminal each outermost stage writes one log line when it starts
and one when it ends (with its seconds); with ``progress=False`` nothing is written, for it or anything
nested in it. Every outermost stage's wall time (and the model forwards run inside it, counted by
[`counting_forwards`][persona_interp.progress.counting_forwards]) is recorded, for a report or a benchmark to print
each stage's share ([`stage_times`][persona_interp.progress.stage_times]).

Examples:
    >>> reset_stage_times()
    >>> with stage("A/B scoring", total=2) as s:
    ...     for batch in ([0, 1], [2, 3]):
    ...         s.update()
    >>> [(r.name, r.count, r.total) for r in stage_times()]      # and r.seconds, its wall time
    [('A/B scoring', 2, 2)]
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

REFRESH_S = 0.2          # least time between two rewrites of a terminal line


def peak_memory_mb() -> float:
    """The process's peak resident memory so far, MB (``ru_maxrss``; 0 where the platform has no ``resource``).

    Examples:
        >>> peak_memory_mb() > 0
        True
    """
    try:
        import resource
    except ImportError:                              # Windows
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


@dataclass
class StageRecord:
    """A finished outermost stage: its name, the scope it ran in (e.g. the persona), its wall time, the steps
    done of ``total``, the model forwards run inside it (``forwards`` calls of the model, ``rows`` sequences,
    ``tokens`` positions, padding included), the process's peak resident memory at its end (``peak_mb``) and how
    much the stage raised that peak (``peak_rise_mb``: 0 when an earlier stage had held more)."""

    name: str
    seconds: float
    count: int
    total: int | None
    scope: str = ""
    forwards: int = 0
    peak_mb: float = 0.0
    peak_rise_mb: float = 0.0
    rows: int = 0
    tokens: int = 0


@dataclass
class Stage:
    """An open stage; [`update`][persona_interp.progress.Stage.update] advances its count. Made by
    [`stage`][persona_interp.progress.stage], not directly."""

    name: str
    total: int | None
    show: bool
    started: float = field(default_factory=time.perf_counter)
    count: int = 0
    forwards: int = 0
    rows: int = 0
    tokens: int = 0
    peak_at_start: float = field(default_factory=peak_memory_mb)

    def update(self, n: int = 1) -> None:
        """Add ``n`` finished steps and refresh the line of the outermost stage (at most every ``REFRESH_S``)."""
        self.count += n
        _render()

    def fraction(self, child: float = 0.0) -> float | None:
        """Share of the stage done, counting ``child`` as the done share of the step in progress."""
        if not self.total:
            return None
        return min(1.0, (self.count + child) / self.total)

    def text(self) -> str:
        """``name count/total`` (``name count`` when the total is unknown)."""
        return f"{self.name} {self.count}/{self.total}" if self.total else f"{self.name} {self.count}"


_STACK: list[Stage] = []
_SCOPES: list[str] = []
_RECORDS: list[StageRecord] = []
_LAST_DRAWN = [0.0]


def _is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _line() -> str:
    """The outermost stage's line: each open stage's count, the elapsed time and the time left (from the
    nested stages' shares done)."""
    shown = [s for s in _STACK if s.show]
    done = 0.0
    for s in reversed(_STACK):
        share = s.fraction(done)
        done = share if share is not None else 0.0
    elapsed = time.perf_counter() - _STACK[0].started
    left = f", ~{elapsed / done * (1 - done):.0f} s left" if 0 < done < 1 else ""
    prefix = f"{_SCOPES[-1]}: " if _SCOPES else ""
    return prefix + " › ".join(s.text() for s in shown) + f" · {elapsed:.0f} s{left}"


def _render(force: bool = False, end: str = "") -> None:
    """Rewrite the terminal line (at most every ``REFRESH_S`` unless ``force``), ending it with ``end``."""
    if not _STACK or not _STACK[0].show or not _is_terminal():
        return
    now = time.perf_counter()
    if not force and now - _LAST_DRAWN[0] < REFRESH_S:
        return
    _LAST_DRAWN[0] = now
    sys.stderr.write("\r" + _line() + "\x1b[K" + end)
    sys.stderr.flush()


@contextmanager
def stage(name: str, total: int | None = None, *, progress: bool = True) -> Iterator[Stage]:
    """A stage of ``total`` steps (unknown when None). Outermost: its own line (or log lines when stderr is
    not a terminal) and a record in [`stage_times`][persona_interp.progress.stage_times]. Nested: shown on the
    outermost stage's line after ``›``. ``progress=False`` silences it and everything nested in it.

    Examples:
        >>> with stage("evaluation", total=3) as s:
        ...     for condition in ("base", "seek", "reject"):
        ...         with stage("A/B scoring", total=2) as inner:   # updates the "evaluation" line
        ...             inner.update(2)
        ...         s.update()
        >>> s.count
        3
    """
    outer = not _STACK
    s = Stage(name, total, show=progress and (outer or _STACK[-1].show))   # silent under a silent parent
    _STACK.append(s)
    label = _SCOPES[-1] if _SCOPES else ""
    prefix = f"{label}: " if label else ""
    if outer and s.show and not _is_terminal():
        steps = f" ({total} steps)" if total else ""
        print(f"{prefix}{name}{steps} …", file=sys.stderr, flush=True)
    _render(force=outer)
    try:
        yield s
    finally:
        if outer:
            seconds = time.perf_counter() - s.started
            peak = peak_memory_mb()
            _RECORDS.append(StageRecord(name, seconds, s.count, total, label, s.forwards, peak, peak - s.peak_at_start,
                                        s.rows, s.tokens))
            if s.show and _is_terminal():
                _render(force=True, end="\n")
            elif s.show:
                print(f"{prefix}{s.text()} done in {seconds:.1f} s", file=sys.stderr, flush=True)
        del _STACK[_STACK.index(s):]                 # with any stage a suspended generator left open inside it


@contextmanager
def scope(label: str) -> Iterator[None]:
    """Prefix the lines and records of the stages opened inside with ``label`` (e.g. the persona).

    Examples:
        >>> reset_stage_times()
        >>> with scope("power"), stage("signatures", total=2, progress=False):
        ...     pass
        >>> stage_times()[0].scope
        'power'
    """
    _SCOPES.append(label)
    try:
        yield
    finally:
        _SCOPES.pop()


def add_forwards(n: int = 1, rows: int = 0, tokens: int = 0) -> None:
    """Attribute ``n`` model forwards of ``rows`` sequences and ``tokens`` positions to the outermost open stage
    (none open: nothing is counted); [`counting_forwards`][persona_interp.progress.counting_forwards] calls it."""
    if _STACK:
        _STACK[0].forwards += n
        _STACK[0].rows += rows
        _STACK[0].tokens += tokens


@contextmanager
def counting_forwards(model: Any) -> Iterator[None]:
    """Inside, every call of ``model`` (its top module: a scoring or damage batch, a signature batch stopped after its
    last hook, a training step) counts toward the outermost open stage: one forward, its batch's rows and positions.

    Examples:
        >>> reset_stage_times()
        >>> with counting_forwards(model), stage("logits", progress=False):
        ...     logits = model(tokens)
        >>> record = stage_times()[0]; (record.forwards, record.rows, record.tokens) == (1, len(tokens), tokens.numel())
        True
    """
    def count(module: Any, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else kwargs.get("input_ids", kwargs.get("input", next(iter(kwargs.values()), None)))
        shape = tuple(getattr(first, "shape", ()))
        rows = shape[0] if len(shape) > 1 else 1
        add_forwards(1, rows, rows * shape[1] if len(shape) > 1 else int(shape[0]) if shape else 0)

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def stage_times() -> list[StageRecord]:
    """The outermost stages finished since the last [`reset_stage_times`][persona_interp.progress.reset_stage_times],
    in order."""
    return list(_RECORDS)


def reset_stage_times() -> None:
    """Forget the recorded stages."""
    _RECORDS.clear()
