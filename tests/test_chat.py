import pytest
import torch
from conftest import unchecked

from persona_interp.model.chat import encode_batch, pad_right, prompt_ids


def test_prompt_uses_the_chat_template(tokenizer):
    ids = prompt_ids(tokenizer, "Party tonight?", system="Be brief.")
    text = tokenizer.decode(ids)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nParty tonight?<|im_end|>\n<|im_start|>assistant\n"
    assert text.count("<|im_start|>") == 3          # no extra BOS prepended


def test_answer_span_and_scopes(tokenizer):
    batch = encode_batch(tokenizer, [("Lead it?", "Yes, gladly."), ("Party tonight at the big hall downtown?", "No.")])
    for row in range(2):
        start, end = int(batch.answer_start[row]), int(batch.lengths[row])
        assert tokenizer.decode(batch.tokens[row, start:end]) == ["Yes, gladly.", "No."][row]
    all_mask, answer, prompt = (batch.token_mask(s) for s in ("all", "answer", "prompt"))
    assert torch.equal(answer | prompt, all_mask) and not (answer & prompt).any()
    assert all_mask.sum(1).tolist() == batch.lengths.tolist()
    pad = tokenizer.pad_token_id
    assert (batch.tokens[~all_mask] == pad).all()
    with unchecked(), pytest.raises(ValueError, match="token scope"):
        batch.token_mask("middle")


def test_truncation_keeps_the_answer(tokenizer):
    pair = [("A long question about many things and more things", "Short answer.")]
    full = encode_batch(tokenizer, pair)
    n_answer = int(full.lengths[0] - full.answer_start[0])
    with pytest.raises(ValueError, match="does not fit in max_tokens"):     # no room for the template: refused,
        encode_batch(tokenizer, pair, max_tokens=n_answer + 3)            # not cut through the template
    budget = int(full.lengths[0]) - 2
    cut = encode_batch(tokenizer, pair, max_tokens=budget)
    assert cut.n_cut == 1 and int(cut.lengths[0]) <= budget
    start = int(cut.answer_start[0])
    assert torch.equal(cut.tokens[0, start:int(cut.lengths[0])], full.tokens[0, int(full.answer_start[0]):int(full.lengths[0])])
    assert torch.equal(cut.tokens[0, start - 3:start], full.tokens[0, int(full.answer_start[0]) - 3:int(full.answer_start[0])])


def test_cut_answers_keeps_the_prompt_and_the_start_of_a_plain_text(tokenizer):
    pair = [("Write a short paragraph.", "The river ran past the old mill and the long road into the town square.")]
    full = encode_batch(tokenizer, pair)
    start, length = int(full.answer_start[0]), int(full.lengths[0])
    with pytest.raises(ValueError, match="does not fit in max_tokens"):     # the default still refuses
        encode_batch(tokenizer, pair, max_tokens=start + 4)
    cut = encode_batch(tokenizer, pair, max_tokens=start + 4, cut_answers=True)
    assert cut.n_cut == 1 and int(cut.lengths[0]) == start + 4 and int(cut.answer_start[0]) == start
    assert torch.equal(cut.tokens[0, :start + 4], full.tokens[0, :start + 4])
    assert encode_batch(tokenizer, pair, max_tokens=length, cut_answers=True).n_cut == 0
    with pytest.raises(ValueError, match="alone fills"):
        encode_batch(tokenizer, pair, max_tokens=start, cut_answers=True)


def test_pad_right_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        pad_right([], 0)


def test_packed_options_layout(tokenizer):
    from persona_interp.model.chat import answer_ids, encode_packed

    packed = encode_packed(tokenizer, [("Lead it?", "Yes, gladly.", "No."), ("Party tonight at the big hall?", "Sure!", "I will stay home.")])
    p, a, b = (int(x[0]) for x in (packed.prompt_len, packed.a_len, packed.b_len))
    assert (a, b) == (len(answer_ids(tokenizer, "Yes, gladly.")), len(answer_ids(tokenizer, "No.")))
    assert packed.position_ids[0, p + a:p + a + b].tolist() == list(range(p, p + b))   # b restarts where a started
    att = packed.attention[0, 0]
    assert not att[p + a:p + a + b, p:p + a].any() and att[p + a:p + a + b, :p].all()   # b sees the prompt, not a
    assert not att[:, p + a + b:p + a + b].any() or p + a + b == att.shape[0]
    assert not att.triu(1).any()                                                        # still causal
    width = att.shape[0]
    for pad in range(p + a + b, width):                                                 # padding sees only itself
        assert att[pad].nonzero().flatten().tolist() == [pad] and att[:pad, pad].sum() == 0
    rows, positions, ids = packed.targets("b")
    assert positions.tolist()[:b] == [p - 1] + list(range(p + a, p + a + b - 1)) and ids.tolist()[:b] == answer_ids(tokenizer, "No.")
