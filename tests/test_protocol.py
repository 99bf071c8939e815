"""The paper's protocol and like-for-like comparisons: mask + prompt, the length-fair statistic, the 2ρ bound,
both Contrastive-Sparse rules, mask families, budgeted picks and the stability split."""
import random

import numpy as np
import pytest
import torch

import persona_interp as pi
from conftest import unchecked
from persona_interp.analysis import diagnostics
from persona_interp.evaluation.rows import PairSearchRow
from persona_interp.evaluation.search import budget_picks
from persona_interp.interventions.conditions import MaskCondition
from persona_interp.masks.builders import contrast, mask_family, relu_differ_range, removed_zero_share
from persona_interp.evaluation.scoring import score_ab
from persona_interp.evaluation.search import pick_within

from test_masks import fake_signature
from test_signatures import _site_activations

ITEMS = [pi.PersonaItem(f"Would you lead group {i}?", f"Yes, I lead {i} gladly and with much ambition.", f"No {i}.")
         for i in range(8)]


def test_rms_statistic_matches_a_hand_computation_with_two_lengths(llama):
    pairs = [("Would you lead?", "Yes."), ("Would you lead the big project this year?", "No, I would rather help the team do it.")]
    sig = pi.collect_signatures(llama, pairs, batch_size=2, statistic="rms", progress=False)
    adapter = pi.get_adapter(llama)
    for name in ["blocks.0.attn.q", "blocks.1.mlp.down"]:
        xs = [_site_activations(llama, adapter.map_by_name[name].site, p) for p in pairs]
        assert len(xs[0]) != len(xs[1])                               # two sequence lengths
        rms = torch.stack([x.norm(dim=0) / len(x) ** 0.5 for x in xs])
        torch.testing.assert_close(sig.sample_mean(name), rms.mean(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sig.sample_var(name), rms.var(0), rtol=1e-4, atol=1e-7)
        norm = sig.with_statistic("norm")                             # the paper's statistic from the same sums
        torch.testing.assert_close(norm.sample_mean(name), torch.stack([x.norm(dim=0) for x in xs]).mean(0), rtol=1e-5, atol=1e-7)
    assert sig.statistic == "rms" and norm.statistic == "norm"
    mask = pi.wanda_mask(llama, sig, 0.3)
    assert mask.meta["statistic"] == "rms"                            # recorded in every mask built from it
    with unchecked(), pytest.raises(ValueError, match="statistic must be one of"):     # the error a caller without the checks gets
        pi.collect_signatures(llama, pairs, statistic="mean", progress=False)


def test_old_signatures_without_rms_sums_refuse_the_rms_statistic(llama):
    sig = fake_signature(llama, {})
    with pytest.raises(ValueError, match="no RMS sums"):
        sig.with_statistic("rms")



def _planted_contrast(llama, p_share, rng):
    """Seek and reject signatures whose z > 0 on a share ``p_share`` of every map's channels (random ones), with the
    per-token sums the code's Contrastive-Sparse rule reads."""
    up, down = {}, {}
    for m in pi.get_adapter(llama).maps:
        z_sign = torch.tensor(rng.permutation(m.n_in) < round(p_share * m.n_in))
        up[m.name] = torch.where(z_sign, 2.0, 1.0).double() + torch.tensor(rng.uniform(0, 0.1, m.n_in))
        down[m.name] = torch.where(z_sign, 1.0, 2.0).double() + torch.tensor(rng.uniform(0, 0.1, m.n_in))
    seek, reject = fake_signature(llama, up), fake_signature(llama, down, side="reject")
    for sig in (seek, reject):
        for stats in sig.sums.values():
            stats["token_sum"], stats["token_sq_sum"] = stats["norm_sum"] / 3, stats["norm_sq_sum"]
    return seek, reject

def test_relu_masks_differ_in_two_rho_by_construction(llama):
    """A hand-made contrast: a share p of every map's channels has z > 0; each pole removes rho of a row among
    the other pole's channels, so the masks differ in exactly 2 rho when rho <= p <= 1 - rho."""
    adapter = pi.get_adapter(llama)
    rng = np.random.default_rng(0)
    for p_share, rho in ((0.5, 0.3), (0.4, 0.4), (0.7, 0.2), (0.1, 0.3)):
        seek, reject = _planted_contrast(llama, p_share, rng)
        ms, mr = pi.contrastive_wanda_masks(llama, seek, reject, rho)
        inside = rho <= p_share <= 1 - rho
        for m in adapter.maps:
            k = m.n_in - int(m.n_in * (1 - rho))
            share = float((contrast(seek, reject, m.name) > 0).double().mean())
            differ = pi.fraction_differ(pi.Mask({m.name: ms.keep[m.name]}), pi.Mask({m.name: mr.keep[m.name]}))
            if inside and rho <= share <= 1 - rho:
                assert differ == pytest.approx(2 * k / m.n_in)       # 2 rho, up to the floor of k
            assert differ <= 2 * k / m.n_in + 1e-12                  # never more: two removals of k per row
        rows = diagnostics.overlap_table(llama, seek, reject, rho)
        relu = next(r for r in rows if r.variant == "contrastive_wanda relu" and r.kind == "all")
        assert relu.bound_low - 1e-9 <= relu.differ <= relu.bound_high + 1e-9
        assert relu.p == pytest.approx(p_share, abs=0.05)
        assert all(r.bound_low is None and "p" not in r.model_dump() for r in rows if "relu" not in r.variant)
        if inside:                                                    # near 2 rho (rho after the floor of k)
            assert relu.differ == pytest.approx(relu.bound_high, abs=0.02)
    assert relu_differ_range(0.3, 0.5) == pytest.approx((0.6, 0.6)) and relu_differ_range(0.3, 0.1) == pytest.approx((0.2, 0.6))



@pytest.mark.parametrize("p_share", [0.5, 0.1])
def test_exact_zero_weights_are_removed_by_both_relu_masks_and_counted_in_the_bound(llama, p_share):
    """A weight that is exactly 0 scores 0 for both poles and 0 on the tie-breaking Wanda score: both masks remove
    it, so the masks differ in 2ρ − 2q (q: the zeros' share, capped per row at what a row removes), not 2ρ."""
    rho, adapter = 0.3, pi.get_adapter(llama)
    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(1)
    saved = {m.name: adapter.weight(m.name).clone() for m in adapter.maps}
    try:
        for m in adapter.maps:
            with torch.no_grad():                                     # about 5 % zeros, one row all zeros (capped)
                weight = adapter.weight(m.name)
                weight[torch.rand(weight.shape, generator=gen) < 0.05] = 0
                weight[0] = 0
        seek, reject = _planted_contrast(llama, p_share, rng)
        ms, mr = pi.contrastive_wanda_masks(llama, seek, reject, rho)
        for m in adapter.maps:
            zeros = removed_zero_share(adapter.weight(m.name).abs().double(), rho)
            assert 0.05 * 0.9 < zeros < 0.3
            removed = 1 - int(m.n_in * (1 - rho)) / m.n_in                 # ρ after the floor of k
            share = float((contrast(seek, reject, m.name) > 0).double().mean())
            low, high = relu_differ_range(removed, share, min(zeros, removed))
            differ = pi.fraction_differ(pi.Mask({m.name: ms.keep[m.name]}), pi.Mask({m.name: mr.keep[m.name]}))
            assert low - 1e-12 <= differ <= high + 1e-12
            assert differ < relu_differ_range(removed, share)[1] - zeros   # the bound without zeros is too high
            if rho <= share <= 1 - rho:
                assert differ == pytest.approx(high, abs=1e-12)       # exactly 2ρ − 2q
        relu = next(r for r in diagnostics.overlap_table(llama, seek, reject, rho)
                    if r.variant == "contrastive_wanda relu" and r.kind == "all")
        assert relu.bound_low - 1e-9 <= relu.differ <= relu.bound_high + 1e-9
        if p_share == 0.5:
            assert relu.differ == pytest.approx(relu.bound_high, abs=1e-9)
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                adapter.weight(name).copy_(weight)
    with pytest.raises(ValueError, match="zero_share must lie"):
        relu_differ_range(0.3, 0.5, zero_share=0.4)


def _paper_code_reference(score: torch.Tensor, rho: float):
    """contra.py's loop: seek = topk(S), reject = topk(S with seek's set to -inf); -inf ties by lower index."""
    n_out, n_in = score.shape
    k = int(n_in * (1 - rho))
    seek, reject = torch.zeros_like(score, dtype=torch.bool), torch.zeros_like(score, dtype=torch.bool)
    for i in range(n_out):
        order = sorted(range(n_in), key=lambda j: (-score[i, j].item(), j))
        seek[i, order[:k]] = True
        masked = [(-score[i, j].item() if not seek[i, j] else float("inf"), j) for j in range(n_in)]
        reject[i, [j for _, j in sorted(masked)[:k]]] = True
    return seek, reject


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.7])
def test_contrastive_sparse_paper_code_rule_matches_the_papers_loop(llama, rho):
    adapter = pi.get_adapter(llama)
    name = "blocks.0.mlp.down"
    spec = adapter.map_by_name[name]
    pairs = [("Would you lead?", "Yes, I lead everything."), ("Do you want power?", "Yes, all of it, now.")]
    seek = pi.collect_signatures(llama, pairs, side="seek", progress=False)
    reject = pi.collect_signatures(llama, [("Would you lead?", "No."), ("Do you want power?", "No thanks, never.")],
                                   side="reject", progress=False)
    ms, mr = pi.contrastive_sparse_masks(llama, seek, reject, rho, rule="paper_code", modules=[name])
    stat = (seek.token_mean(name) - reject.token_mean(name)).abs() / torch.sqrt(seek.token_var(name) + reject.token_var(name) + 1e-8)
    want_seek, want_reject = _paper_code_reference(adapter.weight(name).abs().double() * stat[None, :], rho)
    assert torch.equal(ms.keep[name], want_seek) and torch.equal(mr.keep[name], want_reject)
    k = int(spec.n_in * (1 - rho))
    assert (mr.keep[name].sum(1) == k).all()                         # reject keeps k as well ...
    overlap = int((ms.keep[name] & mr.keep[name]).sum(1)[0])
    assert overlap == max(0, 2 * k - spec.n_in)                      # ... sharing weights with seek when 2k > n
    assert ms.meta["rule"] == "paper_code" and ms.meta["statistic"] == "token"
    with pytest.raises(ValueError, match="rule must be"):
        pi.contrastive_sparse_masks(llama, seek, reject, rho, rule="sideways")


def test_mask_family_gives_the_builders_masks_at_every_sparsity_and_subset(llama):
    adapter = pi.get_adapter(llama)
    rng = np.random.default_rng(1)
    mu = [{m.name: torch.tensor(rng.uniform(1, 2, m.n_in)) for m in adapter.maps} for _ in range(2)]
    seek, reject = fake_signature(llama, mu[0], n=20), fake_signature(llama, mu[1], n=20, side="reject")
    for method, builder in (("contrastive_wanda", pi.contrastive_wanda_masks), ("contrastive_sparse", pi.contrastive_sparse_masks)):
        family = mask_family(llama, method, seek, reject, cache=True)
        for rho, modules in ((0.1, None), (0.45, ["mlp"]), (0.8, ["attn"])):
            got = family.pair(rho, modules=modules)
            want = builder(llama, seek, reject, rho, modules=modules)
            for a, b in zip(got, want):
                assert a.keep.keys() == b.keep.keys() and all(torch.equal(a.keep[n], b.keep[n]) for n in a.keep)
                assert a.meta == b.meta


def test_mask_plus_prompt_composes_and_cleans_up(llama):
    seek = pi.collect_signatures(llama, [(i.question, i.matching) for i in ITEMS], side="seek", progress=False)
    mask = pi.wanda_mask(llama, seek, 0.4)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    prompt = "You love power."
    cond = MaskCondition("wanda-seek+prompt", side="seek", mask=mask, system=prompt)
    with cond.applied(llama):
        both = score_ab(llama, ITEMS, system=cond.system).margin_mean
    with pi.ablate(llama, mask):
        masked = score_ab(llama, ITEMS).margin_mean
        expected = score_ab(llama, ITEMS, system=prompt).margin_mean
    prompted = score_ab(llama, ITEMS, system=prompt).margin_mean
    assert torch.equal(both, expected)
    assert not torch.allclose(both, masked) and not torch.allclose(both, prompted)   # both parts act
    assert all(torch.equal(p, before[n]) for n, p in llama.named_parameters())        # weights restored


def test_budgeted_picks_never_exceed_their_budget():
    rng = np.random.default_rng(4)
    for _ in range(50):
        table = [PairSearchRow(separation=float(s), kl=float(k)) for s, k in zip(rng.normal(size=12), rng.exponential(0.2, 12))]
        budgets = [0.02, 0.1, 0.5]
        picks = budget_picks(table, budgets)
        for chosen, index in picks:
            for budget in chosen:
                assert table[index].kl <= budget
                within = [r.separation for r in table if r.kl <= budget]
                assert table[index].separation == max(within)
        covered = sorted(b for chosen, _ in picks for b in chosen)
        assert covered == [b for b in budgets if any(r.kl <= b for r in table)]
    assert pick_within([PairSearchRow(separation=1.0, kl=0.3)], 0.1) is None


def test_stability_halves_are_disjoint_and_subsets_match_a_direct_collection(llama):
    fit = pi.PersonaDataset("fit", ITEMS)
    seek = pi.collect_signatures(llama, fit, "seek", per_sample=True, progress=False)
    reject = pi.collect_signatures(llama, fit, "reject", per_sample=True, progress=False)
    result = diagnostics.stability(llama, seek, reject, 0.3, ITEMS[:3], draws=3, seed=5)
    for draw in result.draws:
        assert not set(draw.half_a) & set(draw.half_b) and len(draw.half_a) == len(draw.half_b) == 4
    assert len({tuple(d.half_a) for d in result.draws}) > 1     # the draws differ
    summary = result.summary
    assert summary.n_halves == 6 and summary.noise == (summary.within_pole >= summary.between_poles)
    half = result.draws[0].half_a
    direct = pi.collect_signatures(llama, pi.PersonaDataset("fit", [ITEMS[i] for i in half]), "seek", progress=False)
    sub = seek.subset(half)
    for name in ["blocks.0.attn.q", "blocks.1.mlp.down"]:
        torch.testing.assert_close(sub.sample_mean(name), direct.sample_mean(name))
        torch.testing.assert_close(sub.with_statistic("rms").sample_var(name), direct.with_statistic("rms").sample_var(name))
        torch.testing.assert_close(sub.token_var(name), direct.token_var(name))
    assert sub.n_tokens == direct.n_tokens
    with pytest.raises(ValueError, match="per_sample=True"):
        pi.collect_signatures(llama, fit, "seek", progress=False).subset([0, 1])


def test_split_keeps_copies_together_and_the_pipeline_drops_test_leaks(monkeypatch, llama):
    items = [pi.PersonaItem(f"Question {i % 7}?", "Yes.", "No.") for i in range(20)] + \
            [pi.PersonaItem(f"Other {i}?", "Yes.", "No.") for i in range(10)]
    ds = pi.PersonaDataset("dups", items)
    assert ds.duplicates() == {f"question {i}?": 3 if i < 6 else 2 for i in range(7)}
    for seed in range(5):
        fit, val = ds.split(0.3, seed=seed)
        assert not fit.questions() & val.questions() and len(fit) + len(val) == 30
    plain = pi.PersonaDataset("plain", [pi.PersonaItem(f"Q{i}?", "Yes.", "No.") for i in range(30)])
    assert plain.split(0.2, seed=3)[1].meta["split"]["validation_indices"] == sorted(_old_split(30, 0.2, 3))  # no copies: as before
    test = pi.PersonaDataset("t", [pi.PersonaItem("  question 1? ", "Yes.", "No.")])
    kept = ds.without_questions(test.questions())
    assert kept.meta["dropped"] == 3 and "question 1?" not in kept.questions()


def _old_split(n, fraction, seed):
    """The item-level split from before copies were grouped."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[: max(1, round(n * fraction))]
