"""The whole method on the embedded model with a small slice of the paper's power-seeking data."""
import pytest
import torch

import persona_interp as pi
from persona_interp.data.personas import benchmarks_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not benchmarks_dir().is_dir(), reason="../shared/benchmarks/ai_persona not present")]


def test_whole_chain_on_smollm(smollm, tmp_path):
    data = pi.load_persona("power").sample(12, seed=0)
    seek = pi.collect_signatures(smollm, data, side="seek", batch_size=6, progress=False)
    reject = pi.collect_signatures(smollm, data, side="reject", batch_size=6, progress=False)
    assert seek.n_samples == reject.n_samples == 12
    z = pi.masks.builders.contrast(seek, reject, "blocks.10.mlp.down")
    assert torch.isfinite(z).all() and z.abs().max() > 0

    wanda = pi.wanda_mask(smollm, seek, 0.3)
    cw_seek, cw_reject = pi.contrastive_wanda_masks(smollm, seek, reject, 0.3, modules=["mlp"], layers=range(10, 20))
    cs_seek, cs_reject = pi.contrastive_sparse_masks(smollm, seek, reject, 0.3, layers=[15])
    control = pi.random_mask(smollm, 0.3, seed=0)
    assert abs(wanda.sparsity() - 0.3) < 0.01 and abs(control.sparsity() - 0.3) < 0.01
    assert len(cw_seek.keep) == 30 and pi.fraction_differ(cw_seek, cw_reject) > 0
    assert (cs_seek & cs_reject).sparsity() == 1.0                      # disjoint

    tokens = pi.model.chat.encode_batch(smollm.tokenizer, [(data[0].question, data[0].matching)]).tokens
    saved = {n: p.detach().clone() for n, p in smollm.named_parameters()}
    with torch.inference_mode():
        base = smollm(tokens)
        with pi.ablate(smollm, cw_seek):
            masked = smollm(tokens)
    assert (masked - base).abs().max() > 1e-3
    assert all(torch.equal(p, saved[n]) for n, p in smollm.named_parameters())

    loaded = pi.Mask.load(cw_seek.save(tmp_path / "cw_seek.safetensors"))
    loaded.check_model(smollm)
    assert pi.fraction_differ(loaded, cw_seek) == 0.0
    sig = pi.Signature.load(seek.save(tmp_path / "seek.safetensors"))
    torch.testing.assert_close(pi.wanda_mask(smollm, sig, 0.3).keep["blocks.3.attn.v"], wanda.keep["blocks.3.attn.v"])
    with pi.ablate(smollm, pi.HeadMask({5: [0, 1]}, mode="mean", signature=sig)), torch.inference_mode():
        assert (smollm(tokens) - base).abs().max() > 0
