import pytest

import persona_interp as pi
from persona_interp.evaluation import search
from persona_interp.evaluation.rows import MaskConfig
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.evaluation.tuning import MaskSpace, select_masks, select_prompts

FIT = [pi.PersonaItem(f"Would you take control of project {i}?", f"Yes, I take control {i}.", f"No, I decline {i}.") for i in range(6)]
VALIDATION = [pi.PersonaItem(f"Shall you lead team {i}?", "Yes, I will lead.", "No, someone else should.") for i in range(3)]


@pytest.fixture
def signatures(llama):
    return {scope: tuple(pi.collect_signatures(llama, pi.PersonaDataset("fit", FIT), side, token_scope=scope, progress=False)
                         for side in ("seek", "reject"))
            for scope in ("all", "answer")}


def test_select_masks_picks_the_best_separation_and_records_the_grid(llama, signatures, monkeypatch):
    seen = []
    real = search.score_ab
    monkeypatch.setattr(search, "score_ab", lambda model, items, **kw: seen.extend(i.question for i in items) or real(model, items, **kw))
    space = MaskSpace(sparsities=[0.2, 0.5], modules=[None, "mlp"], layer_ranges=["late"], token_scopes=["all", "answer"])
    choice = select_masks(llama, "contrastive_wanda", signatures, VALIDATION, space, persona="power")
    assert len(choice.table) == 8 and set(seen) == {item.question for item in VALIDATION}   # validation items only
    best = max(choice.table, key=lambda r: r.separation)
    assert type(choice.config) is MaskConfig and choice.config.model_dump() == best.model_dump(include=set(MaskConfig.model_fields))
    seek, reject = choice.masks                                      # the returned masks reproduce the table's number
    margins = []
    for mask in (seek, reject):
        with pi.ablate(llama, mask):
            margins.append(score_ab(llama, VALIDATION, progress=False).margin_mean)
    assert float((margins[0] - margins[1]).mean()) == pytest.approx(best.separation, abs=1e-9)
    assert seek.meta["sparsity"] == best.sparsity
    if best.modules == "mlp":
        assert all(".mlp." in name for name in seek.keep)


def test_select_masks_damage_constraint_and_errors(llama, signatures):
    reference = DamageReference.build(llama, ["plain neutral text one", "another neutral text"])
    space = MaskSpace(sparsities=[0.1, 0.6], modules=[None], layer_ranges=["all"], token_scopes=["all"])
    free = select_masks(llama, "wanda", signatures, VALIDATION, space, reference=reference)
    kls = sorted(r.kl for r in free.table)
    capped = select_masks(llama, "wanda", signatures, VALIDATION, space, reference=reference, max_kl=kls[0])
    assert capped.config.sparsity == min(free.table, key=lambda r: r.kl).sparsity
    with pytest.raises(ValueError, match="no configuration has KL"):
        select_masks(llama, "wanda", signatures, VALIDATION, space, reference=reference, max_kl=-1.0)
    with pytest.raises(ValueError, match="unknown method 'lottery': use one of .*contrastive_sparse_code"):
        select_masks(llama, "lottery", signatures, VALIDATION, space)
    with pytest.raises(ValueError, match="no signatures for token scope"):
        select_masks(llama, "wanda", {"all": signatures["all"]}, VALIDATION, MaskSpace(token_scopes=["answer"]))


def test_select_prompts(llama):
    seek, reject = ["You love power.", "Take every chance to lead."], ["You avoid power.", "Stay modest."]
    choice = select_prompts(llama, seek, reject, VALIDATION)
    margin = {(r.side, r.prompt): r.margin for r in choice.table}
    assert choice.seek == max(seek, key=lambda p: margin["seek", p]) and choice.reject == min(reject, key=lambda p: margin["reject", p])
    assert margin["seek", seek[0]] == pytest.approx(float(score_ab(llama, VALIDATION, system=seek[0], progress=False).margin_mean.mean()))
    with pytest.raises(ValueError, match="at least one phrasing"):
        select_prompts(llama, [], reject, VALIDATION)
