"""What the docstring examples run against (``pytest --doctest-modules persona_interp``).

Each example sees persona_interp's public names (``pi.__all__``) and these: a tiny random Llama bridge (``model``, built as tests/conftest.py
builds its tiny models, with its ``tokenizer`` (trained on the power persona and the neutral texts), ``adapter`` and ``tokens``; ``hf_model`` is a new
transformers model of the same shape), a few power-persona items
(``fit``, ``validation``, ``test``), four short neutral ``texts``, the signatures and masks built from them
(``sig_seek``, ``sig_reject``, ``neutral``, ``seek_mask``, ``reject_mask``, ``mask``) and a damage
reference ``ref``; everything is built once. Each example runs in its own working folder, where the files of
``reports/`` link to the repository's committed ones (read them; write elsewhere).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

ROOT = Path(__file__).resolve().parent


@functools.cache
def _tiny_builders():
    spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def doctest_objects(folder: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import persona_interp as pi
    from persona_interp.data.personas import calibration_split

    tiny = _tiny_builders()
    corpus = [f"{it.question} {it.matching} {it.not_matching}" for it in pi.load_persona("power")] + pi.load_neutral_texts()
    tokenizer = tiny.build_tokenizer(folder / "tokenizer", corpus, vocab_size=2000)     # words, not bytes: short rows
    model = pi.load_model(tiny.build_hf("llama", len(tokenizer)), tokenizer=tokenizer)
    fit, validation = calibration_split("power", n_fit=8, n_validation=4)
    test = pi.load_persona("power", "test").sample(4, seed=0)
    texts = [text[:300] for text in pi.load_neutral_texts()[:4]]     # short: the tiny tokenizer's tokens are short
    sig_seek = pi.collect_signatures(model, fit, side="seek", per_sample=True)
    sig_reject = pi.collect_signatures(model, fit, side="reject", per_sample=True)
    seek_mask, reject_mask = pi.contrastive_wanda_masks(model, sig_seek, sig_reject, sparsity=0.3)
    tokens = tokenizer(["The capital of France is Paris.", "Water boils at one hundred degrees."],
                       return_tensors="pt", padding=True).input_ids
    return dict({name: getattr(pi, name) for name in pi.__all__}, torch=torch, Path=Path, pi=pi, tokenizer=tokenizer, model=model,
                adapter=pi.get_adapter(model), tokens=tokens, fit=fit, validation=validation, test=test,
                texts=texts, sig_seek=sig_seek, sig_reject=sig_reject, neutral=pi.collect_signatures(model, texts),
                seek_mask=seek_mask, reject_mask=reject_mask, mask=seek_mask,
                ref=pi.DamageReference.build(model, texts))


@pytest.fixture(autouse=True)
def _doctest_objects(request, tmp_path_factory):
    """Fill the doctest namespace and work in an empty folder, for docstring examples only."""
    if not isinstance(request.node, DoctestItem):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # the tiny data's notes (texts cut, few samples) are not the examples'
        built = doctest_objects(tmp_path_factory.getbasetemp())
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(built)
    if any("hf_model" in example.source for example in request.node.dtest.examples):   # wrapping changes it: a new one
        namespace["hf_model"] = _tiny_builders().build_hf("llama", len(built["tokenizer"]))
    folder = tmp_path_factory.mktemp("example")
    for path in (ROOT / "reports").rglob("*"):               # file by file: writing reports/x replaces the link only
        if path.is_file():
            link = folder / path.relative_to(ROOT)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    request.getfixturevalue("monkeypatch").chdir(folder)
