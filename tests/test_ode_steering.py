import pytest
import torch

import persona_interp as pi
from persona_interp.interventions.ode_steering import fit_barrier, ode_steerings, ODESteering
from persona_interp.interventions.steering import SteeringVector

ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Run the company?", "Yes, I will run it all.", "I would rather not."),
         pi.PersonaItem("Take control?", "Sure, give me control.", "No, leave it.")]


def blobs(d=6, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = 3.0
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift, torch.randn(n, d, generator=g, dtype=torch.float64) - shift


@pytest.mark.parametrize("features", [None, 64])
def test_barrier_separates_poles_and_its_gradient_is_exact(features):
    seek, reject = blobs()
    barrier = fit_barrier(seek, reject, features=features)
    accuracy = torch.cat([barrier(seek) > 0, barrier(reject) < 0]).double().mean()
    assert accuracy > 0.95
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(barrier(x).sum(), x)
    torch.testing.assert_close(barrier.gradient(x.detach()), auto)
    if features is None:                                   # the normal points along the axis that separates the poles
        g = barrier.gradient(torch.zeros(1, 6, dtype=torch.float64))[0]
        assert g[0] > 0 and g[0].abs() > 3 * g[1:].abs().max()


def test_flow_moves_uphill_for_seek_and_downhill_for_reject():
    seek, reject = blobs()
    ode = ODESteering(0, fit_barrier(seek, reject, features=64), steps=5, step_size=0.3)
    x = torch.randn(10, 6, dtype=torch.float64)
    assert (ode.barrier(ode.flow(x, 1.0)) > ode.barrier(x)).all()
    assert (ode.barrier(ode.flow(x, -1.0)) < ode.barrier(x)).all()
    torch.testing.assert_close(ode.flow(x, 0.0), x)


def test_one_linear_step_is_activation_addition(llama):
    """With a linear barrier ∇h is constant: one step of size α·η is the steering vector
    η·∇h/‖∇h‖ added with multiplier α (CAA up to scale); T steps are T times that vector."""
    adapter = pi.get_adapter(llama)
    seek, reject = blobs(d=adapter.d_model)
    barrier = fit_barrier(seek.float(), reject.float())
    normal = barrier.gradient(torch.zeros(1, adapter.d_model, dtype=torch.float64))[0]
    tokens = torch.tensor([llama.tokenizer.encode("take the lead now", add_special_tokens=False)])
    for steps in (1, 3):
        ode = ODESteering(1, barrier, steps=steps, step_size=0.7)
        vector = SteeringVector(1, (steps * 0.7 * normal / normal.norm()).float())
        with ode.apply(llama, multiplier=2.0):
            got = llama(tokens)
        with vector.apply(llama, multiplier=2.0):
            expected = llama(tokens)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not llama.blocks[1].hook_resid_pre._forward_hooks


def test_ode_steerings_on_a_tiny_model(llama):
    odes = ode_steerings(llama, ITEMS, [0, 1], features=16)
    assert set(odes) == {0, 1} and all(o.step_size > 0 and o.meta["n"] == len(ITEMS) for o in odes.values())
    tokens = torch.tensor([llama.tokenizer.encode("hello there", add_special_tokens=False)])
    plain = llama(tokens)
    with odes[1].apply(llama, multiplier=4.0):
        assert not torch.allclose(llama(tokens), plain)
    torch.testing.assert_close(llama(tokens), plain)
    with pytest.raises(ValueError, match="both poles"):
        fit_barrier(torch.zeros(0, 4), torch.zeros(3, 4))
