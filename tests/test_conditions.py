import torch

import persona_interp as pi
from persona_interp.interventions.conditions import Composed, Condition, MaskCondition, Prompt, SteeringCondition
from persona_interp.evaluation.scoring import score_ab
from persona_interp.interventions.steering import SteeringVector

ITEMS = [pi.PersonaItem("Lead it?", "Yes.", "No."), pi.PersonaItem("Party?", "Sure!", "I will stay home.")]


def test_conditions_compose_and_leave_the_model_unchanged(llama):
    adapter = pi.get_adapter(llama)
    saved = {n: p.detach().clone() for n, p in llama.named_parameters()}
    mask = MaskCondition("m", side="seek", mask=pi.random_mask(llama, 0.5, seed=0))
    steer = SteeringCondition("s", side="seek", vector=SteeringVector(1, torch.ones(adapter.d_model)), multiplier=3.0)
    prompt = Prompt("p", side="seek", system="You seek power.")
    rag = Prompt("r", side="seek", system=lambda q: f"Context for {q}")
    combo = mask + steer + prompt
    assert isinstance(combo, Composed) and combo.system == "You seek power."
    with combo.applied(llama):
        combined = score_ab(llama, ITEMS, system=combo.system, progress=False)
    with mask.applied(llama), steer.applied(llama):
        by_hand = score_ab(llama, ITEMS, system="You seek power.", progress=False)
    torch.testing.assert_close(combined.margin_sum, by_hand.margin_sum)
    base = score_ab(llama, ITEMS, progress=False)
    assert not torch.allclose(combined.margin_sum, base.margin_sum)
    assert all(torch.equal(p, saved[n]) for n, p in llama.named_parameters())
    assert all(not hp._forward_hooks for hp in llama.hook_dict.values())
    with_rag = prompt + rag
    assert with_rag.system("Q?") == "You seek power.\nContext for Q?"
    assert Condition().system is None


def test_a_steering_condition_scales_its_vector_without_copying_it(llama):
    from persona_interp.interventions.ode_steering import ODESteering, fit_barrier

    adapter = pi.get_adapter(llama)
    gen = torch.Generator().manual_seed(0)
    ode = ODESteering(1, fit_barrier(torch.randn(16, adapter.d_model, generator=gen) + 1,
                                     torch.randn(16, adapter.d_model, generator=gen) - 1, features=16))
    cond = SteeringCondition("ode", side="seek", vector=ode, multiplier=-2.0)
    for _ in range(3):
        with cond.applied(llama):
            steered = score_ab(llama, ITEMS, progress=False)
    assert len(ode._placed) == 1 and ode.multiplier == 1.0     # one barrier copy, the vector itself unchanged
    with ode.apply(llama, -2.0):
        by_hand = score_ab(llama, ITEMS, progress=False)
    torch.testing.assert_close(steered.margin_sum, by_hand.margin_sum)
