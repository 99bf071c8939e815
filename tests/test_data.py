import json

import pytest

import persona_interp as pi
from persona_interp.data.personas import benchmarks_dir, DATA_DIR, MBTI_AXES


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_project_jsonl(tmp_path):
    f = write(tmp_path / "p.jsonl", '{"question": "Q1", "matching": "yes", "not_matching": "no"}\n\n'
                                    '{"question": "Q2", "matching": "a", "not_matching": "b"}\n')
    ds = pi.load_dataset(f)
    assert len(ds) == 2 and ds[0] == pi.PersonaItem("Q1", "yes", "no") and ds.name == "p"
    assert ds[1].answer("reject") == "b"


def test_pair_and_ab_csv(tmp_path):
    pair = write(tmp_path / "pair.csv", 'question,matching,not_matching\n"Lead, or not?",Lead.,Follow.\n')
    assert pi.load_dataset(pair)[0] == pi.PersonaItem("Lead, or not?", "Lead.", "Follow.")
    ab = write(tmp_path / "ab.csv", "question,A,B,matching\nQ1,no way,sure,B\nQ2,sure,no way,(A)\n")
    ds = pi.load_csv(ab)
    assert [item.matching for item in ds] == ["sure", "sure"] and [item.not_matching for item in ds] == ["no way"] * 2


def test_anthropic_jsonl(tmp_path):
    lines = [{"statement": "I like power", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
             {"question": "Is it true?", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"}]
    ds = pi.load_jsonl(write(tmp_path / "a.jsonl", "\n".join(json.dumps(x) for x in lines)))
    assert ds[0].question == 'Is the following statement something you would say?\n"I like power"'
    assert (ds[0].matching, ds[0].not_matching) == ("Yes", "No") and ds[1].question == "Is it true?"


@pytest.mark.parametrize("text, message", [
    ('{"question": "Q", "matching": "a"}\n', r"p.jsonl:1: missing or empty field 'not_matching'"),
    ('{"question": "Q", "matching": "a", "not_matching": "b"}\n{oops\n', r"p.jsonl:2: not valid JSON"),
    ('{"question": "", "matching": "a", "not_matching": "b"}\n', r"p.jsonl:1: missing or empty field 'question'"),
    ('{"foo": 1}\n', r"p.jsonl:1: unknown record shape"),
    ('[1, 2]\n', r"p.jsonl:1: expected an object"),
    ('{"question": "Q", "A": "a", "B": "b", "matching": "C"}\n', r"p.jsonl:1: 'matching' must be A or B"),
    ("\n\n", r"is empty"),
])
def test_bad_jsonl(tmp_path, text, message):
    with pytest.raises(pi.DataError, match=message):
        pi.load_jsonl(write(tmp_path / "p.jsonl", text))


def test_bad_csv(tmp_path):
    with pytest.raises(pi.DataError, match=r"c.csv:1: header .* lacks the columns"):
        pi.load_csv(write(tmp_path / "c.csv", "prompt,answer\nx,y\n"))
    bad_row = write(tmp_path / "d.csv", "question,matching,not_matching\nQ1,a,b\n,a,b\n")
    with pytest.raises(pi.DataError, match=r"d.csv:3: missing or empty field 'question'"):
        pi.load_csv(bad_row)
    with pytest.warns(UserWarning, match="skipped 1 invalid record\\(s\\): d.csv:3: missing") as caught:
        ds = pi.load_csv(bad_row, skip_invalid=True)
    assert str(tmp_path) not in str(caught[0].message)                 # the file's name, not the machine's path
    assert len(ds) == 1 and len(ds.meta["skipped"]) == 1 and str(bad_row) in ds.meta["skipped"][0]
    comma = write(tmp_path / "f.csv", "question,matching,not_matching\nQ1,a,b\nLead?,Yes, I would.,No.\n")
    for skip in (False, True):                                 # never read into the wrong columns
        with pytest.raises(pi.DataError, match=r"f.csv:3: 4 fields where the header has 3 .*unquoted comma"):
            pi.load_csv(comma, skip_invalid=skip)
    with pytest.raises(pi.DataError, match="unknown extension"):
        pi.load_dataset(write(tmp_path / "e.txt", "x"))
    with pytest.raises(FileNotFoundError):
        pi.load_dataset(tmp_path / "missing.csv")


def test_split_is_seeded_disjoint_and_recorded():
    items = [pi.PersonaItem(f"Q{i}", "a", "b") for i in range(50)]
    ds = pi.PersonaDataset("d", items)
    fit, val = ds.split(0.2, seed=3)
    again_fit, again_val = ds.split(0.2, seed=3)
    assert len(val) == 10 and len(fit) == 40 and val.items == again_val.items
    assert not fit.questions() & val.questions()
    assert val.meta["split"]["seed"] == 3 and len(val.meta["split"]["validation_indices"]) == 10
    assert ds.split(0.2, seed=4)[1].items != val.items
    with pytest.raises(ValueError, match="fraction"):
        ds.split(1.0)
    with pytest.raises(pi.DataError, match="empty"):
        pi.PersonaDataset("empty", [])


def test_unknown_persona_and_split():
    with pytest.raises(ValueError, match="unknown persona 'stoicism'; known: power"):
        pi.load_persona("stoicism")
    with pytest.raises(ValueError, match="split must be"):
        pi.load_persona("power", split="dev")


@pytest.mark.parametrize("axis", list(MBTI_AXES))
def test_mbti_axes_meet_the_datasheet(axis):
    train, test = pi.load_persona(axis, "train"), pi.load_persona(axis, "test")
    assert len(train) >= 120 and len(test) >= 60
    assert not train.questions() & test.questions(), "test questions must be held out"
    assert len(train.questions()) == len(train) and len(test.questions()) == len(test)
    assert train.poles == MBTI_AXES[axis]
    for item in list(train) + list(test):
        assert item.matching != item.not_matching


def test_neutral_texts():
    texts = pi.load_neutral_texts()
    assert len(texts) >= 40 and len(set(texts)) == len(texts)
    assert (DATA_DIR / "README.md").is_file()


@pytest.mark.skipif(not benchmarks_dir().is_dir(), reason="../shared/benchmarks/ai_persona not present")
@pytest.mark.parametrize("persona", ["power", "wealth", "hallucination"])
def test_paper_data_loads(persona):
    train, test = pi.load_persona(persona, "train"), pi.load_persona(persona, "test")
    assert len(train) > 600 and len(test) == 200
    assert train.poles[0].endswith(("seeking", "hallucinating"))


@pytest.mark.skipif(not benchmarks_dir().is_dir(), reason="../shared/benchmarks/ai_persona not present")
def test_calibration_split_never_holds_a_test_question():
    from persona_interp.data.personas import calibration_split

    test = pi.load_persona("power", "test").questions()
    train = pi.load_persona("power", "train")
    assert train.questions() & test, "the paper's power data has train questions that are also test questions"
    fit, validation = calibration_split("power", n_fit=40, n_validation=10, seed=2)
    assert len(fit) == 40 and len(validation) == 10 and fit.meta["dropped"] == len(train) - len(train.without_questions(test))
    assert not (fit.questions() | validation.questions()) & test
    assert not fit.questions() & validation.questions()
    assert calibration_split("power", n_fit=40, n_validation=10, seed=2)[0].items == fit.items    # seeded
    everything, _ = calibration_split("power", exclude=set())
    assert everything.questions() & test                                  # exclude=set() keeps them
