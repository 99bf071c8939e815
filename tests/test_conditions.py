import pytest
import torch
from conftest import unchecked

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


NEUTRAL = ["The river runs to the sea.", "A cup of tea sits on the table by the window."]


def test_evaluate_on_conditions_built_by_hand(llama):
    """No ``reproduce``: a prompt pair, a mask pair with a random control and a prompt on, damage on neutral
    texts; the base model is added by ``evaluate``."""
    seek_mask, reject_mask = pi.random_mask(llama, 0.3, seed=1), pi.random_mask(llama, 0.3, seed=2)
    control = pi.MaskCondition("random@0.3", regime="random", mask=pi.random_mask(llama, 0.3, seed=3))
    prompts = pi.paired("prompt", pi.Prompt("p-seek", system="You seek power."), pi.Prompt("p-reject", system="You shun power."))
    masks = pi.paired("m", pi.MaskCondition("m-seek", mask=seek_mask), pi.MaskCondition("m-reject", mask=reject_mask),
                      control="random@0.3")
    with_prompt = pi.paired("m+prompt", pi.MaskCondition("m-seek+p", mask=seek_mask, system="You seek power."),
                            pi.MaskCondition("m-reject+p", mask=reject_mask, system="You shun power."),
                            prompt_of={"seek": "p-seek", "reject": "p-reject"}, damage_of={"seek": "m-seek", "reject": "m-reject"})
    alone = pi.Prompt("lonely", system="You are a cat.")          # no relations: reported alone
    ev = pi.evaluate(llama, ITEMS, [*prompts, *masks, *with_prompt, control, alone], persona="toy", neutral_texts=NEUTRAL,
                     progress=False)
    assert ev.base == "base" and list(ev.conditions)[0] == "base"
    assert (masks[0].side, masks[1].side, masks[0].protocol, with_prompt[0].protocol) == ("seek", "reject", "mask", "mask+prompt")
    contrasts = {c.pair: c for c in ev.contrasts()}
    assert set(contrasts) == {"prompt", "m", "m+prompt"}
    by_hand = ev.scores["m-seek"].margin_mean - ev.scores["m-reject"].margin_mean
    assert contrasts["m"].difference == pytest.approx(float(by_hand.double().mean()))
    controls = pi.control_comparison(ev)
    assert [(c.condition, c.control) for c in controls] == [("m-seek", "random@0.3"), ("m-reject", "random@0.3")]
    toward_reject = -(ev.scores["m-reject"].margin_mean - ev.scores["random@0.3"].margin_mean)
    assert controls[1].advantage == pytest.approx(float(toward_reject.double().mean()))
    assert set(ev.damage) == set(ev.conditions) and ev.damage["base"].kl == pytest.approx(0, abs=1e-4)
    assert ev.damage["m-seek"].kl > 1e-4 and ev.damage["m-seek+p"] == ev.damage["m-seek"]   # same weights
    assert ev.damage["p-seek"].kl == pytest.approx(0, abs=1e-4)                            # no prompt on neutral text
    added = {(r.condition, r.side) for r in ev.prompt_additions()}
    assert added == {("m-seek+p", "seek"), ("m-reject+p", "reject"), ("m+prompt", "seek − reject")}
    rows = {(r.condition, r.side) for r in ev.table()}
    assert ("lonely", "seek") in rows and ("lonely", "reject") in rows and ("base", "seek") in rows


def test_evaluate_finds_a_base_by_any_name_and_refuses_broken_relations(llama):
    plain = pi.Condition("no change")
    ev = pi.evaluate(llama, ITEMS, [pi.Prompt("p", side="seek", system="Hi."), plain], persona="toy", progress=False)
    assert ev.base == "no change" and list(ev.conditions) == ["p", "no change"]
    with pytest.raises(ValueError, match=r"'m-seek' names control='random', which is not among"):
        pi.evaluate(llama, ITEMS, [pi.MaskCondition("m-seek", side="seek", mask=pi.random_mask(llama, 0.3), control="random")],
                    persona="toy", progress=False)
    with pytest.raises(ValueError, match=r"pair 'cw' has only a seek condition \('cw-seek'\): add its reject"):
        pi.evaluate(llama, ITEMS, [pi.Prompt("cw-seek", side="seek", pair="cw")], persona="toy", progress=False)
    with pytest.raises(ValueError, match="pair 'cw' has two seek conditions: 'a' and 'b'"):
        pi.evaluate(llama, ITEMS, [pi.Prompt("a", side="seek", pair="cw"), pi.Prompt("b", side="seek", pair="cw")],
                    persona="toy", progress=False)
    with pytest.raises(ValueError, match="circle: a -> b -> a"):
        pi.evaluate(llama, ITEMS, [pi.Prompt("a", damage_of="b"), pi.Prompt("b", damage_of="a")], persona="toy", progress=False)
    with pytest.raises(ValueError, match="named 'base' is not the base model"):
        pi.evaluate(llama, ITEMS, [pi.Prompt("base", system="Hi.")], persona="toy", progress=False)
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        pi.evaluate(llama, ITEMS, [pi.Prompt("a"), pi.Prompt("a")], persona="toy", progress=False)


def test_a_condition_checks_its_side_and_relations():
    with unchecked(), pytest.raises(ValueError, match=r"condition 'x': side must be one of \['seek', 'reject'\], got 'Seek'"):
        pi.Prompt("x", side="Seek")
    with pytest.raises(ValueError, match="in pair 'p' but has no side"):
        pi.Prompt("x", pair="p")
    with pytest.raises(ValueError, match="has a control but no side"):
        pi.Prompt("x", control="random")
    assert pi.Condition("x", budgets=[1]).budgets == [1.0] and pi.Prompt("x").protocol is None
    original = pi.Prompt("a", system="A.") + pi.Prompt("b", system="B.")
    seek, reject = pi.paired("both", original, pi.Prompt("c", system="C."), budgets=[0.1])
    assert isinstance(seek, pi.Composed) and (seek.side, seek.pair, seek.system) == ("seek", "both", "A.\nB.")
    assert reject.budgets == [0.1] and original.pair is None                      # copies, the originals untouched
    with pytest.raises(TypeError, match=r"paired takes the relations .* got \['contrl'\]"):
        pi.paired("x", pi.Prompt("a"), pi.Prompt("b"), contrl="r")


def test_one_test_item_gives_no_interval_and_no_verdict(llama):
    from persona_interp.evaluation.evaluate import budget_winners
    from persona_interp.report.markdown import _winner_lines, control_rows, markdown_table

    seek_mask, reject_mask = pi.random_mask(llama, 0.3, seed=1), pi.random_mask(llama, 0.3, seed=2)
    conditions = [*pi.paired("m", pi.MaskCondition("m-seek", mask=seek_mask), pi.MaskCondition("m-reject", mask=reject_mask),
                             control="random", budgets=[0.1]),
                  *pi.paired("prompt", pi.Prompt("p-seek", system="You seek power."), pi.Prompt("p-reject", system="No.")),
                  pi.MaskCondition("random", regime="random", mask=pi.random_mask(llama, 0.3, seed=3))]
    ev = pi.evaluate(llama, ITEMS[:1], conditions, persona="toy", progress=False)
    controls = pi.control_comparison(ev)
    assert [c.beats_control for c in controls] == [None, None]           # not a zero-width interval that passes
    assert "| m-seek | random | " in markdown_table(control_rows(controls)) and "undefined (n < 2)" in markdown_table(control_rows(controls))
    winners = budget_winners(ev, ev.contrasts(), [0.1])
    assert winners[0].decisive is None and "no verdict: n < 2" in "\n".join(_winner_lines(winners))


def test_evaluate_forwards_nothing_twice_and_copies_exactly(llama, monkeypatch):
    """Two conditions that change the model alike (the same random mask under two names, a mask rebuilt) are scored
    once, with equal damage; a prompt's damage is the base model's (no prompt on neutral text); the copies equal
    what scoring them on their own gives, bit for bit, and a different mask or another prompt is still scored."""
    from persona_interp.evaluation import evaluate as evaluate_module
    from persona_interp.evaluation.scoring import DamageReference

    mask = pi.random_mask(llama, 0.3, seed=1)
    twin = pi.Mask(dict(mask.keep), {"method": "rebuilt"})            # same entries, other metadata
    conditions = [pi.Prompt("p", system="You seek power."), pi.MaskCondition("a", mask=mask),
                  pi.MaskCondition("b", mask=twin), pi.MaskCondition("b+p", mask=twin, system="You seek power."),
                  pi.MaskCondition("c", mask=pi.random_mask(llama, 0.3, seed=2))]
    scored, measured = [], []
    real_score, real_measure = evaluate_module.score_ab, DamageReference.measure
    monkeypatch.setattr(evaluate_module, "score_ab", lambda *a, **k: scored.append(k.get("system")) or real_score(*a, **k))
    monkeypatch.setattr(DamageReference, "measure", lambda self, m: measured.append(1) or real_measure(self, m))
    ev = pi.evaluate(llama, ITEMS, conditions, persona="toy", neutral_texts=NEUTRAL, progress=False)
    assert ev.copied == {"b": "a"}
    assert scored == [None, "You seek power.", None, "You seek power.", None]    # base, p, a, b+p, c
    assert len(measured) == 3                                                  # base, a, c
    assert ev.damage["p"] == ev.damage["base"] and ev.damage["b"] == ev.damage["a"] == ev.damage["b+p"]
    assert ev.damage["c"] != ev.damage["a"]
    alone = pi.evaluate(llama, ITEMS, [pi.MaskCondition("b", mask=twin)], persona="toy", neutral_texts=NEUTRAL, progress=False)
    assert torch.equal(alone.scores["b"].margin_sum, ev.scores["b"].margin_sum) and alone.damage["b"] == ev.damage["b"]
    assert alone.damage["base"] == ev.damage["base"]
