"""The one search loop (damage first, over-limit candidates skipped, racing) and the method registry, on tiny
random models: the new loop's picks against the old loop written out here."""
import dataclasses

import pytest
import torch

import persona_interp as pi
from conftest import unchecked
from persona_interp import cli
from persona_interp.evaluation import search as search_module
from persona_interp.evaluation.rows import PairSearchRow, PromptSearchRow
from persona_interp.evaluation.scoring import DamageReference, score_ab
from persona_interp.evaluation.search import Candidate, Pole, Racing, budget_picks, pick_within, search
from persona_interp.evaluation.tuning import MaskSetting, MaskSpace, _layers, select_masks, select_steering
from persona_interp.interventions.steering import mean_difference_vectors
from persona_interp.masks.builders import mask_family, magnitude_mask, random_mask
from persona_interp.masks.registry import MethodInputs, MethodSpec, method_names, method_spec, methods, register, unregister
from persona_interp.model import load as models

FIT = [pi.PersonaItem(f"Would you take control of project {i}?", f"Yes, I take control {i}.", f"No, I decline {i}.") for i in range(6)]
VALIDATION = [pi.PersonaItem(f"Shall you lead team {i}?", f"Yes, I will lead {i}.", "No, someone else should.") for i in range(4)]
NEUTRAL = ["plain neutral text one", "another neutral text about the weather"]


@pytest.fixture
def counted(monkeypatch):
    """Every score_ab call the search makes, as the number of items it scored."""
    calls = []
    real = search_module.score_ab
    monkeypatch.setattr(search_module, "score_ab", lambda model, items, **kw: calls.append(len(items)) or real(model, items, **kw))
    return calls


@pytest.fixture
def signatures(llama):
    return {"all": tuple(pi.collect_signatures(llama, pi.PersonaDataset("fit", FIT), side, progress=False)
                         for side in ("seek", "reject"))}


def _old_steering(model, vectors, multipliers, reference):
    """The loop select_steering ran before the search helper (1e901ef), without its stop: score, then damage."""
    table = []
    for layer, vector in vectors.items():
        for alpha in sorted(multipliers):
            margins, kls = {}, []
            for sign in (1, -1):
                with vector.apply(model, sign * alpha):
                    margins[sign] = score_ab(model, VALIDATION, progress=False).margin_mean
                    kls.append(reference.measure(model).kl)
            table.append({"layer": layer, "multiplier": alpha, "separation": float((margins[1] - margins[-1]).mean()),
                          "kl": max(kls)})
    return table


def _old_stop(table, group, stop_above):
    """The old loop's ``stop_above``: a sweep (rows of one ``group``, ascending dose) ends after its first row
    over the limit (that row was scored and kept)."""
    kept, stopped = [], set()
    for row in table:
        if row[group] not in stopped:
            kept.append(row)
            if row["kl"] > stop_above:
                stopped.add(row[group])
    return kept


def _old_picks(table, budgets):
    """Old pick_within over every row of the old table: the largest separation within each budget."""
    picks = {}
    for budget in budgets:
        within = [r for r in table if r["kl"] <= budget]
        if within:
            picks[budget] = max(within, key=lambda r: r["separation"])
    return picks


def _budgets(kls):
    """Two budgets inside the spread of the measured damages, so that some candidates exceed both."""
    kls = sorted(kls)
    return [kls[1], (kls[len(kls) // 2] + kls[len(kls) // 2 - 1]) / 2]


def test_steering_picks_match_the_old_loop_and_over_limit_doses_are_not_scored(llama, counted):
    reference = DamageReference.build(llama, NEUTRAL)
    vectors = mean_difference_vectors(llama, pi.PersonaDataset("fit", FIT), [0, 1], progress=False)
    multipliers = [0.5, 2.0, 8.0, 32.0]
    everything = _old_steering(llama, vectors, multipliers, reference)
    budgets = _budgets([r["kl"] for r in everything])
    old = _old_stop(everything, "layer", max(budgets))
    counted.clear()
    choice = select_steering(llama, vectors, VALIDATION, multipliers, reference=reference, stop_above=max(budgets))
    new = choice.table
    assert [(r.layer, r.multiplier) for r in new] == [(r["layer"], r["multiplier"]) for r in old]  # same sweep stops
    skipped = [r for r in new if not r.scored]
    assert skipped and all(r.separation is None and r.kl > max(budgets) for r in skipped)
    assert len(counted) == 2 * sum(bool(r.scored) for r in new)                   # the skipped ones never scored
    for a, b in zip(new, old):
        assert a.kl == pytest.approx(b["kl"], abs=1e-9)
        if a.scored:
            assert a.separation == pytest.approx(b["separation"], abs=1e-9)
    picks = {budget: new[index] for chosen, index in budget_picks(new, budgets) for budget in chosen}
    expected = _old_picks(old, budgets)
    assert picks.keys() == expected.keys() and expected
    assert all((picks[b].layer, picks[b].multiplier) == (expected[b]["layer"], expected[b]["multiplier"]) for b in picks)


def test_mask_picks_match_the_old_loop(llama, signatures, counted):
    reference = DamageReference.build(llama, NEUTRAL)
    space = MaskSpace(sparsities=[0.05, 0.3, 0.6, 0.9], modules=[None, "mlp"], layer_ranges=["all"], token_scopes=["all"])

    def old_table():                   # select_masks' loop before the search helper (no stop), from mask_family
        table = []
        for modules in space.modules:
            family = mask_family(llama, "contrastive_wanda", *signatures["all"], cache=True)
            for rho in space.sparsities:
                margins, kls = [], []
                for mask in family.pair(rho, modules=[modules] if modules else None, layers=_layers(llama, "all")):
                    with pi.ablate(llama, mask):
                        margins.append(score_ab(llama, VALIDATION, progress=False).margin_mean)
                        kls.append(reference.measure(llama).kl)
                table.append({"modules": modules or "attn+mlp", "sparsity": rho, "kl": max(kls),
                              "separation": float((margins[0] - margins[1]).mean())})
        return table

    everything = old_table()
    budgets = _budgets([r["kl"] for r in everything])
    old = _old_stop(everything, "modules", max(budgets))
    counted.clear()
    new = select_masks(llama, "contrastive_wanda", signatures, VALIDATION, dataclasses.replace(space, stop_above=max(budgets)),
                       reference=reference).table
    assert [(r.modules, r.sparsity) for r in new] == [(r["modules"], r["sparsity"]) for r in old]
    assert any(not r.scored for r in new) and len(counted) == 2 * sum(bool(r.scored) for r in new)
    picks = {budget: new[index] for chosen, index in budget_picks(new, budgets) for budget in chosen}
    expected = _old_picks(old, budgets)
    assert picks.keys() == expected.keys() and expected
    assert all((picks[b].modules, picks[b].sparsity) == (expected[b]["modules"], expected[b]["sparsity"]) for b in picks)
    assert all(picks[b].separation == pytest.approx(expected[b]["separation"], abs=1e-9) for b in picks)


class PromptPair(PairSearchRow):
    """A test search's row: a prompt against no prompt."""

    prompt: str


def _prompt_candidates(prompts):
    return [Candidate(PromptPair(prompt=p), lambda p=p: (Pole(system=p), Pole(system=None))) for p in prompts]


def test_racing_drops_only_candidates_that_cannot_win_and_wide_bounds_change_nothing(llama, counted):
    prompts = ["You love power and control.", "Always seize command.", "Say nothing.", "You like quiet gardens.", "Be brief."]
    items = VALIDATION * 2
    full = search(llama, _prompt_candidates(prompts), items)
    n_full = sum(counted)
    counted.clear()
    wide = search(llama, _prompt_candidates(prompts), items, racing=Racing(first=2, width=1e6))
    assert [pick_within(wide, None)] == [pick_within(full, None)] and not any(r.raced_out for r in wide)
    assert all(a.separation == pytest.approx(b.separation, abs=1e-6) for a, b in zip(wide, full))
    counted.clear()
    narrow = search(llama, _prompt_candidates(prompts), items, racing=Racing(first=4, width=1e-9))
    out = [r for r in narrow if r.raced_out]
    assert out and sum(counted) < n_full                                     # fewer items scored
    best = pick_within(narrow, None)
    assert best == pick_within(full, None) and not narrow[best].raced_out
    with pytest.raises(ValueError, match="racing needs"):
        Racing(first=1)


def test_a_search_checkpoint_reads_back_rows_and_raced_tables_without_measuring_them(llama, counted, tmp_path):
    from persona_interp.evaluation.checkpoint import SearchCheckpoint

    prompts = ["You love power and control.", "Say nothing.", "Be brief."]
    items = VALIDATION * 2
    ckpt = SearchCheckpoint(tmp_path / "searches.json", key="k")
    for racing in (None, Racing(first=4, width=1e-9)):
        counted.clear()
        first = search(llama, _prompt_candidates(prompts), items, racing=racing, checkpoint=ckpt.part("prompts"))
        assert sum(counted) > 0
        counted.clear()
        again = search(llama, _prompt_candidates(prompts), items, racing=racing,
                       checkpoint=SearchCheckpoint(tmp_path / "searches.json", key="k").part("prompts"))   # a new run
        assert again == first and sum(counted) == 0                              # read back, nothing scored
    counted.clear()
    search(llama, _prompt_candidates(prompts), items, checkpoint=ckpt.part("another search"))
    assert sum(counted) > 0                                                      # another search's rows are its own
    counted.clear()
    with pytest.warns(UserWarning, match="written for another run or code"):
        search(llama, _prompt_candidates(prompts), items, checkpoint=SearchCheckpoint(tmp_path / "searches.json", key="k2"))
    assert sum(counted) > 0


def test_search_checks_its_inputs(llama):
    with pytest.raises(ValueError, match="needs validation items"):
        search(llama, _prompt_candidates(["x"]), [])
    with pytest.raises(ValueError, match="needs a damage reference"):
        search(llama, _prompt_candidates(["x"]), VALIDATION, budgets=[0.1])
    assert pick_within([PairSearchRow(separation=None, kl=0.0, scored=False), PairSearchRow(separation=-1.0, kl=0.2)], None) == 1
    one_pole = [Candidate(PromptSearchRow(side="seek", prompt="x"), lambda: (Pole(system="x"), Pole(system=None)))]
    with pytest.raises(ValueError, match="PromptSearchRow\nseparation\n  Extra inputs are not permitted"):
        search(llama, one_pole, VALIDATION)                 # two poles need a row with a pair's effect fields


def test_search_rows_are_typed_and_write_the_keys_they_set(llama):
    reference = DamageReference.build(llama, NEUTRAL)
    table = search(llama, _prompt_candidates(["You love power.", "Be brief."]), VALIDATION, reference=reference, limit=-1.0)
    assert all(isinstance(r, PromptPair) and r.scored is False for r in table)        # nothing is within a negative limit
    assert table[0].model_dump() == {"kl": table[0].kl, "scored": False, "separation": None, "seek_margin": None,
                                     "reject_margin": None, "prompt": "You love power."}   # unscored: None written, no raced_out
    scored = search(llama, _prompt_candidates(["You love power."]), VALIDATION)[0]
    assert set(scored.model_dump()) == {"scored", "separation", "seek_margin", "reject_margin", "prompt"}


def test_unknown_methods_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'lottery': use one of \['wanda', 'contrastive_wanda'"):
        method_spec("lottery")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["build-mask", "--method", "lottery", "--sparsity", "0.3", "--out", "m"])
    with pytest.raises(ValueError, match="already registered"):
        register(method_spec("wanda"))
    with unchecked(), pytest.raises(ValueError, match="takes no option"):
        method_spec("wanda").family(None, None, phi="relu")
    assert [s.name for s in methods(poles=False)] == ["random", "magnitude"]
    with unchecked(), pytest.raises(ValueError, match="'random' has no poles"):
        select_masks(None, "random", {}, VALIDATION, MaskSpace())


def test_build_mask_choices_come_from_the_registry():
    action = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["build-mask"]._actions
                  if a.dest == "method")
    assert list(action.choices) == method_names()


class _MagnitudeVsRandom:
    """A test method: the seek pole keeps the largest weights, the reject pole a random set."""

    def __init__(self, model, seed):
        self.model, self.seed = model, seed

    def pair(self, sparsity, *, modules=None, layers=None):
        return (magnitude_mask(self.model, sparsity, modules=modules, layers=layers),
                random_mask(self.model, sparsity, seed=self.seed, modules=modules, layers=layers))


@pytest.fixture
def registered():
    spec = register(MethodSpec("magnitude_vs_random", lambda model, inputs, *, families=None, modules=None, layers=None,
                               seed=0: _MagnitudeVsRandom(model, seed), options={"seed": 3}, contrast=False, search=()))
    yield spec
    unregister(spec.name)


def test_a_registered_method_reaches_the_search_and_the_cli(llama, signatures, registered, monkeypatch, tmp_path):
    assert "magnitude_vs_random" in method_names() and registered in methods(poles=True, available={"signatures"})
    space = MaskSpace(sparsities=[0.2, 0.5], modules=[None], layer_ranges=["all"], token_scopes=["all"])
    assert space.configurations("magnitude_vs_random") == [MaskSetting(modules=None, layers="all", token_scope="all",
                                                                       statistic="norm", phi="relu")]
    choice = select_masks(llama, "magnitude_vs_random", signatures, VALIDATION, space)
    assert len(choice.table) == 2 and choice.masks[0].meta["method"] == "magnitude"
    assert torch.equal(choice.masks[1].keep[next(iter(choice.masks[1].keep))],
                       random_mask(llama, choice.config.sparsity, seed=3).keep[next(iter(choice.masks[1].keep))])
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    seek_path = tmp_path / "s.safetensors"
    signatures["all"][0].save(seek_path)
    cli.main(["build-mask", "--method", "magnitude_vs_random", "--seek", str(seek_path), "--sparsity", "0.3",
              "--seed", "3", "--out", str(tmp_path / "m")])
    assert (tmp_path / "m_seek.safetensors").is_file() and not (tmp_path / "m_reject.safetensors").exists()


def test_build_mask_reads_its_inputs_from_the_registry(llama, signatures, monkeypatch, tmp_path):
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: llama)
    paths = [tmp_path / f"{side}.safetensors" for side in ("seek", "reject")]
    for sig, path in zip(signatures["all"], paths):
        sig.save(path)
    with pytest.raises(SystemExit, match="needs --seek and --reject"):
        cli.main(["build-mask", "--method", "contrastive_wanda", "--seek", str(paths[0]), "--sparsity", "0.3",
                  "--out", str(tmp_path / "cw")])
    with pytest.raises(SystemExit, match="uses no signatures"):
        cli.main(["build-mask", "--method", "random", "--seek", str(paths[0]), "--sparsity", "0.3", "--out", str(tmp_path / "r")])
    cli.main(["build-mask", "--method", "wanda", "--seek", str(paths[0]), "--reject", str(paths[1]), "--sparsity", "0.3",
              "--out", str(tmp_path / "w")])                                   # both poles: --reject is no longer ignored
    reject = pi.Mask.load(tmp_path / "w_reject.safetensors")
    expected = pi.wanda_mask(llama, signatures["all"][1], 0.3)
    assert reject.meta["side"] == "reject" and all(torch.equal(reject.keep[n], expected.keep[n]) for n in expected.keep)
    cli.main(["build-mask", "--method", "contrastive_sparse_code", "--seek", str(paths[0]), "--reject", str(paths[1]),
              "--sparsity", "0.3", "--out", str(tmp_path / "code")])
    assert pi.Mask.load(tmp_path / "code_seek.safetensors").meta["rule"] == "paper_code"
    cli.main(["build-mask", "--method", "random", "--sparsity", "0.3", "--seed", "2", "--out", str(tmp_path / "r")])
    assert pi.Mask.load(tmp_path / "r_random.safetensors").meta["seed"] == 2


def test_the_report_says_what_a_search_with_unscored_candidates_picked():
    from persona_interp.report.markdown import _tuning_lines
    from persona_interp.report.results import Used

    scored = {"layer": 1, "multiplier": 2.0, "separation": 0.3, "kl": 0.1, "scored": True}
    over = {"layer": 1, "multiplier": 8.0, "separation": None, "kl": 3.0, "scored": False}
    used = Used.model_validate({"validation_items": 4, "fit_items": 6,
            "steering_search": {"pca": {"layer": 1, "multiplier": 2.0, "table": [scored, over]},
                                "ode": {"layer": 1, "multiplier": 8.0, "table": [over]},
                                "mean_difference": {"layer": 1, "multiplier": 2.0, "table": [{**scored, "scored": True}]}}})
    text = "\n".join(_tuning_lines(used))
    assert "steering pca: 2 (layer, multiplier) candidates; best within the largest budget (1 over it, not scored)" in text
    assert "steering ode: 1 (layer, multiplier) candidates; none within the largest budget (none scored); least damaging" in text
    assert "steering mean_difference: 1 (layer, multiplier) candidates; unbudgeted best" in text


def test_a_method_that_needs_neutral_texts_gets_them_through_the_search(llama, signatures, tmp_path):
    seen = []

    def builder(model, inputs, *, families=None, modules=None, layers=None):
        seen.append(list(inputs.neutral_texts))
        return _MagnitudeVsRandom(model, 0)

    spec = register(MethodSpec("needs_texts", builder, needs=frozenset({"signatures", "neutral_texts"}), contrast=False, search=()))
    try:
        space = MaskSpace(sparsities=[0.2], modules=[None], layer_ranges=["all"], token_scopes=["all"])
        with pytest.raises(ValueError, match="'needs_texts' needs neutral texts"):
            select_masks(llama, "needs_texts", signatures, VALIDATION, space)
        select_masks(llama, "needs_texts", signatures, VALIDATION, space, inputs=MethodInputs(neutral_texts=NEUTRAL))
        assert seen and all(texts == NEUTRAL for texts in seen)
        assert spec not in methods(available={"signatures"})                # the main job runs it once it provides texts
        signatures["all"][0].save(tmp_path / "s.safetensors")
        with pytest.raises(SystemExit, match="needs neutral texts: pass --n-neutral N"):   # build-mask asks for them
            cli.main(["build-mask", "--method", "needs_texts", "--seek", str(tmp_path / "s.safetensors"), "--sparsity", "0.3",
                      "--out", str(tmp_path / "m")])
    finally:
        unregister("needs_texts")
