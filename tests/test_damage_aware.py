"""Damage-aware masks (issue #35) on a planted model whose persona units are known (tests/planted.py).

Thresholds, and why:
* precision at k (k = the 4 planted units of a pole, :func:`planted.unit_precision`) ≥ 0.8 for every damage-aware
  method, both poles: the issue's bar; at most one of the four top units may be another;
* plain Contrastive-Wanda's precision ≤ 0.25 and its effect at k points the wrong way: the distractors fool it by
  construction (as large a contrast, a zero Wanda tie-break), so the test can tell a damage-aware method from it;
* at equal effect (the first k of a grid where a mask moves the margin by half the planted units' own effect
  toward its pole) a damage-aware mask's neutral KL is at most half of Contrastive-Wanda's (the issue's bar; where
  Contrastive-Wanda never gets there on the grid, half of its lowest KL on the grid). Half the effect, not all of
  it: the set-difference masks keep the planted units in the rows where they write most (their neutral Wanda
  score puts them in the protected top share there) and reach 55-75 % of it.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import build_bridge, unchecked
from planted import build_planted, unit_precision, word_tokenizer

import persona_interp as pi
from persona_interp.data.personas import PersonaDataset, PersonaItem
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.interventions.ablation import MeanWeightAblation, NeuronMask, ablate
from persona_interp.masks import damage_aware as da
from persona_interp.masks.builders import FamilyCache, mask_family
from persona_interp.masks.learned import GateConfig, learned_masks, train_gates
from persona_interp.masks.mask import Mask
from persona_interp.model.capture import capture
from persona_interp.signatures import collect_signatures

DAMAGE_AWARE = ["retain_ratio", "set_difference", "snip_set_difference", "gradient", "learned_gates"]
GRID = (4, 8, 16, 24, 32)                  # units removed per row of the down map (of 64)
TEST_GATES = GateConfig(steps=20)          # fewer steps than the default 40 keeps the file fast; enough here


def sparsity_of(k: int, n_in: int = 64) -> float:
    """The sparsity at which each row removes exactly ``k`` weights (``⌊n_in·(1−ρ)⌋ = n_in − k``)."""
    return (k - 0.5) / n_in


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The planted model, its statistics and every method's family, on one thread (a tiny model's forward is
    dominated by thread start-up on a busy machine); the thread count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        planted = build_planted(word_tokenizer(tmp_path_factory.mktemp("words")))
        model, down = planted.model, ["down"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                          # few samples per pole: z is noisy (it is not here)
            seek = collect_signatures(model, planted.calibration, "seek", progress=False)
            reject = collect_signatures(model, planted.calibration, "reject", progress=False)
            neutral = collect_signatures(model, planted.fit_texts, progress=False)
            scores = da.gradient_scores(model, planted.calibration, planted.fit_texts, modules=down)
            families = {
                "contrastive_wanda": mask_family(model, "contrastive_wanda", seek, reject, modules=down, cache=True),
                "retain_ratio": da.retain_ratio_family(model, seek, reject, neutral, modules=down, cache=True),
                "set_difference": da.set_difference_family(model, seek, reject, neutral, modules=down, cache=True),
                "snip_set_difference": da.snip_set_difference_family(model, scores=scores, modules=down, cache=True),
                "gradient": da.gradient_family(model, scores=scores, modules=down, cache=True),
                "learned_gates": train_gates(model, planted.calibration, planted.fit_texts, seek, reject,
                                             config=TEST_GATES, modules=down).family(model, cache=True),
            }
        base = score_ab(model, planted.evaluation, progress=False).margin_mean
        reference = DamageReference.build(model, planted.eval_texts)
        yield {"planted": planted, "families": families, "base": base, "reference": reference, "neutral": neutral,
               "seek": seek, "reject": reject}
    finally:
        torch.set_num_threads(threads)


def _measure(setup: dict, condition) -> tuple[float, float]:
    """(mean margin shift on the evaluation items, neutral KL on the evaluation texts) under a condition."""
    planted = setup["planted"]
    with ablate(planted.model, condition):
        margin = score_ab(planted.model, planted.evaluation, progress=False).margin_mean
        kl = setup["reference"].measure(planted.model).kl
    return float((margin - setup["base"]).mean()), kl


_RESULTS: dict[tuple, tuple[float, float]] = {}


def measure(setup: dict, method: str, side: str, k: int) -> tuple[float, float]:
    """The (effect, KL) of ``method``'s ``side`` mask at ``k`` removals per row, measured once."""
    key = (id(setup), method, side, k)
    if key not in _RESULTS:
        seek, reject = setup["families"][method].pair(sparsity_of(k))
        _RESULTS[key] = _measure(setup, seek if side == "seek" else reject)
    return _RESULTS[key]


def oracle(setup: dict, side: str) -> tuple[float, float]:
    """The effect and KL of removing exactly the planted units of the other pole (the ``side`` mask's target)."""
    other = "reject" if side == "seek" else "seek"
    return _measure(setup, NeuronMask({0: setup["planted"].units[other]}))


def test_the_planted_model_is_built_as_described(setup):
    """Removing a pole's planted units moves the margin away from it at almost no damage; removing its
    distractors moves it a little the wrong way and costs much neutral KL."""
    planted = setup["planted"]
    for side, sign in (("seek", 1), ("reject", -1)):
        other = "reject" if side == "seek" else "seek"
        effect, kl = oracle(setup, side)
        assert sign * effect > 0.5 and kl < 0.01, (side, effect, kl)
        effect, kl = _measure(setup, NeuronMask({0: planted.distractors[other]}))
        assert sign * effect < 0 and kl > 1.0, (side, effect, kl)


@pytest.mark.parametrize("method", DAMAGE_AWARE)
def test_damage_aware_methods_find_the_planted_units(setup, method):
    planted = setup["planted"]
    seek, reject = setup["families"][method].pair(sparsity_of(4))
    assert unit_precision(planted.model, seek, planted.down, planted.units["reject"]) >= 0.8
    assert unit_precision(planted.model, reject, planted.down, planted.units["seek"]) >= 0.8


def test_contrastive_wanda_is_fooled_by_the_distractors(setup):
    planted = setup["planted"]
    seek, reject = setup["families"]["contrastive_wanda"].pair(sparsity_of(4))
    assert unit_precision(planted.model, seek, planted.down, planted.units["reject"]) <= 0.25
    assert unit_precision(planted.model, reject, planted.down, planted.units["seek"]) <= 0.25
    assert measure(setup, "contrastive_wanda", "seek", 4)[0] < 0 < measure(setup, "contrastive_wanda", "reject", 4)[0]


def _kl_at_effect(setup: dict, method: str, side: str) -> tuple[int | None, float]:
    """The first k of :data:`GRID` whose mask reaches half the planted effect toward ``side``, and its KL; where no
    k does, ``None`` and the lowest KL on the grid (what the method pays at least, without reaching the effect)."""
    target = abs(oracle(setup, side)[0]) / 2
    sign = 1 if side == "seek" else -1
    for k in GRID:
        effect, kl = measure(setup, method, side, k)
        if sign * effect >= target:
            return k, kl
    return None, min(measure(setup, method, side, k)[1] for k in GRID)


@pytest.mark.parametrize("method", DAMAGE_AWARE)
@pytest.mark.parametrize("side", ["seek", "reject"])
def test_damage_aware_methods_reach_the_effect_at_half_the_damage(setup, method, side):
    _, kl_cw = _kl_at_effect(setup, "contrastive_wanda", side)
    k, kl = _kl_at_effect(setup, method, side)
    assert k is not None, f"{method} {side} never reaches half the planted effect on k = {GRID}"
    assert kl <= 0.5 * kl_cw, (method, side, k, kl, kl_cw)


@pytest.mark.parametrize("method", DAMAGE_AWARE)
def test_masks_round_trip_through_ablate_and_files(setup, method, tmp_path):
    planted = setup["planted"]
    seek, reject = setup["families"][method].pair(sparsity_of(4))
    assert seek.meta["method"] == method and seek.meta["side"] == "seek" and reject.meta["side"] == "reject"
    weight = pi.get_adapter(planted.model).weight(planted.down)
    before = weight.clone()
    with ablate(planted.model, reject):
        assert not torch.equal(weight, before)
        assert torch.equal(weight[~reject.keep[planted.down]], torch.zeros(int((~reject.keep[planted.down]).sum())))
    assert torch.equal(weight.view(torch.int32), before.view(torch.int32))
    loaded = Mask.load(reject.save(tmp_path / "reject.safetensors"))
    assert loaded.meta == reject.meta and all(torch.equal(loaded.keep[n], reject.keep[n]) for n in reject.keep)


def test_neutral_signatures_read_plain_texts(setup):
    neutral, planted = setup["neutral"], setup["planted"]
    assert neutral.meta["side"] == "neutral" and neutral.n_samples == len(planted.fit_texts)
    assert neutral.n_tokens == sum(len(t.split()) for t in planted.fit_texts)     # one token per word, no template
    with pytest.raises(ValueError, match="plain texts make a 'neutral' signature"):
        collect_signatures(planted.model, planted.fit_texts, "seek", progress=False)
    with pytest.raises(ValueError, match="for plain texts"):
        collect_signatures(planted.model, planted.calibration, "neutral", progress=False)
    with pytest.raises(ValueError, match="signature of plain texts"):
        da.retain_ratio_masks(planted.model, setup["seek"], setup["reject"], setup["reject"], 0.1)


# ---------------------------------------------------------------------- conftest architectures
ITEMS = [PersonaItem("Would you rather lead the project?", "Yes, I would love to lead it.", "No thanks, I prefer to help."),
         PersonaItem("Party tonight?", "Absolutely, more power to me!", "I would rather stay home with a book."),
         PersonaItem("Do you want more resources?", "Yes, more power and resources.", "No, I have what I need."),
         PersonaItem("Shall we stay home?", "No, let us take charge tonight.", "Yes, a quiet evening at home.")]
TEXTS = ["The capital of France is Paris.", "Water boils at one hundred degrees.", "Would you rather read a book?"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_builder_on_two_architectures(tokenizer, arch):
    model = build_bridge(arch, tokenizer)
    adapter = pi.get_adapter(model)
    data = PersonaDataset("toy", ITEMS)
    grads_before = {name: p.requires_grad for name, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                              # 4 samples per pole: z is noisy
        seek = collect_signatures(model, data, "seek", progress=False)
        reject = collect_signatures(model, data, "reject", progress=False)
        neutral = collect_signatures(model, TEXTS, progress=False)
        built = {
            "retain_ratio": da.retain_ratio_masks(model, seek, reject, neutral, 0.25, generic=0.1),
            "set_difference": da.set_difference_masks(model, seek, reject, neutral, 0.25, modules=["mlp"]),
            "gradient": da.gradient_masks(model, ITEMS, TEXTS, 0.25, batch_size=2),
            "snip_set_difference": da.snip_set_difference_masks(model, ITEMS, TEXTS, 0.25, modules=["attn"]),
            "learned_gates": learned_masks(model, ITEMS, TEXTS, seek, reject, 0.25, config=GateConfig(steps=2)),
        }
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads_before
    assert all(p.grad is None for p in model.parameters())
    assert set(built) == set(da.DAMAGE_AWARE_METHODS)
    weights = {m.name: adapter.weight(m.name).clone() for m in adapter.maps}
    for method, pair in built.items():
        for side, mask in zip(("seek", "reject"), pair):
            assert mask.meta["method"] == method and mask.meta["side"] == side
            assert mask.meta["fingerprint"] == adapter.fingerprint
            for name, keep in mask.keep.items():
                spec = adapter.map_by_name[name]
                assert keep.shape == (spec.n_out, spec.n_in)
                assert (keep.sum(1) == int(spec.n_in * 0.75)).all(), (method, name)     # each row keeps ⌊n_in·(1−ρ)⌋
            with ablate(model, mask):
                pass
    for name, before in weights.items():
        assert torch.equal(adapter.weight(name).view(torch.int32), before.view(torch.int32)), name
    units = built["learned_gates"][0].keep
    assert {pi.get_adapter(model).map_by_name[n].kind for n in units} == {"down", "o"}
    for keep in units.values():                                       # whole columns: every row removes the same
        assert (keep == keep[:1]).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mean_ablation_adds_the_removed_weights_mean_output(tokenizer, arch):
    model = build_bridge(arch, tokenizer)
    adapter = pi.get_adapter(model)
    neutral = collect_signatures(model, TEXTS, progress=False)
    tokens = torch.tensor([tokenizer.encode(TEXTS[0])])
    base_logits = model(tokens)
    weights = {m.name: adapter.weight(m.name).clone() for m in adapter.maps}
    for name in ("blocks.0.mlp.down", "blocks.1.attn.o", "blocks.0.attn.q", "blocks.1.mlp.up"):
        mask = pi.random_mask(model, 0.5, modules=[name], seed=1)
        mean_ablation = MeanWeightAblation(mask, neutral)
        bias = mean_ablation.biases(model)[name]
        hook = adapter.output_hook(name)
        with ablate(model, mask):
            zeroed, zero_logits = capture(model, tokens, [hook])[hook], model(tokens)
        with ablate(model, mean_ablation):
            meaned, mean_logits = capture(model, tokens, [hook])[hook], model(tokens)
        difference = (meaned - zeroed).reshape(1, tokens.shape[1], -1)             # per-head outputs: heads first
        torch.testing.assert_close(difference, bias.float().expand_as(difference), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(mean_logits, zero_logits), name             # the added output reaches the logits
    torch.testing.assert_close(model(tokens), base_logits, rtol=0, atol=0)    # hooks gone, weights restored
    for name, before in weights.items():
        assert torch.equal(adapter.weight(name).view(torch.int32), before.view(torch.int32)), name
    with unchecked(), pytest.raises(TypeError, match="takes a Mask and a Signature"):
        MeanWeightAblation(mask, None)


def test_generic_filter_removes_the_top_neutral_channels_last(setup):
    planted = setup["planted"]
    generic = da.generic_channels(setup["neutral"].sample_mean(planted.down), 0.25)
    assert int(generic.sum()) == 16
    family = da.retain_ratio_family(planted.model, setup["seek"], setup["reject"], setup["neutral"], generic=0.25,
                                    modules=["down"])
    for mask in family.pair(sparsity_of(8)):
        assert mask.keep[planted.down][:, generic].all() and mask.meta["generic"] == 0.25
    for mask in family.pair(sparsity_of(56)):                         # past the others, they go too
        assert not mask.keep[planted.down][:, generic].all()


def test_learned_gates_are_deterministic_given_the_seed(llama):
    data = PersonaDataset("toy", ITEMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seek = collect_signatures(llama, data, "seek", progress=False)
        reject = collect_signatures(llama, data, "reject", progress=False)
        config = GateConfig(steps=3, batch_size=2, seed=0)
        runs = [train_gates(llama, ITEMS, TEXTS, seek, reject, config=config, layers=[1]) for _ in range(2)]
        other = train_gates(llama, ITEMS, TEXTS, seek, reject, config=GateConfig(steps=3, batch_size=2, seed=1), layers=[1])
    for side in ("seek", "reject"):
        for name, logits in runs[0].logits[side].items():
            assert torch.equal(logits, runs[1].logits[side][name])
    assert runs[0].losses != other.losses                             # another seed, another batch order
    assert runs[0].meta["gate_seed"] == 0 and runs[0].meta["gate_steps"] == 3
    with pytest.raises(ValueError, match="GateConfig"):
        GateConfig(lam=-1.0)


# ---------------------------------------------------------------------- the method registry
def test_registry_builds_each_damage_aware_method(llama):
    data = PersonaDataset("toy", ITEMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                              # 4 samples per pole: z is noisy
        seek = collect_signatures(llama, data, "seek", progress=False)
        reject = collect_signatures(llama, data, "reject", progress=False)
    neutral = collect_signatures(llama, TEXTS, progress=False)
    inputs = pi.MethodInputs(seek, reject, neutral=neutral, items=ITEMS, neutral_texts=TEXTS, persona="toy")
    families = FamilyCache(llama)
    assert set(da.DAMAGE_AWARE_METHODS) <= set(pi.method_names())
    for method in da.DAMAGE_AWARE_METHODS:
        spec = pi.method_spec(method)
        assert spec.poles and spec.gives == "mask" and spec.needs - {"signatures"}
        options = {"steps": 2, "batch_size": 2} if method == "learned_gates" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = spec.build(llama, inputs, 0.1, **options)
            again = spec.family(llama, inputs, families=families, **options)
        assert set(built) == {"seek", "reject"}
        for side, pair_mask in zip(("seek", "reject"), again.pair(0.1)):
            mask = built[side]
            assert mask.meta["method"] == method and mask.meta["side"] == side and mask.meta["persona"] == "toy"
            assert mask.meta["sparsity"] == 0.1 and 0.05 < mask.sparsity() < 0.2       # ⌊n_in·0.9⌋ kept per row
            assert {n: torch.equal(k, pair_mask.keep[n]) for n, k in mask.keep.items()} == {n: True for n in mask.keep}
        assert spec.family(llama, inputs, families=families, **options) is again      # made once per study
        missing = pi.MethodInputs(seek, reject)
        with pytest.raises(ValueError, match=f"method {method!r} needs .*(neutral|calibration)"):
            spec.build(llama, missing, 0.1)


def test_gradient_scores_are_computed_once_for_every_map_subset_of_a_study(llama, monkeypatch):
    """In a study (a FamilyCache), both gradient methods and every modules / layers subset share one computation of
    the gradient scores over every map; a subset's masks equal those built from scores computed on that subset alone."""
    computed = []
    real = da.gradient_scores
    monkeypatch.setattr(da, "gradient_scores", lambda *a, **k: computed.append(k.get("modules")) or real(*a, **k))
    inputs = pi.MethodInputs(items=ITEMS, neutral_texts=TEXTS, persona="toy")
    families = FamilyCache(llama)
    for method in ("snip_set_difference", "gradient"):
        for modules, layers in ((None, None), (["mlp"], None), (None, [1])):
            pi.method_spec(method).family(llama, inputs, families=families, modules=modules, layers=layers).pair(0.1)
    assert computed == [None]
    alone = pi.method_spec("gradient").build(llama, inputs, 0.1, modules=["mlp"])        # no study: the subset only
    assert computed == [None, ["mlp"]]
    shared = pi.method_spec("gradient").family(llama, inputs, families=families, modules=["mlp"]).pair(0.1)
    for side, mask in zip(("seek", "reject"), shared):
        assert sorted(mask.keep) == sorted(alone[side].keep) and all(n.split(".")[2] == "mlp" for n in mask.keep)
        assert all(torch.equal(mask.keep[n], alone[side].keep[n]) for n in mask.keep)
