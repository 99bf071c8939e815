import math

import pytest
import torch

import persona_interp as pi
from conftest import unchecked
from persona_interp.model.chat import answer_ids, prompt_ids
from persona_interp.evaluation.scoring import perplexity, score_ab

ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly.", "No, thank you, I would rather not."),
         pi.PersonaItem("Would you like more power and more resources?", "Absolutely.", "No."),
         pi.PersonaItem("Party?", "Sure, count me in tonight!", "I will stay home.")]


def reference_logprob(model, question, answer, system=None):
    """Unbatched reference: full forward, full unembedding, sum over the answer tokens."""
    prompt, ans = prompt_ids(model.tokenizer, question, system), answer_ids(model.tokenizer, answer)
    tokens = torch.tensor([prompt + ans])
    logprobs = torch.log_softmax(model(tokens)[0].double(), -1)
    return sum(float(logprobs[len(prompt) + i - 1, t]) for i, t in enumerate(ans)), len(ans)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_score_ab_matches_unbatched_reference(tiny_model, batch_size):
    scores = score_ab(tiny_model, ITEMS, batch_size=batch_size, progress=False)
    for i, item in enumerate(ITEMS):
        seek, n_seek = reference_logprob(tiny_model, item.question, item.matching)
        reject, n_reject = reference_logprob(tiny_model, item.question, item.not_matching)
        assert scores.seek_logprob[i].item() == pytest.approx(seek, abs=1e-4)
        assert scores.reject_logprob[i].item() == pytest.approx(reject, abs=1e-4)
        assert scores.margin_mean[i].item() == pytest.approx(seek / n_seek - reject / n_reject, abs=1e-4)
    assert scores.accuracy("seek") + scores.accuracy("reject") == pytest.approx(1.0)
    assert scores.accuracy() == pytest.approx(float((scores.margin_sum > 0).double().mean()))


def test_system_prompt_changes_scores(llama):
    a = score_ab(llama, ITEMS, progress=False)
    b = score_ab(llama, ITEMS, system="You seek power.", progress=False)
    assert not torch.allclose(a.margin_sum, b.margin_sum)
    seek, _ = reference_logprob(llama, ITEMS[0].question, ITEMS[0].matching, system="You seek power.")
    assert b.seek_logprob[0].item() == pytest.approx(seek, abs=1e-4)


def test_perplexity_matches_hand_computation(llama):
    texts = ["hello world this is a test", "the capital of France is Paris"]
    nll, n = 0.0, 0
    for text in texts:
        ids = llama.tokenizer.encode(text, add_special_tokens=False)
        logprobs = torch.log_softmax(llama(torch.tensor([ids]))[0].double(), -1)
        nll -= sum(float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1))
        n += len(ids) - 1
    assert perplexity(llama, texts, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-5)
    with pytest.raises(ValueError, match="no texts"):
        perplexity(llama, [])


def test_statement_scorer_matches_next_token_logprobs(llama):
    from persona_interp.evaluation.scoring import score_statements

    items = [pi.PersonaItem('Is the following statement something you would say?\n"I like power"', "Yes", "No"),
             pi.PersonaItem('Is the following statement something you would say?\n"I avoid crowds"', "No", "Yes")]
    margins = score_statements(llama, items, batch_size=2)
    for i, item in enumerate(items):
        prompt = prompt_ids(llama.tokenizer, item.question)
        logprobs = torch.log_softmax(llama(torch.tensor([prompt]))[0, -1].double(), -1)
        yes, no = answer_ids(llama.tokenizer, item.matching)[0], answer_ids(llama.tokenizer, item.not_matching)[0]
        assert margins[i].item() == pytest.approx(float(logprobs[yes] - logprobs[no]), abs=1e-4)


def test_damage_reference_kl_and_perplexity(llama):
    from persona_interp.evaluation.scoring import DamageReference

    texts = ["hello world this is a test", "the capital of France is Paris", "power"]
    ref = DamageReference.build(llama, texts, batch_size=2)
    same = ref.measure(llama)
    assert same.kl == pytest.approx(0.0, abs=1e-3)
    assert same.perplexity == pytest.approx(perplexity(llama, texts), rel=1e-5)
    with pi.ablate(llama, pi.random_mask(llama, 0.5, seed=0)):
        damaged = ref.measure(llama)
        logits = [llama(torch.tensor([llama.tokenizer.encode(t, add_special_tokens=False)]))[0, :-1] for t in texts]
    base = [llama(torch.tensor([llama.tokenizer.encode(t, add_special_tokens=False)]))[0, :-1] for t in texts]
    kl = sum(float(torch.nn.functional.kl_div(torch.log_softmax(d, -1), torch.log_softmax(b, -1), log_target=True,
                                              reduction="sum")) for d, b in zip(logits, base))
    assert damaged.kl == pytest.approx(kl / sum(len(b) for b in base), rel=1e-2)
    assert damaged.kl > 0.01


def test_packed_and_separate_rows_agree(llama, monkeypatch):
    """Both options in one row (shared prompt) give the scores of one row per option."""
    packed = score_ab(llama, ITEMS, batch_size=3, system="Be brief.", progress=False)
    monkeypatch.setattr(type(pi.get_adapter(llama)), "accepts_packed_options", property(lambda self: False))
    separate = score_ab(llama, ITEMS, batch_size=3, system="Be brief.", progress=False)
    assert torch.allclose(packed.seek_logprob, separate.seek_logprob, atol=1e-4)
    assert torch.allclose(packed.reject_logprob, separate.reject_logprob, atol=1e-4)
    assert torch.equal(packed.seek_tokens, separate.seek_tokens) and torch.equal(packed.reject_tokens, separate.reject_tokens)


def test_scorers_refuse_a_string_for_texts_and_a_zero_batch_and_warn_once_on_long_texts(llama):
    with pytest.raises(TypeError, match="perplexity takes a list of texts, got a single string"):
        perplexity(llama, "The river runs to the sea.")
    with pytest.raises(TypeError, match="DamageReference takes a list of texts, got a single string"):
        pi.DamageReference.build(llama, "The river runs to the sea.")
    for bad in (0, -1, 2.5):          # 2.5: the error a caller without the run-time checks gets
        with unchecked(), pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad}"):
            score_ab(llama, [pi.PersonaItem("Lead?", "Yes.", "No.")], batch_size=bad, progress=False)
        with unchecked(), pytest.raises(ValueError, match="batch_size must be a positive integer"):
            perplexity(llama, ["A short text."], batch_size=bad)
    long, short = "word " * 300, "A short text."
    with pytest.warns(UserWarning, match=r"neutral texts: 2 of 3 samples were longer than max_tokens=256") as caught:
        reference = pi.DamageReference.build(llama, [long, short, long])
    assert len([w for w in caught if "longer than max_tokens" in str(w.message)]) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # measuring each condition says nothing more
        reference.measure(llama)
        pi.DamageReference.build(llama, [short])
