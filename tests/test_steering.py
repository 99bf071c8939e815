import pytest
import torch

import persona_interp as pi
from persona_interp.model.chat import encode_batch
from persona_interp.interventions.steering import (answer_residual_means, mean_difference_vectors, pca_vectors,
                                                   SteeringVector)

ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Run the company?", "Yes, I will run it all.", "I would rather not."),
         pi.PersonaItem("Take control?", "Sure, give me control.", "No, leave it.")]


def test_residual_means_match_direct_computation(llama):
    means = answer_residual_means(llama, ITEMS, [0, 1], side="seek", batch_size=3)
    adapter = pi.get_adapter(llama)
    for i, item in enumerate(ITEMS):
        batch = encode_batch(llama.tokenizer, [(item.question, item.matching)])
        _, cache = llama.run_with_cache(batch.tokens)
        start = int(batch.answer_start[0])
        expected = cache[adapter.residual_hook(1)][0, start:].double().mean(0)
        torch.testing.assert_close(means[i, 1], expected, rtol=1e-5, atol=1e-6)


def test_mean_difference_and_pca(llama):
    caa = mean_difference_vectors(llama, ITEMS, [1])[1]
    seek = answer_residual_means(llama, ITEMS, [1], side="seek")[:, 0]
    reject = answer_residual_means(llama, ITEMS, [1], side="reject")[:, 0]
    torch.testing.assert_close(caa.direction.double(), (seek - reject).mean(0), rtol=1e-5, atol=1e-6)
    pca = pca_vectors(llama, ITEMS, [1])[1]
    assert float(pca.direction.double() @ caa.direction.double()) > 0          # signed toward seek
    diffs = seek - reject
    centred = diffs - diffs.mean(0)
    unit = pca.direction.double() / pca.direction.double().norm()
    variance_along = float((centred @ unit).var())
    for _ in range(5):                                                       # no random direction explains more variance
        r = torch.randn(unit.shape, dtype=torch.float64)
        assert variance_along >= float((centred @ (r / r.norm())).var()) - 1e-9


def test_apply_adds_the_vector_and_cleans_up(tiny_model):
    adapter = pi.get_adapter(tiny_model)
    vec = SteeringVector(1, torch.randn(adapter.d_model), multiplier=2.0)
    tokens = torch.tensor([[1, 2, 3, 4]])
    seen = {}
    capture = [(adapter.residual_hook(1), lambda x, hook: seen.__setitem__("x", x.clone()))]
    base = tiny_model(tokens)
    tiny_model.run_with_hooks(tokens, fwd_hooks=capture)
    plain = seen["x"]
    tiny_model.run_with_hooks(tokens, fwd_hooks=vec.fwd_hooks(tiny_model, multiplier=-1.5) + capture)
    torch.testing.assert_close(seen["x"], plain - 1.5 * vec.direction)
    with vec.apply(tiny_model):
        steered = tiny_model(tokens)
    assert (steered - base).abs().max() > 0
    torch.testing.assert_close(tiny_model(tokens), base)
    with pytest.raises(ValueError, match="d_model"):
        SteeringVector(0, torch.zeros(3)).fwd_hooks(tiny_model)


def test_one_pass_feeds_both_methods(llama):
    from persona_interp.interventions.steering import paired_differences, vectors_from_differences

    diffs = paired_differences(llama, ITEMS, [0, 1])
    both = {m: vectors_from_differences(m, diffs, [0, 1]) for m in ("mean_difference", "pca")}
    torch.testing.assert_close(both["mean_difference"][1].direction, mean_difference_vectors(llama, ITEMS, [1])[1].direction)
    torch.testing.assert_close(both["pca"][0].direction, pca_vectors(llama, ITEMS, [0])[0].direction)
    with pytest.raises(ValueError, match="unknown steering method"):
        vectors_from_differences("ode", diffs, [0, 1])
