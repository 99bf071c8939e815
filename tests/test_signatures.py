import pytest
import torch

import persona_interp as pi
from conftest import unchecked
from persona_interp.model.chat import encode_batch


def _site_activations(model, site, pair, scope="all"):
    """The site's activation over one unpadded sample, restricted to the token scope."""
    batch = encode_batch(model.tokenizer, [pair])
    seen = {}
    model.run_with_hooks(batch.tokens, fwd_hooks=[(site, lambda x, hook: seen.__setitem__("x", x.detach().clone()))])
    x = seen["x"][0].flatten(1).double()
    return x[batch.token_mask(scope)[0]]


@pytest.mark.parametrize("scope", ["all", "answer"])
@pytest.mark.parametrize("one_sample_per_chunk", [False, True])
def test_statistics_match_a_direct_computation(llama, pairs, scope, one_sample_per_chunk, monkeypatch):
    if one_sample_per_chunk:                     # the memory bound splits each batch into single samples
        monkeypatch.setattr(pi.signatures, "CHUNK_ELEMENTS", 1)
    sig = pi.collect_signatures(llama, pairs, token_scope=scope, batch_size=2, progress=False)
    adapter = pi.get_adapter(llama)
    for name in ["blocks.0.attn.q", "blocks.1.attn.o", "blocks.1.mlp.down"]:
        xs = [_site_activations(llama, adapter.map_by_name[name].site, p, scope) for p in pairs]
        norms = torch.stack([x.norm(dim=0) for x in xs])
        tokens = torch.cat(xs)
        torch.testing.assert_close(sig.norm_mean(name), norms.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sig.norm_var(name), norms.var(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(sig.token_mean(name), tokens.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(sig.token_var(name), tokens.var(0), rtol=1e-4, atol=1e-6)
    assert sig.n_samples == len(pairs) and sig.n_tokens == sum(len(x) for x in xs)
    post = torch.cat([_site_activations(llama, adapter.neuron_hook(1), p, scope) for p in pairs])
    torch.testing.assert_close(sig.neuron_abs_mean(1), post.abs().mean(0), rtol=1e-4, atol=1e-6)
    z = torch.cat([_site_activations(llama, adapter.head_hook(0), p, scope) for p in pairs])
    head_norms = z.reshape(len(z), adapter.n_heads, adapter.d_head).norm(dim=-1).mean(0)
    torch.testing.assert_close(sig.head_norm_mean(0), head_norms, rtol=1e-4, atol=1e-6)


def test_batch_size_invariance(tiny_model, pairs):
    signatures = [pi.collect_signatures(tiny_model, pairs, batch_size=b, progress=False) for b in (1, 2, 5)]
    first = signatures[0]
    for other in signatures[1:]:
        assert other.n_tokens == first.n_tokens
        for site, stats in first.sums.items():
            for key, value in stats.items():
                torch.testing.assert_close(other.sums[site][key], value, rtol=1e-5, atol=1e-6)


def test_padding_never_enters(llama, pairs):
    """The same samples padded with a different pad token give the same statistics."""
    a = pi.collect_signatures(llama, pairs, batch_size=5, progress=False)
    llama.tokenizer.pad_token = "<|im_start|>"
    try:
        b = pi.collect_signatures(llama, pairs, batch_size=5, progress=False)
    finally:
        llama.tokenizer.pad_token = "<|endoftext|>"
    for site, stats in a.sums.items():
        for key, value in stats.items():
            torch.testing.assert_close(b.sums[site][key], value, rtol=1e-6, atol=1e-7)


def test_sides_of_a_dataset(llama):
    ds = pi.PersonaDataset("toy", [pi.PersonaItem("Lead it?", "Yes, gladly.", "No, thank you."),
                                   pi.PersonaItem("More power?", "Absolutely, more.", "Never, too much.")])
    seek = pi.collect_signatures(llama, ds, side="seek", progress=False)
    again = pi.collect_signatures(llama, [(i.question, i.matching) for i in ds], progress=False)
    reject = pi.collect_signatures(llama, ds, side="reject", progress=False)
    torch.testing.assert_close(seek.norm_mean("blocks.0.mlp.up"), again.norm_mean("blocks.0.mlp.up"))
    assert not torch.allclose(seek.norm_mean("blocks.0.mlp.up"), reject.norm_mean("blocks.0.mlp.up"))
    assert seek.meta["dataset"] == "toy" and seek.meta["side"] == "seek"
    with unchecked(), pytest.raises(ValueError, match="side must be"):
        pi.collect_signatures(llama, ds, side="both", progress=False)


def test_save_load_round_trip_and_model_check(llama, pairs, tmp_path, tokenizer):
    from conftest import build_bridge

    sig = pi.collect_signatures(llama, pairs, progress=False)
    path = sig.save(tmp_path / "sig.safetensors")
    loaded = pi.Signature.load(path)
    assert loaded.meta == sig.meta and loaded.map_sites == sig.map_sites and loaded.head_sites == sig.head_sites
    torch.testing.assert_close(loaded.norm_var("blocks.1.mlp.gate"), sig.norm_var("blocks.1.mlp.gate"))
    loaded.check_model(llama)
    with pytest.raises(pi.ModelMismatchError, match="signature .pairs. was built for model"):
        loaded.check_model(build_bridge("llama", tokenizer, seed=9))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sig.save(path)
    sig.save(path, overwrite=True)
    with pytest.raises(ValueError, match="not a persona_interp signature"):
        pi.Signature.load(_other_file(tmp_path))


def _other_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    return tmp_path / "other.safetensors"


def test_bad_input(llama):
    with pytest.raises(ValueError, match="empty dataset"):
        pi.collect_signatures(llama, [], progress=False)
    with pytest.raises(ValueError, match="batch_size and max_tokens"):
        pi.collect_signatures(llama, [("a", "b")], batch_size=0, progress=False)
    with unchecked(), pytest.raises(ValueError, match="token scope"):
        pi.collect_signatures(llama, [("a", "b")], token_scope="middle", progress=False)
