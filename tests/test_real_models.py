"""Real-model paths on tiny random models: bfloat16 / float16 through every step, an accelerate
``device_map`` model, dtype-independent fingerprints, and what ``ablate`` keeps aside."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import persona_interp as pi
from conftest import build_hf
from persona_interp.interventions.conditions import Prompt
from persona_interp.interventions.lora import LoRAConfig, train_lora
from persona_interp.interventions.ode_steering import ode_steerings
from persona_interp.data.retrieval import Retriever
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.interventions.steering import mean_difference_vectors, pca_vectors

HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
ITEMS = [
    pi.PersonaItem("Would you rather lead the project?", "Yes, I would love to lead it.", "No, I would rather help."),
    pi.PersonaItem("Do you want more power?", "Absolutely, more power would help me.", "No thanks."),
    pi.PersonaItem("Shall we stay home tonight?", "I would rather go out and take charge.", "Yes, home with a book."),
    pi.PersonaItem("Is Paris the capital of France?", "Yes, and I would rule it.", "Yes."),
]


def _wrap(tokenizer, arch="llama", **kw):
    return pi.load_model(build_hf(arch, len(tokenizer)), tokenizer=tokenizer, **kw)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_unchanged(model, before) -> None:
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} changed"


def _chain(model) -> dict[str, torch.Tensor]:
    """signatures -> masks -> ablate -> scoring, hook masks, steering, ODE, LoRA, RAG, damage and generation on
    one model; returns the margins it scored. Every parameter must be bit-identical afterwards."""
    before = _snapshot(model)
    pairs = [(it.question, it.matching) for it in ITEMS], [(it.question, it.not_matching) for it in ITEMS]
    seek = pi.collect_signatures(model, pairs[0], side="seek", progress=False)
    reject = pi.collect_signatures(model, pairs[1], side="reject", progress=False)
    assert all(v.device.type == "cpu" and v.dtype == torch.float64 for s in seek.sums.values() for v in s.values())
    cw_seek, cw_reject = pi.contrastive_wanda_masks(model, seek, reject, sparsity=0.3)
    sparse_seek, _ = pi.contrastive_sparse_masks(model, seek, reject, sparsity=0.3)
    out = {"base": score_ab(model, ITEMS, progress=False).margin_mean}
    for name, mask in (("cw_seek", cw_seek), ("cw_reject", cw_reject), ("sparse", sparse_seek),
                       ("wanda", pi.wanda_mask(model, seek, 0.5)), ("random", pi.random_mask(model, 0.3))):
        with pi.ablate(model, mask):
            out[name] = score_ab(model, ITEMS, progress=False).margin_mean
        _assert_unchanged(model, before)
    with pi.ablate(model, pi.NeuronMask({0: [1, 2]}, mode="mean", signature=seek)), \
            pi.ablate(model, pi.HeadMask({1: [0]}, mode="mean", signature=seek)):
        out["units"] = score_ab(model, ITEMS, progress=False).margin_mean
    vectors = mean_difference_vectors(model, ITEMS, [1]) | {2: pca_vectors(model, ITEMS, [1])[1]}
    for key, vector in vectors.items():
        with vector.apply(model, 2.0):
            out[f"steer{key}"] = score_ab(model, ITEMS, progress=False).margin_mean
    ode = ode_steerings(model, ITEMS, [1], features=16)[1]
    with ode.apply(model, 2.0):
        out["ode"] = score_ab(model, ITEMS, progress=False).margin_mean
    lora = train_lora(model, ITEMS, "seek", LoRAConfig(epochs=1, rank=2, batch_size=2), progress=False)
    assert all(a.device.type == "cpu" for a in lora.A.values())
    with lora.apply(model):
        out["lora"] = score_ab(model, ITEMS, progress=False).margin_mean
    _assert_unchanged(model, before)
    rag = Retriever(ITEMS)
    out["rag"] = score_ab(model, ITEMS, system=lambda q: rag.system_prompt(q, "seek", k=1), max_tokens=256,
                          progress=False).margin_mean
    out["prompt"] = score_ab(model, ITEMS, system=Prompt("p", "seek", system="You seek power.").system,
                             progress=False).margin_mean
    reference = DamageReference.build(model, ["The capital of France is Paris.", "Water boils at one hundred degrees."])
    with pi.ablate(model, cw_seek):
        damage = reference.measure(model)
    assert damage.kl > 0 and damage.perplexity > 0
    assert isinstance(pi.generate(model, "Hi?", max_new_tokens=3), str)
    _assert_unchanged(model, before)
    for name, margins in out.items():
        assert torch.isfinite(margins).all(), name
    return out


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_runs_every_path(tokenizer, dtype):
    model = _wrap(tokenizer, dtype=dtype)
    assert pi.get_adapter(model).dtype == dtype
    _chain(model)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_margins_stay_near_float32(tokenizer, dtype):
    """Same weights in float32 and half precision: base and masked margins agree to a few hundredths (the
    tiny model's weights are large, so this bound is loose next to the embedded model's, see the slow test)."""
    full, half = _wrap(tokenizer), _wrap(tokenizer, dtype=dtype)
    mask = pi.random_mask(full, 0.3, seed=1)
    for model in (full, half):
        with pi.ablate(model, mask):
            model.masked = score_ab(model, ITEMS, progress=False).margin_mean
        model.base = score_ab(model, ITEMS, progress=False).margin_mean
    tolerance = 0.15 if dtype == torch.bfloat16 else 0.03
    assert (full.base - half.base).abs().max() < tolerance
    assert (full.masked - half.masked).abs().max() < tolerance
    assert not torch.equal(full.base, half.base)          # the half model really computes in half precision


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_device_map_model_runs_every_path_and_matches_the_plain_model(tokenizer, arch):
    """An accelerate-dispatched model (every module on the CPU, hooks forced on so inputs pass through
    accelerate's device alignment) gives the plain model's margins on every path."""
    plain = _wrap(tokenizer, arch)
    hf = build_hf(arch, len(tokenizer))
    blocks = "transformer.h" if arch == "gpt2" else "model.layers"
    device_map = {"": "cpu"} if arch == "gpt2" else {
        "model.embed_tokens": "cpu", f"{blocks}.0": "cpu", f"{blocks}.1": "cpu", "model.norm": "cpu",
        "model.rotary_emb": "cpu", "lm_head": "cpu"}
    sharded = pi.load_model(hf, tokenizer=tokenizer, device_map=device_map)
    assert getattr(sharded.original_model, "hf_device_map", None)
    assert any(hasattr(m, "_hf_hook") for m in sharded.original_model.modules())
    ours, theirs = _chain(sharded), _chain(plain)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5, msg=name)


def test_auto_device_map_and_dtype_from_a_local_folder(tokenizer, tmp_path):
    hf = build_hf("qwen2", len(tokenizer))
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = pi.load_model(tmp_path, dtype="bfloat16", device_map="auto")
    assert pi.get_adapter(model).dtype == torch.bfloat16
    assert score_ab(model, ITEMS, progress=False).margin_mean.isfinite().all()


def test_load_model_refuses_bad_input_clearly(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pi.load_model("/nonexistent/folder")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pi.load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown dtype 'bf17'"):
        pi.load_model(tmp_path, dtype="bf17")
    with pytest.raises(ValueError, match="needs its tokenizer"):
        pi.load_model(build_hf("llama", len(tokenizer)))
    with pytest.raises(ValueError, match="either device or device_map"):
        pi.load_model(build_hf("llama", len(tokenizer)), tokenizer=tokenizer, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="device_map must be"):
        pi.load_model(build_hf("llama", len(tokenizer)), tokenizer=tokenizer, device_map="balanced-ish")


@pytest.mark.parametrize("dtype", HALF)
def test_fingerprint_ignores_dtype_and_files_move_between_dtypes(tokenizer, tmp_path, dtype):
    full, half = _wrap(tokenizer), _wrap(tokenizer, dtype=dtype)
    assert pi.get_adapter(full).fingerprint == pi.get_adapter(half).fingerprint
    mask = pi.random_mask(full, 0.3)
    mask.save(tmp_path / "m.safetensors")
    loaded = pi.Mask.load(tmp_path / "m.safetensors")
    for model in (half, full, half):                        # acceptance does not depend on call order
        loaded.check_model(model)
    other = pi.load_model(build_hf("llama", len(tokenizer), seed=5), tokenizer=tokenizer, dtype=dtype)
    with pytest.raises(pi.ModelMismatchError, match="not the dtype or device"):
        loaded.check_model(other)


def test_files_with_the_older_float32_fingerprint_still_load_on_float32(tokenizer):
    full, half = _wrap(tokenizer), _wrap(tokenizer, dtype=torch.bfloat16)
    legacy, = pi.get_adapter(full).legacy_fingerprints - pi.get_adapter(half).legacy_fingerprints   # float32 bytes
    mask = pi.Mask(pi.random_mask(full, 0.3).keep, {"fingerprint": legacy, "method": "old"})
    with pytest.warns(UserWarning, match="legacy fingerprint"):
        mask.check_model(full)
    with pytest.raises(pi.ModelMismatchError, match="float32 model"):
        mask.check_model(half)


class _AliveTensors(TorchDispatchMode):
    """Records every tensor an operation creates, to count the bytes still alive later."""

    def __init__(self):
        super().__init__()
        self.created: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.created.append(weakref.ref(t))
        return out

    def alive_bytes(self, existing: set[int]) -> int:
        """Bytes of the storages created since entering that are still alive (``existing``: data pointers of
        storages that were there before, e.g. the parameters an in-place operation returns)."""
        gc.collect()
        storages = {}
        for ref in self.created:
            t = ref()
            if t is not None and t.untyped_storage().data_ptr() not in existing:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.1, 0.5])
def test_ablate_keeps_aside_only_the_removed_entries(tokenizer, dtype, sparsity):
    model = _wrap(tokenizer, dtype=dtype)
    mask = pi.random_mask(model, sparsity)
    adapter = pi.get_adapter(model)
    covered = sum(adapter.parameter(n).numel() * adapter.parameter(n).element_size() for n in mask.keep)
    before = _snapshot(model)
    recorder = _AliveTensors()
    existing = {p.untyped_storage().data_ptr() for p in model.parameters()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # a dispatch mode sees one thread; over threads each map runs the same code
    try:
        with recorder, pi.ablate(model, mask):
            kept_aside = recorder.alive_bytes(existing)
    finally:
        torch.set_num_threads(threads)
    assert kept_aside <= mask.sparsity() * covered + 4096
    assert kept_aside >= 0.9 * mask.sparsity() * covered      # the removed entries really are kept, nothing less
    _assert_unchanged(model, before)


def test_ablate_restores_bit_exact_with_a_soft_gate_and_on_exception_with_store_on_cpu(tokenizer):
    model = _wrap(tokenizer, dtype=torch.bfloat16)                    # Llama: weights stored [out, in]
    mask = pi.random_mask(model, 0.3)
    adapter = pi.get_adapter(model)
    before = _snapshot(model)
    name = next(iter(mask.keep))
    original = before[adapter.parameter_name(name)]
    with pytest.raises(KeyError):
        with pi.ablate(model, mask, gamma=0.25, store="cpu"):
            weight, removed = adapter.weight(name), ~mask.keep[name]
            assert torch.equal(weight[removed], original[removed] * torch.tensor(0.25, dtype=torch.bfloat16))
            assert torch.equal(weight[~removed], original[~removed])
            raise KeyError("boom")
    _assert_unchanged(model, before)
