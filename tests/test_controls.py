"""Random controls matched on damage, and the control comparison that reports them."""
import math

import pytest
import torch

import persona_interp as pi
from persona_interp.evaluation import controls
from persona_interp.evaluation.controls import MatchedControlConfig, damage_matched_random
from persona_interp.evaluation.evaluate import control_comparison, evaluate
from persona_interp.evaluation.scoring import DamageReference, Measured
from persona_interp.evaluation.stats import paired_difference
from persona_interp.interventions.conditions import MaskCondition

TEXTS = ["The capital of France is Paris.", "I would love to lead the project and take charge of it."]
ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Run the company?", "Yes, I will run it all.", "I would rather not.")]


def test_the_matched_control_has_the_masks_damage_within_tolerance(llama):
    reference = pi.DamageReference.build(llama, TEXTS)
    mask = pi.magnitude_mask(llama, 0.4, modules=["mlp"])
    with pi.ablate(llama, mask):
        target = reference.measure(llama).kl
    same = pi.random_mask(llama, 0.4, seed=0, modules=["mlp"])
    with pi.ablate(llama, same):
        assert reference.measure(llama).kl > 2 * target              # the same sparsity is far more damaging
    control = damage_matched_random(llama, mask, reference, seed=0, tolerance=0.05, max_iter=20)
    assert control.converged and control.target == pytest.approx(target)
    assert abs(control.kl - target) <= 0.05 * target + 1e-4
    assert set(control.mask.keep) == set(mask.keep)                       # the mask's maps only
    assert control.sparsity < 0.4 and control.mask.sparsity() == pytest.approx(control.sparsity, abs=0.02)
    with pi.ablate(llama, control.mask):
        assert reference.measure(llama).kl == pytest.approx(control.kl)
    assert (control.sparsity, control.kl) in control.tried and len(control.tried) <= 20
    assert control.mask.meta["matched_to"] == "magnitude" and control.mask.meta["method"] == "random"
    again = damage_matched_random(llama, mask, reference, seed=0, tolerance=0.05, max_iter=20)
    assert again.tried == control.tried                                   # seeded


class _FakeReference(DamageReference):
    """KL as a made-up function of the random sparsity last built (the real one is measured)."""

    def __init__(self, kl):
        self.kl, self.rho = kl, None

    def measure(self, model):
        return Measured(perplexity=1.0, kl=self.kl(self.rho))


def _fake(monkeypatch, kl):
    fake = _FakeReference(kl)
    real = controls.random_mask

    def spy(model, rho, **kw):
        fake.rho = rho
        return real(model, rho, **kw)

    monkeypatch.setattr(controls, "random_mask", spy)
    return fake


def test_bisection_keeps_the_closest_when_damage_is_not_monotone(llama, monkeypatch):
    mask = pi.magnitude_mask(llama, 0.3, modules=["mlp"])
    wiggly = _fake(monkeypatch, lambda rho: 10 * rho + 2.5 * math.sin(60 * rho))          # rises, with dips
    control = damage_matched_random(llama, mask, wiggly, target=2.0, tolerance=0.0, atol=1e-9, max_iter=12)
    distances = [abs(kl - 2.0) for _, kl in control.tried]
    assert len(control.tried) == 12 and not control.converged
    assert abs(control.kl - 2.0) == min(distances)                        # the closest measured, not the last
    assert control.kl == pytest.approx(10 * control.sparsity + 2.5 * math.sin(60 * control.sparsity))
    assert abs(control.kl - 2.0) < 0.05
    step = _fake(monkeypatch, lambda rho: 0.0 if rho < 0.1 else 5.0)                     # no ρ gives KL 1
    control = damage_matched_random(llama, mask, step, target=1.0, max_iter=8)
    assert not control.converged and control.kl in (0.0, 5.0) and len(control.tried) == 8
    flat = _fake(monkeypatch, lambda rho: 0.01)                                           # never reaches the target
    control = damage_matched_random(llama, mask, flat, target=1.0, max_iter=5)
    assert not control.converged and [rho for rho, _ in control.tried][-1] > 0.9          # widened toward 1


def test_bad_input_is_refused(llama):
    reference = pi.DamageReference.build(llama, TEXTS[:1])
    with pytest.raises(TypeError, match="Mask"):
        damage_matched_random(llama, "mask", reference)
    with pytest.raises(ValueError, match="max_iter"):
        damage_matched_random(llama, pi.magnitude_mask(llama, 0.1), reference, max_iter=0)
    with pytest.raises(ValueError, match="unknown mask method"):
        MatchedControlConfig(methods=["wandaa"])


def test_control_comparison_reports_both_controls_side_by_side(llama):
    reference = pi.DamageReference.build(llama, TEXTS)
    mask = pi.magnitude_mask(llama, 0.2, modules=["mlp"])
    same = pi.random_mask(llama, 0.2, seed=0, modules=["mlp"])
    matched = damage_matched_random(llama, mask, reference, max_iter=6).mask
    conditions = [pi.Condition(), MaskCondition("random@0.2", regime="random", mask=same),
                  MaskCondition("random-matched", regime="random", mask=matched),
                  MaskCondition("mag-seek", side="seek", regime="magnitude", mask=mask,
                                control="random@0.2", matched_control="random-matched"),
                  MaskCondition("mag-reject", side="reject", regime="magnitude", mask=mask, control="random@0.2")]
    ev = evaluate(llama, ITEMS, conditions, persona="p", progress=False)
    rows = {row.condition: row for row in control_comparison(ev)}
    seek, reject = rows["mag-seek"], rows["mag-reject"]
    margin = {name: s.margin_mean for name, s in ev.scores.items()}
    expected = paired_difference(margin["mag-seek"], margin["random-matched"])
    assert seek.matched_control == "random-matched" and seek.matched_advantage == pytest.approx(expected.value)
    assert seek.beats_matched == (expected.low > 0) and seek.control == "random@0.2"
    assert reject.control == "random@0.2" and reject.matched_control is None      # never the matched one
    assert "matched_control" not in reject.model_dump() and "matched_control" in seek.model_dump()
    assert reject.advantage == pytest.approx(float((margin["random@0.2"] - margin["mag-reject"]).mean()))
    assert not torch.equal(matched.keep[next(iter(matched.keep))], same.keep[next(iter(same.keep))])


def test_random_mask_without_the_per_row_count_is_nested_and_goes_below_one_weight_per_row(llama):
    small, large = (pi.random_mask(llama, rho, seed=3, modules=["mlp"], per_row=False) for rho in (0.005, 0.3))
    per_row = pi.random_mask(llama, 0.005, seed=3, modules=["mlp"])
    assert small.sparsity() < 0.02 < per_row.sparsity()                  # per row, at least one weight goes
    assert large.sparsity() == pytest.approx(0.3, abs=0.03)
    assert all(bool((large.keep[n] <= small.keep[n]).all()) for n in large.keep)   # removed at 0.005 ⊂ removed at 0.3
    assert small.meta["per_row"] is False and "per_row" not in per_row.meta
