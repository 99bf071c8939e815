import pytest
import torch

import persona_interp as pi
from persona_interp.analysis.localise import UnitDivergence
from persona_interp.analysis.causal import dose_response, equal_damage_multiplier, random_units, unit_mask
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.interventions.steering import SteeringVector

ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Run the company?", "Yes, I will run it all.", "I would rather not.")]
TEXTS = ["hello world this is a test", "the capital of France is Paris"]


def test_unit_mask_groups_by_layer():
    mask = unit_mask("head", [(1, 2), (0, 1), (1, 0)], mode="zero", note="x")
    assert isinstance(mask, pi.HeadMask) and mask.units == {1: [2, 0], 0: [1]} and mask.meta == {"note": "x"}
    assert isinstance(unit_mask("neuron", [(0, 3)]), pi.NeuronMask)
    with pytest.raises(ValueError, match="unit kind"):
        unit_mask("layer", [(0, 0)])


def test_random_units_are_seeded_distinct_and_in_range(llama):
    adapter = pi.get_adapter(llama)
    units = random_units(llama, "neuron", 20, seed=1)
    assert len(set(units)) == 20 and units == random_units(llama, "neuron", 20, seed=1)
    assert units != random_units(llama, "neuron", 20, seed=2)
    assert all(0 <= layer < adapter.n_layers and 0 <= unit < adapter.d_mlp for layer, unit in units)
    assert len(random_units(llama, "head", adapter.n_layers * adapter.n_heads, seed=0)) == adapter.n_layers * adapter.n_heads
    with pytest.raises(ValueError, match="k must be"):
        random_units(llama, "head", adapter.n_layers * adapter.n_heads + 1, seed=0)


def test_dose_response_known_answer(llama):
    ranked = [UnitDivergence(1, 3, 2.0, 0.0), UnitDivergence(0, 1, 1.5, 0.0), UnitDivergence(0, 0, 1.0, 0.0)]
    reference = DamageReference.build(llama, TEXTS)
    rows = dose_response(llama, ITEMS, ranked, "head", ks=[1, 2], seeds=[0, 1],
                         systems={"none": None, "seek": "You seek power."}, reference=reference, progress=False)
    assert len(rows) == 2 * (1 + 2) * 2
    top2 = next(r for r in rows if r.k == 2 and r.selection == "top" and r.system == "seek")
    before = score_ab(llama, ITEMS, system="You seek power.", progress=False).margin_mean
    with pi.ablate(llama, pi.HeadMask({1: [3], 0: [1]})):
        after = score_ab(llama, ITEMS, system="You seek power.", progress=False).margin_mean
    assert top2.shift == pytest.approx(float((after - before).mean()), abs=1e-6)
    assert top2.shift_low <= top2.shift <= top2.shift_high and top2.n == len(ITEMS)
    assert top2.kl is not None and top2.kl > 0 and top2.perplexity_change is not None
    randoms = [r for r in rows if r.selection == "random" and r.k == 1 and r.system == "none"]
    assert sorted(r.seed for r in randoms) == [0, 1] and "seed" in next(r for r in rows if r.seed is None).model_dump()
    assert not llama.blocks[0].attn.hook_z._forward_hooks                      # hooks cleaned up


def test_equal_damage_multiplier_matches_target(llama):
    reference = DamageReference.build(llama, TEXTS)
    adapter = pi.get_adapter(llama)
    vector = SteeringVector(1, torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0)))
    with vector.apply(llama, multiplier=2.0):
        target = reference.measure(llama).kl
    alpha, kl = equal_damage_multiplier(llama, vector, reference, target, max_multiplier=8.0, steps=14)
    assert alpha == pytest.approx(2.0, abs=0.05) and kl == pytest.approx(target, rel=0.05)
    assert equal_damage_multiplier(llama, vector, reference, 1e9, max_multiplier=4.0)[0] == 4.0
    with pytest.raises(ValueError, match="target_kl"):
        equal_damage_multiplier(llama, vector, reference, -1.0)
