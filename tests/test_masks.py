import dataclasses
import numpy as np
import pytest
import torch
from conftest import unchecked

import persona_interp as pi
from persona_interp.masks.builders import contrast, keep_top_per_row
from persona_interp.masks.mask import Mask
from persona_interp.masks.registry import method_spec
from persona_interp.signatures import Signature


def fake_signature(model, norm_mean: dict, norm_var: dict | None = None, n: int = 10, dataset="fake", side="seek"):
    """A signature with chosen per-channel mean / variance of the per-sample norms for some maps."""
    adapter = pi.get_adapter(model)
    sums = {}
    for spec in adapter.maps:
        mean = torch.as_tensor(norm_mean.get(spec.name, torch.ones(spec.n_in)), dtype=torch.float64)
        var = torch.as_tensor((norm_var or {}).get(spec.name, torch.ones(spec.n_in)), dtype=torch.float64)
        sums[spec.site + "|" + spec.name] = {"norm_sum": mean * n, "norm_sq_sum": var * (n - 1) + mean ** 2 * n}
    return Signature(sums, {m.name: m.site + "|" + m.name for m in adapter.maps}, {}, {},
                     {"fingerprint": adapter.fingerprint, "n_samples": n, "n_tokens": 5 * n, "dataset": dataset, "side": side})


def reference_top_k(score: np.ndarray, sparsity: float, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Slow per-row reference: sort by (score, tiebreak, -index) descending."""
    n_out, n_in = score.shape
    k = int(np.floor(n_in * (1 - sparsity)))
    keep = np.zeros_like(score, dtype=bool)
    for i in range(n_out):
        tb = tiebreak[i] if tiebreak is not None else np.zeros(n_in)
        order = sorted(range(n_in), key=lambda j: (-score[i, j], -tb[j], j))
        keep[i, order[:k]] = True
    return keep


def test_keep_top_per_row_known_answers():
    score = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    assert keep_top_per_row(score, 0.5).tolist() == [[True, False, True, False], [True, False, True, False]]
    secondary = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 2.0]])
    assert keep_top_per_row(score, 0.5, secondary).tolist() == [[True, False, True, False], [False, False, True, True]]
    assert keep_top_per_row(score, 0.0).all()
    assert keep_top_per_row(score, 0.99).sum().item() == 0       # floor(4 * 0.01) = 0 kept
    assert keep_top_per_row(torch.ones(2, 10), 0.3).sum(1).tolist() == [7, 7]


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.3", None])
def test_sparsity_out_of_range(llama, bad):
    with unchecked(), pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        pi.random_mask(llama, bad)


def test_wanda_mask_matches_reference(llama):
    adapter = pi.get_adapter(llama)
    rng = np.random.default_rng(0)
    a = {m.name: torch.tensor(rng.uniform(0.1, 3, m.n_in)) for m in adapter.maps}
    sig = fake_signature(llama, a)
    mask = pi.wanda_mask(llama, sig, 0.3)
    for name in ["blocks.0.attn.k", "blocks.1.mlp.down"]:
        score = adapter.weight(name).abs().double().numpy() * a[name].numpy()[None, :]
        assert np.array_equal(mask.keep[name].numpy(), reference_top_k(score, 0.3)), name
    n_in = adapter.map_by_name["blocks.0.attn.q"].n_in
    assert (mask.keep["blocks.0.attn.q"].sum(1) == int(n_in * 0.7)).all()
    assert mask.meta["method"] == "wanda" and mask.meta["sparsity"] == 0.3


def test_contrastive_wanda_relu_ties_broken_by_wanda(llama):
    adapter = pi.get_adapter(llama)
    rng = np.random.default_rng(1)
    mu_seek = {m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in adapter.maps}
    mu_reject = {m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in adapter.maps}
    seek, reject = fake_signature(llama, mu_seek), fake_signature(llama, mu_reject, side="reject")
    ms, mr = pi.contrastive_wanda_masks(llama, seek, reject, 0.5)
    name = "blocks.1.mlp.gate"
    z = (mu_seek[name] - mu_reject[name]) / np.sqrt(2 + 1e-8)
    torch.testing.assert_close(contrast(seek, reject, name), z)
    w = adapter.weight(name).abs().double().numpy()
    # with ReLU, rows have many zero scores: the reference breaks ties by |W|·μ⁺ row by row
    expected_seek = np.stack([reference_top_k((w * np.maximum(z.numpy(), 0))[i:i + 1], 0.5,
                                              (w * mu_seek[name].numpy())[i:i + 1])[0] for i in range(w.shape[0])])
    assert np.array_equal(ms.keep[name].numpy(), expected_seek)
    expected_reject = np.stack([reference_top_k((w * np.maximum(-z.numpy(), 0))[i:i + 1], 0.5,
                                                (w * mu_reject[name].numpy())[i:i + 1])[0] for i in range(w.shape[0])])
    assert np.array_equal(mr.keep[name].numpy(), expected_reject)
    soft_s, _ = pi.contrastive_wanda_masks(llama, seek, reject, 0.5, phi="softplus", tau=0.5)
    assert pi.fraction_differ(soft_s, ms) > 0
    with unchecked(), pytest.raises(ValueError, match="phi must be"):
        pi.contrastive_wanda_masks(llama, seek, reject, 0.5, phi="tanh")


def test_identical_signatures_are_refused(llama):
    """Identical poles (e.g. the same answers collected as seek and as reject) would give z = 0 everywhere and
    two identical 'opposing' masks without a word."""
    sig = fake_signature(llama, {})
    same = dataclasses.replace(sig, meta={**sig.meta, "side": "reject"})
    for builder in (pi.contrastive_wanda_masks, pi.contrastive_sparse_masks):
        with pytest.raises(ValueError, match="signatures are identical"):
            builder(llama, sig, same, 0.4)


def test_swapped_poles_are_refused_and_old_signatures_without_a_side_accepted(llama):
    rng = np.random.default_rng(4)
    mu = [{m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in pi.get_adapter(llama).maps} for _ in range(2)]
    seek, reject = fake_signature(llama, mu[0]), fake_signature(llama, mu[1], side="reject")
    for builder in (pi.contrastive_wanda_masks, pi.contrastive_sparse_masks):
        with pytest.raises(ValueError, match="passed as the seek pole records side 'reject'.*swapped"):
            builder(llama, reject, seek, 0.3)
    from persona_interp.masks.composition import pole_scores

    with pytest.raises(ValueError, match="passed as the seek pole records side 'reject'"):
        pole_scores(llama, reject, seek)
    old = [dataclasses.replace(s, meta={k: v for k, v in s.meta.items() if k != "side"}) for s in (seek, reject)]
    assert all(m.sparsity() > 0.29 for m in pi.contrastive_wanda_masks(llama, *old, 0.3))


def test_contrast_refuses_one_sample_and_a_zero_eps_and_warns_on_few(llama):
    rng = np.random.default_rng(3)
    mu = [{m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in pi.get_adapter(llama).maps} for _ in range(2)]
    one, other = fake_signature(llama, mu[0], n=1), fake_signature(llama, mu[1], side="reject", n=1)
    with pytest.raises(ValueError, match="at least 2 per pole"):
        pi.contrastive_wanda_masks(llama, one, other, 0.3)
    seek, reject = fake_signature(llama, mu[0], n=4), fake_signature(llama, mu[1], side="reject", n=4)
    with pytest.raises(ValueError, match="eps .* must be a positive number"):
        pi.contrastive_wanda_masks(llama, seek, reject, 0.3, eps=0)
    with pytest.warns(UserWarning, match="z is noisy below 16"):
        pi.contrastive_wanda_masks(llama, seek, reject, 0.3)


def test_contrastive_sparse_masks_are_disjoint(llama):
    adapter = pi.get_adapter(llama)
    rng = np.random.default_rng(2)
    mu = [{m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in adapter.maps} for _ in range(2)]
    seek, reject = fake_signature(llama, mu[0]), fake_signature(llama, mu[1], side="reject")
    for rho in (0.0, 0.3, 0.7):
        ms, mr = pi.contrastive_sparse_masks(llama, seek, reject, rho, phi="softplus")
        for name in ms.keep:
            assert not (ms.keep[name] & mr.keep[name]).any(), (rho, name)
            if rho == 0.0:                               # ρ = 0: the two masks partition the weights
                assert (ms.keep[name] | mr.keep[name]).all()
            k = int(adapter.map_by_name[name].n_in * (1 - rho))
            assert (ms.keep[name].sum(1) <= k).all() and (mr.keep[name].sum(1) <= k).all()
        assert ms.sparsity() >= rho and mr.sparsity() >= rho


def test_contrastive_sparse_assignment_rule(llama):
    """Channel 0 favours seek (z > 0), channel 1 reject; ReLU gives each weight to its sign's side."""
    adapter = pi.get_adapter(llama)
    name = "blocks.0.mlp.down"
    n_in = adapter.map_by_name[name].n_in
    up, down = torch.ones(n_in), torch.ones(n_in)
    up[0], down[1] = 3.0, 3.0
    seek, reject = fake_signature(llama, {name: up}), fake_signature(llama, {name: down}, side="reject")
    ms, mr = pi.contrastive_sparse_masks(llama, seek, reject, 0.0, modules=[name])
    assert ms.keep[name][:, 0].all() and not mr.keep[name][:, 0].any()
    assert mr.keep[name][:, 1].all() and not ms.keep[name][:, 1].any()
    assert list(ms.keep) == [name]


def test_random_mask_is_seeded_with_exact_row_sparsity(llama):
    a, b, c = pi.random_mask(llama, 0.25, seed=0), pi.random_mask(llama, 0.25, seed=0), pi.random_mask(llama, 0.25, seed=1)
    assert pi.fraction_differ(a, b) == 0 and pi.fraction_differ(a, c) > 0
    for keep in a.keep.values():
        assert (keep.sum(1) == int(keep.shape[1] * 0.75)).all()
    like = pi.random_mask(llama, 0.0, seed=4, like=pi.magnitude_mask(llama, 0.6, modules=["attn"]))
    assert set(like.keep) == {m.name for m in pi.get_adapter(llama).select_maps(modules=["attn"])}
    assert abs(like.sparsity() - 0.6) < 0.05


def test_module_and_layer_restriction(llama):
    mask = pi.random_mask(llama, 0.5, modules=["mlp"], layers=[1])
    assert sorted(mask.keep) == ["blocks.1.mlp.down", "blocks.1.mlp.gate", "blocks.1.mlp.up"]
    with pytest.raises(ValueError, match="unknown module"):
        pi.random_mask(llama, 0.5, modules=["ffn"])


def _hand_masks():
    a = Mask({"blocks.0.attn.q": torch.tensor([[1, 1, 0, 0]], dtype=torch.bool),
              "blocks.0.mlp.up": torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)}, {"method": "a"})
    b = Mask({"blocks.0.attn.q": torch.tensor([[1, 0, 1, 0]], dtype=torch.bool),
              "blocks.1.mlp.up": torch.tensor([[0, 0]], dtype=torch.bool)}, {"method": "b"})
    return a, b


def test_set_operations_and_measures():
    a, b = _hand_masks()
    assert (a & b).keep["blocks.0.attn.q"].tolist() == [[True, False, False, False]]
    assert (a | b).keep["blocks.0.attn.q"].tolist() == [[True, True, True, False]]
    assert (a - b).keep["blocks.0.attn.q"].tolist() == [[False, True, False, False]]
    assert (~a).keep["blocks.0.mlp.up"].tolist() == [[False, True], [False, True]]
    assert (a & b).keep["blocks.1.mlp.up"].tolist() == [[False, False]]      # missing in a = all kept
    # entries: q 4 (2 differ), 0.mlp.up 4 (2 differ: b keeps all), 1.mlp.up 2 (2 differ)
    assert pi.fraction_differ(a, b) == pytest.approx(6 / 10)
    assert pi.fraction_differ_by(a, b, "module") == pytest.approx({"attn": 0.5, "mlp": 4 / 6})
    assert pi.fraction_differ_by(a, b, "layer") == pytest.approx({"0": 4 / 8, "1": 1.0})
    assert pi.iou_by(a, b, "map")["blocks.0.attn.q"] == pytest.approx(1 / 3)
    assert pi.iou_by(a, b, "map", of="removed")["blocks.0.attn.q"] == pytest.approx(1 / 3)
    assert pi.iou(a, b) == pytest.approx(3 / 9) and isinstance(pi.iou(a, b, of="removed"), float)   # kept: q 1/3, 0.up 2/4, 1.up 0/2
    assert a.sparsity() == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="group by"):
        pi.fraction_differ_by(a, b, "head")
    with pytest.raises(ValueError, match="use fraction_differ for the overall"):
        pi.fraction_differ_by(a, b, "all")


def test_measures_refuse_masks_of_two_models(llama, tokenizer):
    from conftest import build_bridge

    other = build_bridge("llama", tokenizer, seed=5)
    a, b = pi.random_mask(llama, 0.3, seed=1), pi.random_mask(other, 0.3, seed=1)
    for measure in (pi.fraction_differ, pi.iou, lambda x, y: pi.fraction_differ_by(x, y, "map"), lambda x, y: pi.iou_by(x, y, "map")):
        with pytest.raises(pi.ModelMismatchError, match="cannot compare masks built for different models"):
            measure(a, b)
    with pytest.raises(pi.ModelMismatchError, match="cannot combine masks built for different models"):
        a & b


def test_save_load_bit_packed(llama, tmp_path):
    mask = pi.random_mask(llama, 0.3, seed=7)
    path = mask.save(tmp_path / "m.safetensors")
    loaded = pi.Mask.load(path)
    assert loaded.meta == mask.meta
    assert all(torch.equal(loaded.keep[n], k) for n, k in mask.keep.items())
    n_weights = sum(k.numel() for k in mask.keep.values())
    assert path.stat().st_size < n_weights / 8 + 8192              # one bit per weight plus header
    with pytest.raises(FileExistsError):
        mask.save(path)
    loaded.check_model(llama)


def test_compact_mask_holds_one_bit_per_weight_and_acts_as_the_mask(llama):
    from persona_interp.interventions.conditions import MaskCondition
    from persona_interp.masks.mask import PackedKeep

    mask = pi.random_mask(llama, 0.3, seed=7)
    small = mask.compact()
    assert isinstance(small.keep, PackedKeep) and small.compact() is small and small.meta == mask.meta
    n_weights = sum(k.numel() for k in mask.keep.values())
    assert n_weights / 8 <= small.keep.nbytes < n_weights / 8 + len(mask.keep)
    assert list(small.keep) == list(mask.keep) and small.sparsity() == mask.sparsity()
    assert all(torch.equal(small.keep[n], k) and small.keep[n].dtype == torch.bool for n, k in mask.keep.items())
    odd = Mask({"blocks.0.attn.q": torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)})   # 9 bits: not a byte multiple
    assert torch.equal(odd.compact().keep["blocks.0.attn.q"], odd.keep["blocks.0.attn.q"])
    assert pi.fraction_differ(small, mask) == 0.0 and pi.fraction_differ(~small, mask) == 1.0
    tokens = torch.randint(0, 100, (2, 6))
    with pi.ablate(llama, mask):
        full = llama(tokens)
    with pi.ablate(llama, small):
        packed = llama(tokens)
    assert torch.equal(full, packed)
    cond = MaskCondition("m", mask=mask)                     # a condition holds its mask packed until scored
    assert isinstance(cond.mask.keep, PackedKeep) and torch.equal(cond.mask.keep["blocks.0.mlp.down"], mask.keep["blocks.0.mlp.down"])
    assert isinstance(dataclasses.replace(cond, name="m2").mask.keep, PackedKeep)


def test_builders_refuse_signatures_of_another_model(llama, tokenizer):
    from conftest import build_bridge

    other = build_bridge("llama", tokenizer, seed=3)
    sig = fake_signature(other, {})
    with pytest.raises(pi.ModelMismatchError):
        pi.wanda_mask(llama, sig, 0.3)


def test_combining_masks_of_different_models_fails(llama, tokenizer):
    from conftest import build_bridge

    other = build_bridge("llama", tokenizer, seed=3)
    with pytest.raises(pi.ModelMismatchError, match="different models"):
        pi.random_mask(llama, 0.3) & pi.random_mask(other, 0.3)


def _random_pair(model, seed=0):
    adapter = pi.get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    means = {m.name: torch.rand(m.n_in, generator=g, dtype=torch.float64) + 0.5 for m in adapter.maps}
    other = {m.name: torch.rand(m.n_in, generator=g, dtype=torch.float64) + 0.5 for m in adapter.maps}
    return fake_signature(model, means), fake_signature(model, other, side="reject")


def test_family_cache_ranks_each_family_once_and_matches_a_fresh_family(llama, monkeypatch):
    from persona_interp.masks import builders

    seek, reject = _random_pair(llama)
    calls = []
    real = builders.row_ranks
    monkeypatch.setattr(builders, "row_ranks", lambda *a: calls.append(1) or real(*a))
    one_family = 2 * 2 * sum(m.n_out * m.n_in for m in pi.get_adapter(llama).maps)      # int16 ranks, two poles
    families = builders.FamilyCache(llama, max_bytes=2 * one_family)
    cw = families.get(seek, reject, **method_spec("contrastive_wanda").fixed)
    first = cw.pair(0.3)
    ranked = len(calls)
    assert families.get(seek, reject, method="contrastive_wanda", phi="relu") is cw      # defaults spelled out: same key
    assert families.get(seek.with_statistic("norm"), reject, method="contrastive_wanda") is cw   # same sums and statistic
    again = cw.pair(0.1)
    assert len(calls) == ranked                                                         # no map ranked twice
    fresh = builders.mask_family(llama, "contrastive_wanda", seek, reject)
    for a, b in zip((*first, *again), (*fresh.pair(0.3), *fresh.pair(0.1))):
        assert a.keep.keys() == b.keep.keys() and all(torch.equal(a.keep[n], b.keep[n]) for n in a.keep)
    softplus = families.get(seek, reject, method="contrastive_wanda", phi="softplus", tau=2.0)
    assert softplus is not cw
    softplus.pair(0.3)
    assert families.nbytes == 2 * one_family                                             # both ranked, at the bound
    wanda = families.get(seek, reject, method="wanda")                                   # a third, ranked after this call
    wanda.pair(0.3)
    assert families.get(seek, reject, method="wanda") is wanda                           # the next call drops cw
    assert families.nbytes <= 2 * one_family
    assert families.get(seek, reject, method="contrastive_wanda") is not cw


def test_random_mask_like_keeps_the_old_double_argsort_result(llama):
    """The one-argsort form gives exactly the masks of ``rand.argsort(1).argsort(1) < kept`` (same generator)."""
    like = pi.random_mask(llama, 0.3, seed=5, modules=["mlp"])
    like = Mask({n: k & (torch.rand(k.shape, generator=torch.Generator().manual_seed(1)) > 0.2) for n, k in like.keep.items()},
                like.meta)                                                              # uneven rows
    new = pi.random_mask(llama, 0.3, seed=3, like=like)
    g = torch.Generator().manual_seed(3)
    for name, ref in like.keep.items():
        old = torch.rand(ref.shape, generator=g).argsort(1).argsort(1) < ref.sum(1, keepdim=True)
        assert torch.equal(new.keep[name], old)
        assert torch.equal(new.keep[name].sum(1), ref.sum(1))
