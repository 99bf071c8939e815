import pytest
import torch

import persona_interp as pi
from hand_weights import hand_weight
from persona_interp.model.adapter import ATTN_KINDS


def test_maps_cover_every_layer_and_kind(tiny_model, model_kind):
    adapter = pi.get_adapter(tiny_model)
    gated = model_kind not in ("gpt2", "hooked_gpt2")
    expected = set(ATTN_KINDS) | ({"gate", "up", "down"} if gated else {"up", "down"})
    for layer in range(adapter.n_layers):
        assert {m.kind for m in adapter.maps if m.layer == layer} == expected
    q, k, o = (adapter.map_by_name[f"blocks.0.attn.{x}"] for x in "qko")
    assert (q.n_out, q.n_in) == (adapter.n_heads * adapter.d_head, adapter.d_model)
    assert k.n_out == adapter.n_kv_heads * adapter.d_head          # GQA: fewer key heads
    assert (o.n_out, o.n_in) == (adapter.d_model, adapter.n_heads * adapter.d_head)


def test_weight_is_out_in_and_round_trips_to_native(tiny_model, model_kind):
    adapter = pi.get_adapter(tiny_model)
    for spec in adapter.maps:
        expected = hand_weight(tiny_model, model_kind, spec.layer, spec.kind)
        assert torch.equal(adapter.weight(spec.name), expected), spec.name
        assert torch.equal(adapter.to_native(spec.name, adapter.weight(spec.name)), adapter.parameter(spec.name))


def test_sites_carry_the_maps_inputs(tiny_model, model_kind):
    """Recompute the attention and MLP outputs from the sites' activations and the [out, in] weights."""
    adapter = pi.get_adapter(tiny_model)
    tokens = torch.tensor([[3, 17, 42, 5, 99, 7]])
    layer = adapter.n_layers - 1
    names = [adapter.head_hook(layer), adapter.neuron_hook(layer), f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    seen = {}
    hooks = [(n, (lambda name: lambda x, hook: seen.__setitem__(name, x.detach().clone()))(n)) for n in names]
    tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)
    z = seen[names[0]].flatten(-2)
    bias_o = _bias(tiny_model, model_kind, layer, "o")
    attn_out = z @ adapter.weight(f"blocks.{layer}.attn.o").T + bias_o
    torch.testing.assert_close(attn_out, seen[names[2]], atol=1e-5, rtol=1e-4)
    mlp_out = seen[names[1]] @ adapter.weight(f"blocks.{layer}.mlp.down").T + _bias(tiny_model, model_kind, layer, "down")
    torch.testing.assert_close(mlp_out, seen[names[3]], atol=1e-5, rtol=1e-4)


def _bias(model, kind, layer, map_kind):
    if kind.startswith("hooked"):
        block = model.blocks[layer]
        return block.attn.b_O if map_kind == "o" else block.mlp.b_out
    sub = model.blocks[layer].attn.o if map_kind == "o" else model.blocks[layer].mlp.out
    bias = getattr(sub.original_component, "bias", None)
    return 0.0 if bias is None else bias


@pytest.mark.parametrize("model_kind", ["llama", "gpt2", "qwen2"])
def test_bridge_shared_sites_equal_their_siblings(tiny_model):
    """k/v read the q site and gate reads the up site: check the bridge's own per-map hooks agree."""
    seen = {}
    names = ["blocks.0.attn.q.hook_in", "blocks.0.attn.k.hook_in", "blocks.0.attn.v.hook_in",
             "blocks.0.mlp.in.hook_in"] + (["blocks.0.mlp.gate.hook_in"] if "blocks.0.mlp.gate.hook_in" in tiny_model.hook_dict else [])
    hooks = [(n, (lambda name: lambda x, hook: seen.__setitem__(name, x.clone()))(n)) for n in names]
    tiny_model.run_with_hooks(torch.tensor([[1, 2, 3, 4]]), fwd_hooks=hooks)
    assert torch.equal(seen[names[0]], seen[names[1]]) and torch.equal(seen[names[0]], seen[names[2]])
    if len(names) == 5:
        assert torch.equal(seen[names[3]], seen[names[4]])


def test_select_maps_filters_and_rejects_unknown(tiny_model):
    adapter = pi.get_adapter(tiny_model)
    assert {m.module for m in adapter.select_maps(modules=["mlp"])} == {"mlp"}
    assert {m.kind for m in adapter.select_maps(modules=["q", "down"])} == {"q", "down"}
    assert {m.layer for m in adapter.select_maps(layers=[1])} == {1}
    with pytest.raises(ValueError, match="unknown module 'ffn'"):
        adapter.select_maps(modules=["ffn"])
    with pytest.raises(ValueError, match="layer 7 out of range"):
        adapter.select_maps(layers=[7])


def test_fingerprint_tells_models_apart(tokenizer, model_kind):
    from conftest import build_model

    a, b, a_again = build_model(model_kind, tokenizer, 0), build_model(model_kind, tokenizer, 1), build_model(model_kind, tokenizer, 0)
    assert pi.get_adapter(a).fingerprint == pi.get_adapter(a_again).fingerprint
    assert pi.get_adapter(a).fingerprint != pi.get_adapter(b).fingerprint


def test_fingerprint_covers_every_linear_map_and_survives_casting(tokenizer, tmp_path):
    """A change to one MLP weight (a merged LoRA-like update that flips signs) changes the fingerprint and a mask
    saved on the base is refused; a bfloat16 copy shares the float32 fingerprint, tiny values that round to ±0
    included; a file with the legacy embedding-only fingerprint loads with a warning."""
    from conftest import build_bridge
    from persona_interp.model.adapter import SAMPLE_PER_MAP, ModelAdapter

    base = build_bridge("llama", tokenizer, seed=0)
    mask = pi.random_mask(base, 0.3)
    mask.save(tmp_path / "m.safetensors")
    tuned = build_bridge("llama", tokenizer, seed=0)
    name = "blocks.1.mlp.down"
    weight = ModelAdapter(tuned).weight(name)                           # [out, in] view; not the cached adapter
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(weight.shape[0], 2, generator=gen) @ torch.randn(2, weight.shape[1], generator=gen)
    with torch.no_grad():
        weight.add_(delta * weight.abs().mean())
    assert torch.equal(tuned.W_E, base.W_E)                             # the embedding is untouched ...
    assert pi.get_adapter(tuned).fingerprint != pi.get_adapter(base).fingerprint   # ... yet the fingerprint differs
    with pytest.raises(pi.ModelMismatchError, match="was built for"):
        pi.Mask.load(tmp_path / "m.safetensors").check_model(tuned)

    tiny = build_bridge("llama", tokenizer, seed=0)
    for m in ModelAdapter(tiny).maps[:3]:                               # sampled entries: ±1e-42 rounds to ±0 in bf16
        with torch.no_grad():
            flat = ModelAdapter(tiny).parameter(m.name).view(-1)
            flat[:: max(1, flat.numel() // SAMPLE_PER_MAP)][:8] = torch.tensor([1e-42, -1e-42] * 4)
    fp32 = ModelAdapter(tiny).fingerprint
    half = pi.load_model(tiny, dtype="bfloat16")
    assert half.W_E.dtype == torch.bfloat16 and ModelAdapter(half).fingerprint == fp32

    legacy = pi.get_adapter(base).legacy_fingerprints
    sign_only = next(fp for fp in legacy if fp in ModelAdapter(half).legacy_fingerprints)   # not the float32-only one
    pi.Mask(mask.keep, {**mask.meta, "fingerprint": sign_only}).save(tmp_path / "old.safetensors")
    with pytest.warns(UserWarning, match=r"legacy fingerprint .*save the file again"):
        pi.Mask.load(tmp_path / "old.safetensors").check_model(base)


def test_get_adapter_rejects_non_models():
    with pytest.raises(TypeError, match="TransformerLens model"):
        pi.get_adapter(torch.nn.Linear(2, 2))


def test_map_names_round_trip_and_bad_names_are_refused():
    from persona_interp.model.adapter import map_name, parse_map_name

    assert map_name(3, "down") == "blocks.3.mlp.down" and map_name(0, "q") == "blocks.0.attn.q"
    assert parse_map_name("blocks.12.attn.o") == (12, "attn", "o")
    for bad in ("blocks.x.mlp.down", "blocks.1.attn.down", "layers.1.mlp.up", "blocks.1.mlp"):
        with pytest.raises(ValueError, match="not a linear map name"):
            parse_map_name(bad)
    with pytest.raises(ValueError, match="unknown linear map kind"):
        map_name(1, "w")


def test_one_model_check_for_masks_signatures_and_loras(llama):
    """Mask, Signature and LoRA share the adapter's check: a wrong fingerprint, an unknown map or a wrong
    shape are refused with a message naming the object."""
    from persona_interp.interventions.lora import LoRA, LoRAConfig, init_factors
    from persona_interp.model.adapter import ModelMismatchError
    from test_masks import fake_signature

    mask = pi.random_mask(llama, 0.3, modules=["mlp"], layers=[0])
    name = next(iter(mask.keep))
    with pytest.raises(ModelMismatchError, match="mask 'random'.*has shape"):
        pi.Mask({name: mask.keep[name][:, :-1]}, mask.meta).check_model(llama)
    with pytest.raises(ModelMismatchError, match="which the model lacks"):
        pi.Mask({"blocks.99.mlp.up": mask.keep[name]}, {}).check_model(llama)
    with pytest.raises(ModelMismatchError, match="was built for"):
        pi.Mask(mask.keep, {**mask.meta, "fingerprint": "elsewhere"}).check_model(llama)
    sig = fake_signature(llama, {})
    sig.check_model(llama)
    site = sig.map_sites[name]
    narrow = pi.Signature({**sig.sums, site: {k: v[:-1] for k, v in sig.sums[site].items()}}, sig.map_sites, {}, {}, sig.meta)
    with pytest.raises(ModelMismatchError, match="signature 'fake'.*n_in"):
        narrow.check_model(llama)
    A, B = init_factors(llama, LoRAConfig(rank=2, modules=["mlp"], layers=[0]))
    LoRA(A, B, 1.0).check_model(llama)
    with pytest.raises(ModelMismatchError, match="LoRA.*has shape"):
        LoRA({n: a[:, :-1] for n, a in A.items()}, B, 1.0).check_model(llama)
