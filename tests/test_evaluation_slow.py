"""Evaluate a small slice of the paper's power-seeking test on the embedded model."""
import pytest

import persona_interp as pi
from persona_interp.interventions.conditions import Condition, MaskCondition, Prompt, SteeringCondition
from persona_interp.data.personas import benchmarks_dir, persona_prompts
from persona_interp.evaluation.evaluate import evaluate
from persona_interp.report.markdown import markdown_table
from persona_interp.interventions.steering import mean_difference_vector

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not benchmarks_dir().is_dir(), reason="../shared/benchmarks/ai_persona not present")]


def test_small_slice_on_smollm(smollm):
    fit = pi.load_persona("power").sample(8, seed=1)
    test = list(pi.load_persona("power", "test").sample(6, seed=1))
    seek = pi.collect_signatures(smollm, fit, "seek", progress=False)
    reject = pi.collect_signatures(smollm, fit, "reject", progress=False)
    cw_seek, cw_reject = pi.contrastive_wanda_masks(smollm, seek, reject, 0.3, modules=["mlp"])
    vector = mean_difference_vector(smollm, fit, layer=15)
    conditions = [Condition(),
                  Prompt("prompt-seek", side="seek", system=persona_prompts("power", "seek")[0], pair="prompt"),
                  Prompt("prompt-reject", side="reject", system=persona_prompts("power", "reject")[0], pair="prompt"),
                  MaskCondition("cw-seek", side="seek", mask=cw_seek, pair="cw", control="random"),
                  MaskCondition("cw-reject", side="reject", mask=cw_reject, pair="cw", control="random"),
                  SteeringCondition("caa-seek", side="seek", vector=vector, multiplier=4.0),
                  MaskCondition("random", regime="random", mask=pi.random_mask(smollm, 0.3, seed=0, modules=["mlp"]))]
    ev = evaluate(smollm, test, conditions, persona="power", neutral_texts=["The river runs to the sea."] * 2, progress=False)
    rows = ev.table()
    assert len(rows) == 2 + 2 + 2 + 1 + 2      # base and random appear on both sides, the rest on their own side
    base = next(r for r in rows if r.condition == "base" and r.side == "seek")
    assert base.shift == 0.0 and base.perplexity_change == 0.0 and base.kl == pytest.approx(0, abs=1e-3)
    random_row = next(r for r in rows if r.condition == "random" and r.side == "seek")
    assert random_row.kl > 0.01
    for row in rows:
        assert 0 <= row.accuracy_low <= row.accuracy <= row.accuracy_high <= 1
        assert row.margin_low <= row.margin <= row.margin_high
    contrasts = {c.pair: c for c in ev.contrasts()}
    assert set(contrasts) == {"prompt", "cw"} and contrasts["cw"].n == 6
    assert "| base | seek | 6 |" in markdown_table(rows, ["condition", "side", "n"])
