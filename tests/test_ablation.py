import pytest
import torch
from conftest import unchecked

import persona_interp as pi
from hand_weights import multiply_by_hand
from persona_interp.masks.mask import Mask

TOKENS = torch.tensor([[3, 17, 42, 5, 99, 7, 11], [8, 9, 10, 11, 12, 13, 14]])


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_bit_exact(model, saved):
    for name, p in model.named_parameters():
        assert torch.equal(p, saved[name]), name


def _twin(model_kind, tokenizer):
    """A second copy of the fixture model (built again: deepcopy would untie GPT-2's shared qkv storage)."""
    from conftest import build_model

    return build_model(model_kind, tokenizer)


def test_ablate_equals_weights_multiplied_by_hand(tiny_model, model_kind, tokenizer):
    mask = pi.random_mask(tiny_model, 0.4, seed=3)
    reference = _twin(model_kind, tokenizer)
    for name, keep in mask.keep.items():
        multiply_by_hand(reference, model_kind, name, keep.float())
    expected = reference(TOKENS)
    base = tiny_model(TOKENS)
    with pi.ablate(tiny_model, mask) as model:
        got = model(TOKENS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3           # the mask did something


def test_soft_gate(tiny_model, model_kind, tokenizer):
    mask = pi.random_mask(tiny_model, 0.5, seed=1)
    reference = _twin(model_kind, tokenizer)
    for name, keep in mask.keep.items():
        multiply_by_hand(reference, model_kind, name, keep.float() + 0.25 * (1 - keep.float()))
    with pi.ablate(tiny_model, mask, gamma=0.25):
        torch.testing.assert_close(tiny_model(TOKENS), reference(TOKENS), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="gamma"):
        with pi.ablate(tiny_model, mask, gamma=1.0):
            pass


def test_restore_is_bit_exact_also_on_exception(tiny_model):
    saved = _params(tiny_model)
    mask = pi.random_mask(tiny_model, 0.7, seed=0)
    with pi.ablate(tiny_model, mask):
        pass
    _assert_bit_exact(tiny_model, saved)
    with pytest.raises(KeyError):
        with pi.ablate(tiny_model, mask):
            raise KeyError("boom")
    _assert_bit_exact(tiny_model, saved)
    with pi.ablate(tiny_model, mask):   # the conflict registry was cleared too
        pass


def test_nested_ablations(tiny_model):
    saved = _params(tiny_model)
    attn = pi.random_mask(tiny_model, 0.5, seed=0, modules=["attn"])
    mlp = pi.random_mask(tiny_model, 0.5, seed=0, modules=["mlp"])
    both = attn | mlp
    with pi.ablate(tiny_model, attn):
        with pi.ablate(tiny_model, mlp):
            nested = tiny_model(TOKENS)
        with pytest.raises(RuntimeError, match="conflicts"):
            with pi.ablate(tiny_model, attn):
                pass
    _assert_bit_exact(tiny_model, saved)
    combined = Mask({**attn.keep, **mlp.keep}, attn.meta)
    with pi.ablate(tiny_model, combined):
        torch.testing.assert_close(tiny_model(TOKENS), nested)
    assert both.sparsity() == 0.0  # union of disjoint-map masks keeps all


def test_ablate_rejects_mismatched_masks(tiny_model, tokenizer, model_kind):
    from conftest import build_model

    other = build_model(model_kind, tokenizer, seed=5)
    mask = pi.random_mask(other, 0.5)
    with pytest.raises(pi.ModelMismatchError, match="built for model"):
        with pi.ablate(tiny_model, mask):
            pass
    name = pi.get_adapter(tiny_model).maps[0].name
    wrong_shape = Mask({name: torch.ones(3, 3, dtype=torch.bool)}, {})
    with pytest.raises(pi.ModelMismatchError, match="shape"):
        with pi.ablate(tiny_model, wrong_shape):
            pass
    missing = Mask({"blocks.9.attn.q": torch.ones(3, 3, dtype=torch.bool)}, {})
    with pytest.raises(pi.ModelMismatchError, match="lacks"):
        with pi.ablate(tiny_model, missing):
            pass
    with unchecked(), pytest.raises(TypeError, match="Mask, NeuronMask or HeadMask"):
        with pi.ablate(tiny_model, {"a": 1}):
            pass


def _columns_mask(model, name, columns):
    spec = pi.get_adapter(model).map_by_name[name]
    keep = torch.ones(spec.n_out, spec.n_in, dtype=torch.bool)
    keep[:, columns] = False
    return Mask({name: keep}, {"fingerprint": pi.get_adapter(model).fingerprint})


def test_neuron_zero_ablation_equals_removing_down_columns(tiny_model):
    neurons = [0, 5, 7]
    with pi.ablate(tiny_model, pi.NeuronMask({1: neurons})):
        hooked = tiny_model(TOKENS)
    with pi.ablate(tiny_model, _columns_mask(tiny_model, "blocks.1.mlp.down", neurons)):
        weights = tiny_model(TOKENS)
    torch.testing.assert_close(hooked, weights, atol=1e-5, rtol=1e-5)


def test_head_zero_ablation_equals_removing_o_columns(tiny_model):
    adapter = pi.get_adapter(tiny_model)
    head = 2
    columns = list(range(head * adapter.d_head, (head + 1) * adapter.d_head))
    heads = pi.HeadMask({0: [head]})
    hooked = tiny_model.run_with_hooks(TOKENS, fwd_hooks=heads.fwd_hooks(tiny_model))
    with pi.ablate(tiny_model, _columns_mask(tiny_model, "blocks.0.attn.o", columns)):
        weights = tiny_model(TOKENS)
    torch.testing.assert_close(hooked, weights, atol=1e-5, rtol=1e-5)


def test_mean_ablation_writes_the_signature_means(tiny_model, pairs):
    adapter = pi.get_adapter(tiny_model)
    sig = pi.collect_signatures(tiny_model, pairs, progress=False)
    neurons, heads = pi.NeuronMask({1: [2, 3]}, mode="mean", signature=sig), pi.HeadMask({0: [1]}, mode="mean", signature=sig)
    seen = {}
    capture = [(adapter.neuron_hook(1), lambda x, hook: seen.__setitem__("n", x.clone())),
               (adapter.head_hook(0), lambda x, hook: seen.__setitem__("h", x.clone()))]
    tiny_model.run_with_hooks(TOKENS, fwd_hooks=neurons.fwd_hooks(tiny_model) + heads.fwd_hooks(tiny_model) + capture)
    expected_n = sig.neuron_mean(1)[[2, 3]].float().expand(*TOKENS.shape, 2)
    torch.testing.assert_close(seen["n"][..., [2, 3]], expected_n)
    torch.testing.assert_close(seen["h"][..., 1, :], sig.head_z_mean(0)[1].float().expand(*TOKENS.shape, -1))


def test_hook_masks_clean_up(tiny_model):
    base = tiny_model(TOKENS)
    with pytest.raises(ValueError, match="inner"):
        with pi.ablate(tiny_model, pi.HeadMask({0: [0, 1]})):
            raise ValueError("inner")
    torch.testing.assert_close(tiny_model(TOKENS), base)
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())


def test_hook_mask_errors(tiny_model):
    with pytest.raises(ValueError, match="out of range"):
        pi.NeuronMask({0: [10_000]}).fwd_hooks(tiny_model)
    with pytest.raises(ValueError, match="layer 9 out of range"):
        pi.HeadMask({9: [0]}).fwd_hooks(tiny_model)
    with pytest.raises(ValueError, match="needs a signature"):
        pi.HeadMask({0: [0]}, mode="mean").fwd_hooks(tiny_model)
    with pytest.raises(ValueError, match="'zero' or 'mean'"):
        pi.HeadMask({0: [0]}, mode="resample").fwd_hooks(tiny_model)


def test_a_mask_and_a_lora_on_one_weight_are_refused_and_leave_it_untouched(llama):
    """Every weight edit goes through one guard: a LoRA inside a mask on the same map (or the other way round)
    raises before changing anything; on disjoint maps they nest and both undo bit-exact."""
    from persona_interp.interventions.lora import LoRA, LoRAConfig, init_factors

    saved = {n: p.detach().clone() for n, p in llama.named_parameters()}
    A, B = init_factors(llama, LoRAConfig(rank=2, modules=["mlp"], layers=[0], seed=0))
    lora = LoRA(A, {n: torch.randn_like(b) for n, b in B.items()}, 1.0)
    same = pi.random_mask(llama, 0.3, modules=["mlp"], layers=[0])
    other = pi.random_mask(llama, 0.3, modules=["mlp"], layers=[1])
    edits = {"mask": lambda: pi.ablate(llama, same), "lora": lambda: lora.apply(llama)}
    for outer, inner in (("mask", "lora"), ("lora", "mask")):
        with edits[outer]():
            during = {n: p.detach().clone() for n, p in llama.named_parameters()}
            with pytest.raises(RuntimeError, match="conflicts with an active weight edit"):
                with edits[inner]():
                    pass
            assert all(torch.equal(p, during[n]) for n, p in llama.named_parameters())
    with lora.apply(llama), pi.ablate(llama, other):
        pass
    assert all(torch.equal(p, saved[n]) for n, p in llama.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_set_aside_zero_and_put_back_are_bit_exact_on_both_paths(dtype, layout):
    """The numpy path (contiguous CPU) and the torch path (any other tensor) keep exactly the removed entries,
    zero them to +0 without touching the kept bits, and restore every bit: NaN payloads and −0 included."""
    from persona_interp.interventions.ablation import put_back, set_aside, zero_removed

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(12, 20, generator=generator).to(dtype)
    base[0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")]).to(dtype)
    weight = base.clone() if layout == "contiguous" else base.t().clone().t()     # same values, column-major
    keep = torch.rand(12, 20, generator=generator) > 0.3
    keep[0, :4] = False
    bits = {2: torch.int16, 4: torch.int32}[weight.element_size()]
    before = weight.clone()
    values = set_aside(weight, keep)
    assert values.numel() == int((~keep).sum())
    zero_removed(weight, keep)
    assert not weight.view(bits)[~keep].any()                       # +0: all bits clear (not −0)
    assert torch.equal(weight.view(bits)[keep], before.view(bits)[keep])
    put_back(weight, keep, values)
    assert torch.equal(weight.view(bits), before.view(bits))


@pytest.mark.parametrize("workers", [1, 3])
def test_edit_weights_restores_every_map_when_an_edit_or_a_restore_raises(tiny_model, workers):
    from persona_interp.interventions.base import edit_weights
    from persona_interp.model.adapter import get_adapter

    adapter = get_adapter(tiny_model)
    saved = _params(tiny_model)
    names = list(pi.random_mask(tiny_model, 0.5, seed=0).keep)
    before = {name: adapter.parameter(name).detach().clone() for name in names}
    bad = names[len(names) // 2]

    def edit(name, parameter):
        if name == bad:
            raise ValueError(f"cannot edit {name}")
        values = parameter.detach().clone()
        parameter.mul_(0)
        return values

    def restore(name, parameter, values):
        if name == names[0] and failing:
            raise OSError("restore failed")
        parameter.copy_(values)

    failing = False
    with pytest.raises(ValueError, match="cannot edit"):       # an edit raises: the maps edited are restored
        with edit_weights(tiny_model, names, edit, restore, "test", workers=workers):
            pass
    _assert_bit_exact(tiny_model, saved)

    failing = True
    names.remove(bad)
    with pytest.raises(OSError, match="restore failed"):       # a restore raises: every other map is restored
        with edit_weights(tiny_model, names, edit, restore, "test", workers=workers):
            assert all(adapter.parameter(name).abs().sum() == 0 for name in names)
    assert adapter.parameter(names[0]).abs().sum() == 0
    for name in names[1:]:
        assert torch.equal(adapter.parameter(name), before[name]), name
    with torch.no_grad():
        adapter.parameter(names[0]).copy_(before[names[0]])
    _assert_bit_exact(tiny_model, saved)
    with pi.ablate(tiny_model, pi.random_mask(tiny_model, 0.5, seed=1)):   # the conflict registry was cleared
        pass


def test_ablate_is_the_same_in_one_thread_and_in_several(tiny_model):
    mask = pi.random_mask(tiny_model, 0.4, seed=3)
    threads = torch.get_num_threads()
    inside = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            with pi.ablate(tiny_model, mask):
                inside.append(_params(tiny_model))
    finally:
        torch.set_num_threads(threads)
    for name in inside[0]:
        assert torch.equal(inside[0][name].contiguous().view(torch.uint8), inside[1][name].contiguous().view(torch.uint8)), name


def test_unit_masks_refuse_gamma_and_store_instead_of_ignoring_them(llama):
    for unit_mask in (pi.NeuronMask({0: [1]}), pi.HeadMask({0: [0]})):
        with pytest.raises(ValueError, match=f"gamma and store apply to weight masks only: a {type(unit_mask).__name__}"):
            with pi.ablate(llama, unit_mask, gamma=5):
                pass
        with pytest.raises(ValueError, match="store='cpu'"):
            with pi.ablate(llama, unit_mask, store="cpu"):
                pass
        with pi.ablate(llama, unit_mask):                      # the defaults still work
            pass
