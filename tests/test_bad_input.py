"""Input that used to give a silent wrong answer or a raw traceback now gives a clear error naming what is wrong."""
from __future__ import annotations

import pytest
import torch
from conftest import unchecked

import persona_interp as pi
from persona_interp.cli import main as cli_main
from persona_interp.data.personas import DataError


def test_empty_or_blank_answers_are_refused_in_memory_and_in_files(tmp_path):
    with pytest.raises(DataError, match="not_matching must be a non-empty string"):
        pi.PersonaItem("Lead?", "Yes.", "   ")
    path = tmp_path / "p.csv"
    path.write_text("question,matching,not_matching\nLead?,Yes.,No.\nRule?,Yes.,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.csv:3: missing or empty field 'not_matching'"):
        pi.load_csv(path)


def test_counts_must_be_positive():
    data = pi.PersonaDataset("toy", [pi.PersonaItem(f"Q{i}?", "Yes.", "No.") for i in range(5)])
    for n in (0, -1, 2.5, True):
        with unchecked(), pytest.raises(ValueError, match="sample size must be a positive whole number"):
            data.sample(n)
    assert len(data.sample(9)) == 5
    for flag in ("--n", "--batch-size", "--max-tokens"):
        with pytest.raises(SystemExit):
            cli_main(["collect", "--persona", "thinking_feeling", "--side", "seek", "--out", "x", flag, "0"])


def test_csv_with_a_byte_order_mark_loads_and_non_utf8_names_file_and_line(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes("question,matching,not_matching\nLead?,Yes.,No.\n".encode("utf-8-sig"))
    assert pi.load_csv(bom)[0].question == "Lead?"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question,matching,not_matching\nLead?,Yes.,No.\nCaf\xe9?,Oui.,Non.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv:3: not UTF-8 text \(byte 0xe9\)"):
        pi.load_csv(latin)


def test_a_number_in_a_jsonl_field_is_named_as_such(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"question": 42, "matching": "Yes.", "not_matching": "No."}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"n.jsonl:1: field 'question' must be text, got int 42"):
        pi.load_jsonl(path)


def test_damaged_and_foreign_files_give_one_clear_error(llama, tmp_path):
    mask = pi.random_mask(llama, 0.3)
    path = mask.save(tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.safetensors").write_text("hello", encoding="utf-8")
    for name in ("cut.safetensors", "text.safetensors"):
        for load in (pi.Mask.load, pi.Signature.load):
            with pytest.raises(ValueError, match="not a complete safetensors file"):
                load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no mask file"):
        pi.Mask.load(tmp_path / "absent.safetensors")


def test_a_mask_whose_packed_bits_are_shorter_than_its_shape_is_refused(llama, tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import save_file

    mask = pi.random_mask(llama, 0.3)
    name = next(iter(mask.keep))
    packed = np.packbits(mask.keep[name].numpy().reshape(-1))[:-3]            # three bytes short
    save_file({name: packed}, str(tmp_path / "short.safetensors"), metadata={
        "format": "persona_interp.mask/1", "shapes": json.dumps({name: list(mask.keep[name].shape)}), "meta": "{}"})
    with pytest.raises(ValueError, match="the file is damaged"):
        pi.Mask.load(tmp_path / "short.safetensors")


def test_sides_of_raw_samples(llama):
    triples = [("Lead it?", "Yes, gladly.", "No, thanks."), ("Rule it?", "Absolutely.", "Never, really.")]
    seek = pi.collect_signatures(llama, triples, side="seek", progress=False)
    reject = pi.collect_signatures(llama, triples, side="reject", progress=False)
    assert not torch.equal(seek.norm_mean("blocks.0.mlp.up"), reject.norm_mean("blocks.0.mlp.up"))
    items = [pi.PersonaItem(*t) for t in triples]
    torch.testing.assert_close(pi.collect_signatures(llama, items, side="reject", progress=False).norm_mean("blocks.0.mlp.up"),
                               reject.norm_mean("blocks.0.mlp.up"))
    with unchecked(), pytest.raises(ValueError, match=r"side must be one of \['seek', 'reject'\], got 'rejected'"):
        pi.collect_signatures(llama, triples, side="rejected", progress=False)
    with pytest.raises(ValueError, match="sample 0: question and answer must be non-empty"):
        pi.collect_signatures(llama, [("Lead?", "")], progress=False)


def test_outputs_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """An exception in the middle of writing leaves the old file (or none) and no partial file behind."""
    import matplotlib.pyplot as plt

    from persona_interp.report import figures
    from persona_interp.data.files import atomic, write_text

    target = write_text(tmp_path / "report.md", "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic(target) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        figures.save(fig, tmp_path / "fig")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_over_long_questions_keep_template_and_answer_on_every_architecture(tiny_model):
    """One behaviour everywhere: within max_tokens (and never past the model's context) the chat template,
    system prompt and answer stay whole, the question's middle is cut, and a warning says how many."""
    from persona_interp.model.chat import encode_batch, fit_prompt, prompt_ids, token_budget

    model = tiny_model
    tok = model.tokenizer
    question = "Would you like to lead " + "the very large project " * 60 + "at the end of the year?"
    answer, system = "Yes, I would lead it.", "You love power."
    batch = encode_batch(tok, [(question, answer)], system, max_tokens=64)
    assert batch.n_cut == 1 and int(batch.lengths[0]) <= 64
    ids = batch.tokens[0, : int(batch.lengths[0])].tolist()
    text = tok.decode(ids)
    assert "You love power." in text and text.rstrip().endswith("Yes, I would lead it.") and "…" in text
    assert "Would you" in text and "year?<" in text                    # head and tail of the question kept
    short = encode_batch(tok, [("Lead it?", answer)], system, max_tokens=64)
    assert short.n_cut == 0 and short.tokens[0, : int(short.lengths[0])].tolist() == prompt_ids(tok, "Lead it?", system) + \
        tok.encode(answer, add_special_tokens=False)
    with pytest.raises(ValueError, match="does not fit in max_tokens"):
        fit_prompt(tok, question, system, answer_len=60, max_tokens=64)
    assert token_budget(model, 10**6) == model.cfg.n_ctx                # never past the context
    items = [pi.PersonaItem(question, answer, "No."), pi.PersonaItem("Lead it?", answer, "No.")]
    with pytest.warns(UserWarning, match="1 of 2 samples were longer than max_tokens=64"):
        pi.collect_signatures(model, items, "seek", max_tokens=64, progress=False)
    from persona_interp.evaluation.scoring import score_ab

    with pytest.warns(UserWarning, match="score_ab: (1 of 2|2 of 4) samples"):   # rows: packed pairs, or one per option
        score_ab(model, items, max_tokens=64, progress=False)


def test_randomly_nested_interventions_always_restore_the_model(llama):
    """Masks on disjoint maps, a steering vector, a LoRA and a neuron hook, nested in random orders with an
    exception raised at a random depth: afterwards every weight is bit-exact, no hook is left and the output
    equals the untouched model's."""
    import contextlib
    import random

    from persona_interp.interventions.conditions import Condition, LoRACondition, MaskCondition, SteeringCondition
    from persona_interp.interventions.lora import init_factors, LoRA, LoRAConfig
    from persona_interp.interventions.steering import SteeringVector

    adapter = pi.get_adapter(llama)
    tokens = torch.tensor([[1, 5, 9, 13, 17, 21]])
    saved = {n: p.detach().clone() for n, p in llama.named_parameters()}
    before = llama(tokens)
    A, B = init_factors(llama, LoRAConfig(rank=2, modules=["mlp"], layers=[1], seed=0))
    B = {name: torch.randn_like(b) for name, b in B.items()}
    parts = [MaskCondition("attn0", mask=pi.random_mask(llama, 0.5, seed=1, modules=["attn"], layers=[0])),
             MaskCondition("mlp0", mask=pi.random_mask(llama, 0.3, seed=2, modules=["mlp"], layers=[0])),
             SteeringCondition("steer", vector=SteeringVector(1, torch.randn(adapter.d_model)), multiplier=3.0),
             LoRACondition("lora", lora=LoRA(A, B, scaling=2.0))]

    class Boom(Exception):
        pass

    rng = random.Random(0)
    for trial in range(12):
        order = rng.sample(parts, rng.randint(1, len(parts)))
        fail_at = rng.randint(0, len(order))                          # == len(order): no exception
        try:
            with contextlib.ExitStack() as stack:
                for depth, part in enumerate(order):
                    if depth == fail_at:
                        raise Boom
                    stack.enter_context(part.applied(llama))
                if fail_at == len(order) - 1 or rng.random() < 0.5:
                    llama(tokens)
                    raise Boom
        except Boom:
            pass
        assert all(torch.equal(p, saved[n]) for n, p in llama.named_parameters()), (trial, [p.name for p in order])
        torch.testing.assert_close(llama(tokens), before, rtol=0, atol=0)
    assert Condition().name == "base"


def test_sides_scopes_statistics_and_phi_are_checked_where_they_enter(llama):
    from persona_interp.masks.builders import mask_family

    triples = [("Lead it?", "Yes, gladly.", "No, thanks."), ("Rule it?", "Absolutely.", "Never, really.")]
    with unchecked(), pytest.raises(ValueError, match=r"token scope must be one of \['all', 'answer', 'prompt'\], got 'answers'"):
        pi.collect_signatures(llama, triples, token_scope="answers", progress=False)
    with unchecked(), pytest.raises(ValueError, match=r"statistic must be one of \['norm', 'rms'\]"):
        pi.collect_signatures(llama, triples, statistic="RMS", progress=False)
    scores = pi.score_ab(llama, [pi.PersonaItem(*t) for t in triples], progress=False)
    with unchecked(), pytest.raises(ValueError, match=r"side must be one of \['seek', 'reject'\], got 'Seek'"):
        scores.accuracy("Seek")
    with unchecked(), pytest.raises(ValueError, match=r"side must be one of"):
        pi.Retriever([pi.PersonaItem(*t) for t in triples]).system_prompt("Lead?", side="Reject")
    with unchecked(), pytest.raises(ValueError, match=r"phi must be one of \['relu', 'softplus'\], got 'ReLU'"):
        mask_family(llama, "wanda", None, phi="ReLU")
