"""The agreement check on the embedded model: bfloat16 against float32 on the same items, masks and prompts.

The tolerances are stated on per-item, per-token margins (nats/token), not on timings; they were set from the
measured differences (docs/performance.md, "bfloat16 on a CPU") with headroom, and the verdicts (interval above, below or across 0)
must not change."""
from __future__ import annotations

import pytest
import torch

import persona_interp as pi
from persona_interp.data.personas import persona_prompts
from persona_interp.evaluation.scoring import score_ab
from persona_interp.evaluation.stats import paired_difference

# measured 2026-12-01 on these 32 items: max |Δ| 0.08-0.16, mean |Δ| 0.028-0.039 over the five conditions
MAX_ABS = 0.25         # nats/token, any single item
MEAN_ABS = 0.06        # nats/token, averaged over items


def _verdict(estimate) -> str:
    return "+" if estimate.low > 0 else "-" if estimate.high < 0 else "0"


@pytest.mark.slow
def test_bfloat16_margins_and_verdicts_agree_with_float32(smollm):
    bf16 = pi.load_model(dtype="bfloat16")
    assert pi.get_adapter(bf16).fingerprint == pi.get_adapter(smollm).fingerprint
    fit = pi.load_persona("power").sample(32, seed=0)
    test = list(pi.load_persona("power", "test").sample(32, seed=1))
    seek = pi.collect_signatures(smollm, fit, side="seek", progress=False)
    reject = pi.collect_signatures(smollm, fit, side="reject", progress=False)
    masks = dict(zip(("seek", "reject"), pi.contrastive_wanda_masks(smollm, seek, reject, 0.1)))
    prompts = {side: persona_prompts("power", side)[0] for side in ("seek", "reject")}
    margins: dict[str, dict[str, torch.Tensor]] = {}
    for name, model in (("float32", smollm), ("bfloat16", bf16)):
        out = {"base": score_ab(model, test, progress=False).margin_mean}
        for side in ("seek", "reject"):
            out[f"prompt-{side}"] = score_ab(model, test, system=prompts[side], progress=False).margin_mean
            with pi.ablate(model, masks[side]):
                out[f"mask-{side}"] = score_ab(model, test, progress=False).margin_mean
        margins[name] = out
    diffs = {c: (margins["bfloat16"][c] - full).abs() for c, full in margins["float32"].items()}
    for condition, diff in diffs.items():
        print(f"{condition}: max |Δ| {diff.max():.4f}, mean |Δ| {diff.mean():.4f} nats/token")
    verdicts = {regime: {name: _verdict(paired_difference(m[f"{regime}-seek"], m[f"{regime}-reject"]))
                         for name, m in margins.items()} for regime in ("prompt", "mask")}
    print(verdicts)
    for condition, diff in diffs.items():
        assert diff.max() < MAX_ABS and diff.mean() < MEAN_ABS, condition
    for regime, verdict in verdicts.items():
        assert verdict["float32"] == verdict["bfloat16"], regime
