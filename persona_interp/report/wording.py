"""How the generated pages word what they quote: personas, lists, small counts and ranges of numbers, shared by the
run's findings ([`findings`][persona_interp.report.findings]) and the studies' ([`study_findings`][persona_interp.report.study_findings]).

Examples:
    >>> persona_list(["power", "judging_perceiving"]), count(3), span([0.1234, 0.5], 100, 0)
    ('power and judging–perceiving', 'three', '12–50')
"""
from __future__ import annotations

from typing import Sequence

from persona_interp.data.personas import MBTI_AXES

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def persona_list(personas: Sequence[str], conjunction: str = "and") -> str:
    """Personas as the findings name them: ``introversion–extraversion``, the four MBTI axes together when all are
    there, joined with commas and ``conjunction``.

    Examples:
        >>> persona_list(["power", "hallucination", "judging_perceiving"])
        'power, hallucination and judging–perceiving'
        >>> persona_list(["wealth", *MBTI_AXES], "or")
        'wealth or the four MBTI axes'
    """
    names = [p for p in personas if not set(MBTI_AXES) <= set(personas) or p not in MBTI_AXES]
    words = [p.replace("_", "–") for p in names] + (["the four MBTI axes"] if set(MBTI_AXES) <= set(personas) else [])
    return join(words, conjunction)


def join(words: Sequence[str], conjunction: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``.

    Examples:
        >>> join(["a"]), join(["a", "b"], "or"), join(["a", "b", "c"])
        ('a', 'a or b', 'a, b and c')
    """
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def count(n: int) -> str:
    """A small count in words (``three``), a larger one in digits."""
    return NUMBERS.get(n, str(n))


def span(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """The range of ``values`` times ``scale`` (``0.4–1.1``), one number where both ends print alike."""
    low, high = min(values) * scale, max(values) * scale
    return f"{low:.{digits}f}–{high:.{digits}f}" if f"{low:.{digits}f}" != f"{high:.{digits}f}" else f"{low:.{digits}f}"


def signed_span(values: Sequence[float], digits: int = 2) -> str:
    """The range of ``values`` with signs (``+0.64 to +1.19``), one number where both ends print alike."""
    low, high = min(values), max(values)
    return f"{low:+.{digits}f}" if f"{low:+.{digits}f}" == f"{high:+.{digits}f}" else f"{low:+.{digits}f} to {high:+.{digits}f}"
