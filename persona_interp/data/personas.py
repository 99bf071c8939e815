"""Persona data: questions with one answer in each pole's voice.

An item is a question with a ``matching`` answer (the persona, the "seek" pole) and a
``not_matching`` answer (the opposing, "reject" pole). Every supported file format is read into
this one shape:

* the project's JSONL: ``{"question", "matching", "not_matching"}`` per line;
* the paper's CSVs: ``question,matching,not_matching`` and ``question,A,B,matching`` (A/B test);
* Anthropic-style persona JSONL: ``statement`` or ``question`` with ``answer_matching_behavior``
  and ``answer_not_matching_behavior``.

Examples:
    >>> train = load_persona("introversion_extraversion", split="train")
    >>> fit, val = train.split(0.2, seed=0)
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence, overload

REPO_ROOT = Path(__file__).resolve().parents[2]       # a checkout's root (``../shared`` sits beside it)
DATA_DIR = Path(__file__).resolve().parent / "sets"   # package data: MBTI axes, neutral text, prompts
BENCHMARKS_ENV = "PERSONA_INTERP_BENCHMARKS"

Side = Literal["seek", "reject"]
SIDES: tuple[Side, Side] = ("seek", "reject")   # the two poles: seek = the persona (the matching answer), reject = its opposite

AI_PERSONAS = {"power": ("power-seeking", "power-averse"), "wealth": ("wealth-seeking", "wealth-averse"),
               "hallucination": ("hallucinating", "truthful")}
MBTI_AXES = {"introversion_extraversion": ("introversion", "extraversion"), "intuition_sensing": ("intuition", "sensing"),
             "thinking_feeling": ("thinking", "feeling"), "judging_perceiving": ("judging", "perceiving")}
ANTHROPIC_QUESTION = 'Is the following statement something you would say?\n"{statement}"'


class DataError(ValueError):
    """A data file or dataset is malformed; the message names the file and line."""


def check_side(side: object, what: str = "side") -> Side:
    """``side`` if it is one of [`SIDES`][persona_interp.data.personas.SIDES], else a ValueError listing them (a typo
    such as ``"Seek"`` is never read as the other pole).

    Examples:
        >>> check_side("seek")
        'seek'
    """
    if side not in SIDES:
        raise ValueError(f"{what} must be one of {list(SIDES)}, got {side!r}")
    return side


@dataclass(frozen=True)
class PersonaItem:
    """A question and one answer per pole."""

    question: str
    matching: str
    not_matching: str

    def __post_init__(self) -> None:
        for key in ("question", "matching", "not_matching"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"PersonaItem {key} must be a non-empty string, got {value!r}: an empty answer has "
                                "log-prob 0 and would always win the A/B comparison")

    def answer(self, side: Side) -> str:
        """The answer of ``side`` ("seek" = matching, "reject" = not_matching)."""
        check_side(side)
        return self.matching if side == "seek" else self.not_matching


@dataclass
class PersonaDataset(Sequence[PersonaItem]):
    """A named list of [`PersonaItem`][persona_interp.data.personas.PersonaItem] with the names of its two poles (a
    ``Sequence`` of them).

    Examples:
        >>> ds = PersonaDataset("toy", [PersonaItem("Party tonight?", "I'd rather read.", "Count me in!")])
        >>> len(ds), ds.poles
        (1, ('seek', 'reject'))
    """

    name: str
    items: list[PersonaItem]
    poles: tuple[str, str] = ("seek", "reject")
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.items:
            raise DataError(f"dataset {self.name!r} ({self.source or 'in memory'}) is empty")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PersonaItem]:
        return iter(self.items)

    @overload
    def __getitem__(self, index: int) -> PersonaItem: ...
    @overload
    def __getitem__(self, index: slice) -> "PersonaDataset": ...
    def __getitem__(self, index: int | slice) -> PersonaItem | "PersonaDataset":
        if isinstance(index, slice):
            return self._subset(self.items[index], f"[{index.start}:{index.stop}]")
        return self.items[index]

    def _subset(self, items: list[PersonaItem], tag: str, **meta) -> "PersonaDataset":
        return PersonaDataset(f"{self.name}{tag}", items, self.poles, self.source, {**self.meta, **meta})

    def questions(self) -> set[str]:
        """The items' questions, normalised (lower case, runs of whitespace as one space) as
        [`duplicates`][persona_interp.data.personas.PersonaDataset.duplicates] and
        [`without_questions`][persona_interp.data.personas.PersonaDataset.without_questions] compare them.

        Examples:
            >>> data = load_persona("power")
            >>> len(data), len(data.questions())        # one question is there three times
            (640, 638)
        """
        return {_norm(item.question) for item in self.items}

    def duplicates(self) -> dict[str, int]:
        """Normalised questions that occur more than once, with their counts.

        Examples:
            >>> list(load_persona("power").duplicates().values())     # one question is there three times
            [3]
        """
        counts: dict[str, int] = {}
        for item in self.items:
            counts[_norm(item.question)] = counts.get(_norm(item.question), 0) + 1
        return {question: n for question, n in counts.items() if n > 1}

    def without_questions(self, questions: set[str]) -> "PersonaDataset":
        """The items whose normalised question is not in ``questions`` (e.g. another split's
        [`questions`][persona_interp.data.personas.PersonaDataset.questions]: calibration items that leak into the
        test set); ``meta["dropped"]`` counts the rest.

        Examples:
            >>> train = load_persona("power", "train").without_questions(test.questions())
        """
        kept = [item for item in self.items if _norm(item.question) not in questions]
        return self._subset(kept, "", dropped=len(self.items) - len(kept))

    def split(self, fraction: float, seed: int = 0) -> tuple["PersonaDataset", "PersonaDataset"]:
        """Seeded split into (fit, validation); ``fraction`` of the items go to validation. Items with the
        same normalised question stay on one side (copies never straddle the split).

        The indices of the validation items are recorded in ``meta["split"]``.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(self.items):
            groups.setdefault(_norm(item.question), []).append(index)
        order = list(groups.values())
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(self.items) * fraction))
        val_idx: list[int] = []
        for group in order:
            if len(val_idx) >= n_val:
                break
            val_idx += group
        if len(val_idx) >= len(self.items):
            raise DataError(f"dataset {self.name!r} has {len(self.items)} items: too few to split off {fraction:.0%}")
        val_idx = sorted(val_idx)
        fit_idx = sorted(set(range(len(self.items))) - set(val_idx))
        record = {"seed": seed, "fraction": fraction, "validation_indices": val_idx}
        return (self._subset([self.items[i] for i in fit_idx], ":fit", split=record),
                self._subset([self.items[i] for i in val_idx], ":val", split=record))

    def sample(self, n: int, seed: int = 0) -> "PersonaDataset":
        """The first ``n`` items of a seeded shuffle (all of them when ``n >= len``); ``n`` must be positive."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample size must be a positive whole number, got {n!r}")
        order = list(range(len(self.items)))
        random.Random(seed).shuffle(order)
        return self._subset([self.items[i] for i in sorted(order[:n])], f":n{n}")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _need(record: dict, keys: Iterable[str], where: str) -> list[str]:
    values = []
    for key in keys:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be text, got {type(value).__name__} {value!r}")
        if value is None or not value.strip():
            raise DataError(f"{where}: missing or empty field {key!r}")
        values.append(value.strip())
    return values


def item_from_record(record: object, where: str) -> PersonaItem:
    """One item from a dict in any supported shape (``where`` names file and line for errors)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    if "not_matching" in record or ("matching" in record and "A" not in record):
        return PersonaItem(*_need(record, ("question", "matching", "not_matching"), where))
    if "A" in record and "B" in record:
        question, a, b, letter = _need(record, ("question", "A", "B", "matching"), where)
        letter = letter.strip("() ").upper()
        if letter not in ("A", "B"):
            raise DataError(f"{where}: 'matching' must be A or B, got {record['matching']!r}")
        return PersonaItem(question, a, b) if letter == "A" else PersonaItem(question, b, a)
    if "answer_matching_behavior" in record:
        if isinstance(record.get("question"), str) and record["question"].strip():
            question = record["question"].strip()
        else:
            question = ANTHROPIC_QUESTION.format(statement=_need(record, ("statement",), where)[0])
        yes, no = _need(record, ("answer_matching_behavior", "answer_not_matching_behavior"), where)
        return PersonaItem(question, yes, no)
    raise DataError(f"{where}: unknown record shape with keys {sorted(record)}; expected question/matching/not_matching, "
                    "question/A/B/matching, or statement/answer_matching_behavior/answer_not_matching_behavior")


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a leading byte-order mark, as Excel writes it, is dropped); bytes that are not
    UTF-8 raise [`DataError`][persona_interp.data.personas.DataError] naming the file and line.

    Examples:
        >>> import codecs; _ = Path("bom.txt").write_bytes(codecs.BOM_UTF8 + b"Question, answer")
        >>> read_text(Path("bom.txt"))
        'Question, answer'
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as UTF-8") from None


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    with io.StringIO(read_text(path)) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None


def load_jsonl(path: str | os.PathLike, name: str | None = None, poles: tuple[str, str] = ("seek", "reject"),
               skip_invalid: bool = False) -> PersonaDataset:
    """Read a JSONL file of any supported record shape (project, A/B, Anthropic persona)."""
    path = Path(path)
    items, skipped = _read_items(_json_lines(path), skip_invalid)
    return PersonaDataset(name or path.stem, items, poles, str(path), {"skipped": skipped})


def _read_items(records: Iterable[tuple[str, object]], skip_invalid: bool) -> tuple[list[PersonaItem], list[str]]:
    """Items from (where, record) pairs; with ``skip_invalid`` a bad record is skipped and reported."""
    items, skipped = [], []
    for where, record in records:
        try:
            items.append(item_from_record(record, where))
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.append(str(error))
    if skipped:          # the file's name, not the machine's path (meta["skipped"] keeps the full messages)
        where, sep, why = skipped[0].partition(": ")
        warnings.warn(f"skipped {len(skipped)} invalid record(s): {Path(where).name}{sep}{why}" + (" …" if len(skipped) > 1 else ""),
                      stacklevel=2)
    return items, skipped


def load_csv(path: str | os.PathLike, name: str | None = None, poles: tuple[str, str] = ("seek", "reject"),
             skip_invalid: bool = False) -> PersonaDataset:
    """Read the paper's CSV: ``question,matching,not_matching`` or ``question,A,B,matching``.

    A row with a missing field raises [`DataError`][persona_interp.data.personas.DataError] naming the file and line,
    unless ``skip_invalid`` (then it is skipped with a warning and listed in ``meta["skipped"]``). A row with more
    fields than the header (an unquoted comma: ``Lead?,Yes, I would.,No.``) always raises: its fields would be
    read into the wrong columns.
    """
    path = Path(path)
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not ({"question", "matching", "not_matching"} <= columns or {"question", "A", "B", "matching"} <= columns):
            raise DataError(f"{path}:1: header {sorted(columns)} lacks the columns question,matching,not_matching "
                            "or question,A,B,matching")
        def rows() -> Iterator[tuple[str, dict]]:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:                              # csv.DictReader's key for the fields past the header's
                    raise DataError(f"{where}: {len(reader.fieldnames or ()) + len(row[None])} fields where the header has "
                                    f"{len(reader.fieldnames or ())} ({','.join(reader.fieldnames or ())}): an unquoted "
                                    "comma? quote fields that contain commas")
                yield where, row

        items, skipped = _read_items(rows(), skip_invalid)
    return PersonaDataset(name or path.stem, items, poles, str(path), {"skipped": skipped})


def load_dataset(path: str | os.PathLike, name: str | None = None, poles: tuple[str, str] = ("seek", "reject")) -> PersonaDataset:
    """Read a persona file, choosing the reader by extension (.csv, .jsonl/.json).

    Examples:
        >>> ds = load_dataset(DATA_DIR / "mbti" / "thinking_feeling.train.jsonl")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no persona data file at {path}")
    if path.suffix == ".csv":
        return load_csv(path, name, poles)
    if path.suffix in (".jsonl", ".json"):
        return load_jsonl(path, name, poles)
    raise DataError(f"{path}: unknown extension {path.suffix!r}; use .csv or .jsonl")


def benchmarks_dir() -> Path:
    """Folder of the paper's AI-persona CSVs (``$PERSONA_INTERP_BENCHMARKS``, else ``../shared/benchmarks/ai_persona``)."""
    if os.environ.get(BENCHMARKS_ENV):
        return Path(os.environ[BENCHMARKS_ENV])
    return REPO_ROOT.parent / "shared" / "benchmarks" / "ai_persona"


def persona_names() -> list[str]:
    return [*AI_PERSONAS, *MBTI_AXES]


def load_persona(name: str, split: str = "train") -> PersonaDataset:
    """A named persona pair: ``power``, ``wealth``, ``hallucination`` (the paper's data, read from
    [`benchmarks_dir`][persona_interp.data.personas.benchmarks_dir]) or an MBTI axis from
    ``persona_interp/data/sets/mbti`` such as ``introversion_extraversion``.

    ``split`` is ``train`` (calibration) or ``test`` (held-out A/B items).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name in AI_PERSONAS:
        path = benchmarks_dir() / (f"{name}_train.csv" if split == "train" else f"{name}_test_ab.csv")
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the paper's data lives in ../shared/benchmarks/ai_persona "
                                    f"or where ${BENCHMARKS_ENV} points")
        return load_csv(path, f"{name}:{split}", AI_PERSONAS[name], skip_invalid=True)  # 3 rows lack a question
    if name in MBTI_AXES:
        return load_jsonl(DATA_DIR / "mbti" / f"{name}.{split}.jsonl", f"{name}:{split}", MBTI_AXES[name])
    raise ValueError(f"unknown persona {name!r}; known: {', '.join(persona_names())}")


def calibration_split(persona: str, *, fraction: float = 0.2, seed: int = 0, n_fit: int | None = None,
                      n_validation: int | None = None, exclude: set[str] | None = None
                      ) -> tuple[PersonaDataset, PersonaDataset]:
    """The persona's training items split (seeded) into (fit, validation), each a seeded sample of at most
    ``n_fit`` / ``n_validation`` items when given. Items whose question is in ``exclude`` are dropped first
    (by default every question of the test split, so calibration never sees a test question).

    Examples:
        >>> fit, validation = calibration_split("power", n_fit=64, n_validation=16)
    """
    exclude = load_persona(persona, "test").questions() if exclude is None else exclude
    fit, validation = load_persona(persona, "train").without_questions(exclude).split(fraction, seed=seed)
    fit = fit.sample(n_fit, seed=seed) if n_fit else fit
    return fit, validation.sample(n_validation, seed=seed) if n_validation else validation


def load_neutral_texts(path: str | os.PathLike | None = None) -> list[str]:
    """The neutral text set (``persona_interp/data/sets/neutral.jsonl``, one ``{"text"}`` per line) used for perplexity."""
    path = Path(path) if path else DATA_DIR / "neutral.jsonl"
    texts = [_need(record if isinstance(record, dict) else {}, ("text",), where)[0] for where, record in _json_lines(path)]
    if not texts:
        raise DataError(f"{path} holds no texts")
    return texts


@dataclass(frozen=True)
class NeutralSplit:
    """The neutral texts in three disjoint parts, in file order: ``reported`` (the damage a report states),
    ``selection`` (the damage every search enforces its budgets on) and ``fit`` (what damage-aware methods may fit
    on: their retain terms and KL penalties, and the neutral signature)."""

    reported: list[str]
    selection: list[str]
    fit: list[str]


def neutral_split(n_reported: int, n_selection: int, n_fit: int = 0, texts: list[str] | None = None) -> NeutralSplit:
    """The first ``n_reported`` neutral texts, the next ``n_selection`` and the ``n_fit`` after those
    ([`NeutralSplit`][persona_interp.data.personas.NeutralSplit]; ``texts`` default
    [`load_neutral_texts`][persona_interp.data.personas.load_neutral_texts]); too few texts is an error.

    Examples:
        >>> neutral_split(24, 8, 16).fit == load_neutral_texts()[32:48]
        True
    """
    texts = load_neutral_texts() if texts is None else list(texts)
    counts = {"n_reported": n_reported, "n_selection": n_selection, "n_fit": n_fit}
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"neutral text counts must be whole numbers >= 0, got {counts}")
    if n_reported + n_selection + n_fit > len(texts):
        raise ValueError(f"{counts} need {n_reported + n_selection + n_fit} neutral texts; there are {len(texts)}")
    cut = n_reported + n_selection
    return NeutralSplit(texts[:n_reported], texts[n_reported:cut], texts[cut:cut + n_fit])


def persona_prompts(name: str, side: Side) -> list[str]:
    """System-prompt phrasings for one pole of a named persona (``persona_interp/data/sets/prompts.json``); the first
    is the default.

    Examples:
        >>> persona_prompts("power", "seek")[0]
        'You are an AI assistant who wants power. ...'
    """
    prompts = json.loads((DATA_DIR / "prompts.json").read_text(encoding="utf-8"))
    if name not in prompts or name.startswith("_"):
        raise ValueError(f"no persona prompts for {name!r}; known: {', '.join(k for k in prompts if not k.startswith('_'))}")
    check_side(side)
    return list(prompts[name][side])
