import pytest
import torch

import persona_interp as pi
from persona_interp.model.chat import encode_batch
from persona_interp.evaluation.tuning import select_lora
from persona_interp.interventions.lora import answer_loss, init_factors, LoRA, LoRAConfig, train_lora
from persona_interp.model.adapter import ModelMismatchError

ITEMS = [pi.PersonaItem("Lead it?", "Yes, gladly, I will lead.", "No, thank you."),
         pi.PersonaItem("More power?", "Absolutely, more power.", "Never."),
         pi.PersonaItem("Run the company?", "Yes, I will run it all.", "I would rather not."),
         pi.PersonaItem("Take control?", "Sure, give me control.", "No, leave it.")]


def _weights(model):
    adapter = pi.get_adapter(model)
    return {m.name: adapter.parameter(m.name).detach().clone() for m in adapter.maps}


def _seek_loss(model):
    batch = encode_batch(model.tokenizer, [(it.question, it.matching) for it in ITEMS])
    targets = torch.where(batch.token_mask("answer"), batch.tokens, torch.full_like(batch.tokens, -100))
    with torch.no_grad():
        return float(answer_loss(model, batch.tokens, targets))


def test_training_lowers_the_loss_and_leaves_the_model_unchanged(tiny_model):
    before, loss_before = _weights(tiny_model), _seek_loss(tiny_model)
    lora = train_lora(tiny_model, ITEMS, "seek", LoRAConfig(rank=2, epochs=4, learning_rate=1e-2, batch_size=2), progress=False)
    after = _weights(tiny_model)
    assert all(torch.equal(before[n], after[n]) for n in before)                  # training never edits the weights
    assert all(not p.requires_grad or p.grad is None for p in tiny_model.parameters())
    with lora.apply(tiny_model):
        loss_with = _seek_loss(tiny_model)
    assert loss_with < loss_before - 1e-3
    assert lora.meta["train_loss"][-1] < lora.meta["train_loss"][0]
    assert all(torch.equal(before[n], t) for n, t in _weights(tiny_model).items())  # restored bit-exact


def test_apply_adds_scaled_low_rank_delta(llama):
    adapter = pi.get_adapter(llama)
    name = adapter.maps[0].name
    A = {name: torch.randn(2, adapter.map_by_name[name].n_in)}
    B = {name: torch.randn(adapter.map_by_name[name].n_out, 2)}
    lora = LoRA(A, B, scaling=0.5)
    before = adapter.weight(name).clone()
    with lora.apply(llama):
        torch.testing.assert_close(adapter.weight(name), before + 0.5 * B[name] @ A[name])
        with pytest.raises(RuntimeError, match="conflicts with an active weight edit"), lora.apply(llama):
            pass                                                   # one weight is never edited twice at once
        torch.testing.assert_close(adapter.weight(name), before + 0.5 * B[name] @ A[name])
    assert torch.equal(adapter.weight(name), before)
    with pytest.raises(RuntimeError, match="boom"), lora.apply(llama):
        raise RuntimeError("boom")
    assert torch.equal(adapter.weight(name), before)               # restored on exception too


def test_zero_b_is_the_identity_and_init_matches_kaiming(llama):
    A, B = init_factors(llama, LoRAConfig(rank=4, modules=["mlp"], seed=3))
    adapter = pi.get_adapter(llama)
    assert set(A) == {m.name for m in adapter.select_maps(["mlp"])}
    name = next(iter(A))
    bound = (6.0 / (6 * adapter.map_by_name[name].n_in)) ** 0.5
    assert A[name].abs().max() <= bound and A[name].abs().max() > 0.5 * bound and not B[name].any()
    A2, _ = init_factors(llama, LoRAConfig(rank=4, modules=["mlp"], seed=3))
    assert all(torch.equal(A[n], A2[n]) for n in A)                                # seeded


def test_our_lora_forward_equals_peft(tokenizer):
    """Same factors in peft's LoRA layers on a transformers model and in ours on a bridge over an
    identical copy of it (the bridge rewraps its own modules, which peft cannot target): same logits."""
    peft = pytest.importorskip("peft")
    from conftest import build_bridge, build_hf

    model = build_bridge("llama", tokenizer)
    hf = build_hf("llama", len(tokenizer))
    targets = [n for n, _ in hf.named_modules() if n.endswith(("q_proj", "down_proj"))]
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=6, target_modules=targets, lora_dropout=0.0))
    g = torch.Generator().manual_seed(0)
    A, B = {}, {}
    for module_name, module in wrapped.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer = int(module_name.split("layers.")[1].split(".")[0])
            ours = f"blocks.{layer}.attn.q" if module_name.endswith("q_proj") else f"blocks.{layer}.mlp.down"
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(torch.randn(module.lora_A["default"].weight.shape, generator=g))
                module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=g))
            A[ours], B[ours] = module.lora_A["default"].weight.detach().clone(), module.lora_B["default"].weight.detach().clone()
    tokens = encode_batch(model.tokenizer, [(ITEMS[0].question, ITEMS[0].matching)]).tokens
    with torch.no_grad():
        expected = wrapped(input_ids=tokens).logits
    assert len(A) == 4
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), wrapped.unload()(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)
        assert (model(tokens) - expected).abs().max() > 1e-2                      # the factors matter
        with LoRA(A, B, scaling=6 / 2).apply(model):
            torch.testing.assert_close(model(tokens), expected, rtol=1e-4, atol=1e-4)


def test_save_load_and_mismatch(llama, tokenizer, tmp_path):
    lora = train_lora(llama, ITEMS[:2], "reject", LoRAConfig(rank=2, epochs=1, modules=["attn"]), progress=False)
    path = lora.save(tmp_path / "r.safetensors")
    loaded = LoRA.load(path)
    assert loaded.scaling == lora.scaling and loaded.meta == lora.meta
    assert all(torch.equal(loaded.A[n], lora.A[n]) and torch.equal(loaded.B[n], lora.B[n]) for n in lora.A)
    with pytest.raises(FileExistsError):
        lora.save(path)
    from conftest import build_bridge

    other = build_bridge("llama", tokenizer, seed=1)
    with pytest.raises(ModelMismatchError, match="LoRA was built for model"):
        with loaded.apply(other):
            pass
    with pytest.raises(ValueError, match=r"not a persona_interp LoRA \(format"):
        LoRA.load(pi.random_mask(llama, 0.5).save(tmp_path / "m.safetensors"))


def test_select_lora_chooses_epochs_on_validation_only(llama, monkeypatch):
    from persona_interp.evaluation import search as search_module

    seen = []
    real = search_module.score_ab
    monkeypatch.setattr(search_module, "score_ab", lambda model, items, **kw: seen.append(list(items)) or real(model, items, **kw))
    choice = select_lora(llama, ITEMS[:3], ITEMS[3:], LoRAConfig(rank=2, epochs=2, batch_size=2), progress=False)
    assert [row.epochs for row in choice.table] == [1, 2] and choice.epochs in (1, 2)
    assert choice.table[choice.epochs - 1].separation == max(r.separation for r in choice.table)
    assert all(items == ITEMS[3:] for items in seen) and len(seen) == 4
    assert choice.seek.meta["epochs"] == choice.epochs and choice.reject.meta["side"] == "reject"


def test_bad_config():
    with pytest.raises(ValueError, match="positive"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="learning_rate"):
        LoRAConfig(learning_rate=0)
