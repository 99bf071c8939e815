"""Weight-edit steering: the direction scaled in every residual writer, restored bit-exact."""
import pytest
import torch

import persona_interp as pi
from conftest import build_bridge, unchecked
from persona_interp.interventions.conditions import WeightEditCondition
from persona_interp.interventions.weight_edit import DirectionalEdit, project
from persona_interp.model.chat import encode_batch

TEXTS = ["The capital of France is Paris.", "I would love to lead the project and take charge."]


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tokenizer):
    return build_bridge(request.param, tokenizer)


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _writer_outputs(model, tokens):
    n = pi.get_adapter(model).n_layers
    names = [f"blocks.{layer}.hook_{what}_out" for layer in range(n) for what in ("attn", "mlp")]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names])


def _direction(model, seed=0):
    return torch.randn(pi.get_adapter(model).d_model, generator=torch.Generator().manual_seed(seed)) * 3.0


def test_projecting_out_leaves_no_component_in_any_writer_and_restores_bit_exact(model):
    tokens = encode_batch(model.tokenizer, [("Lead it?", "Yes, gladly.")]).tokens
    edit = DirectionalEdit(_direction(model))
    r = edit.direction
    before, outputs = _state(model), _writer_outputs(model, tokens)
    assert float((outputs @ r).abs().max()) > 1e-2                     # the writers write along r̂ before
    with edit.apply(model):
        edited = _writer_outputs(model, tokens)
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert float((edited @ r).abs().max()) < 1e-4 * float(outputs.abs().max())   # bias included (GPT-2's Conv1D)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())    # every bit back
    adapter = pi.get_adapter(model)
    assert set(edit.maps(model)) == {m.name for m in adapter.maps if m.kind in ("o", "down")}


def test_a_positive_strength_scales_the_component_and_nothing_else(model):
    tokens = encode_batch(model.tokenizer, [("More power?", "Absolutely.")]).tokens
    edit = DirectionalEdit(_direction(model, 1), strength=-1.0, layers=[0])
    r = edit.direction
    outputs = _writer_outputs(model, tokens)
    with edit.apply(model, multiplier=1.0):                          # the multiplier overrides the strength
        edited = _writer_outputs(model, tokens)
    first, after = outputs[0], edited[0]        # block 0's attention output: its input is the unedited embedding
    torch.testing.assert_close(after @ r, 2 * (first @ r), rtol=1e-4, atol=1e-5)
    orthogonal = lambda x: x - (x @ r)[..., None] * r                 # noqa: E731
    torch.testing.assert_close(orthogonal(after), orthogonal(first), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(edited[1], outputs[1])                   # and the MLP of block 0, whose input changed


def test_restored_on_exception_and_refuses_a_second_edit_of_one_weight(model):
    before = _state(model)
    edit = DirectionalEdit(_direction(model))
    with pytest.raises(KeyError, match="inside"):
        with edit.apply(model):
            raise KeyError("inside")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    adapter = pi.get_adapter(model)
    down = next(m for m in adapter.maps if m.kind == "down")
    mask = pi.Mask({down.name: torch.rand(down.n_out, down.n_in) > 0.5})
    with pi.ablate(model, mask):
        with pytest.raises(RuntimeError, match="conflicts with an active weight edit"):
            with edit.apply(model):
                pass
    with edit.apply(model):
        with pytest.raises(RuntimeError, match="weight edit"):
            with edit.apply(model, multiplier=0.5):                   # one weight edited twice
                pass
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_damage_reference_measures_the_edit(model):
    reference = pi.DamageReference.build(model, TEXTS)
    rounding = reference.measure(model).kl                          # the base against its float16 log-probs
    assert rounding < 1e-4
    edit = DirectionalEdit.from_vector(pi.SteeringVector(1, _direction(model)))
    assert edit.meta["layer"] == 1
    small, large = (WeightEditCondition("we", side="seek", edit=edit, multiplier=m) for m in (0.01, 3.0))
    with small.applied(model):
        kl_small = reference.measure(model).kl
    with large.applied(model):
        kl_large = reference.measure(model).kl
    assert kl_large > 10 * max(kl_small, rounding, 1e-6)
    assert reference.measure(model).kl == rounding                  # nothing left behind


def test_bad_directions_are_refused(llama):
    with pytest.raises(ValueError, match="non-zero"):
        DirectionalEdit(torch.zeros(8))
    with unchecked(), pytest.raises(ValueError, match="one vector"):     # the error a caller without the checks gets
        DirectionalEdit(torch.ones(2, 8))
    with pytest.raises(ValueError, match="d_model"):
        with DirectionalEdit(torch.ones(7)).apply(llama):
            pass
    with pytest.raises(TypeError, match="no edit"):
        WeightEditCondition("we").intervention()
    with unchecked(), pytest.raises(ValueError, match="outputs"):
        project(torch.ones(3), torch.ones(4, 2), 1.0)
