"""The findings page's paragraphs on the studies, written from their committed records: the atlas
([`atlas_findings_markdown`][persona_interp.report.study_findings.atlas_findings_markdown]), the composition study
([`composition_findings_markdown`][persona_interp.report.study_findings.composition_findings_markdown]) and the
regime comparison ([`regimes_findings_markdown`][persona_interp.report.study_findings.regimes_findings_markdown]).

Every number and verdict comes from the records (with its 95 % interval where they have one), and a sentence whose
figures a record lacks is left out. The verdicts compare intervals: a top-k ablation is *more than random* where its
interval leaves 0 and every random draw's shift on the same side, *not distinguishable from random* where it reaches
the random draws' range; a study's condition beats its random control where the two intervals lie apart.

Examples:
    >>> from persona_interp.report.study_results import load_composition
    >>> print(composition_findings_markdown(load_composition("reports/composition.json")).split("; [")[0])
    **A full MBTI type from the four axes** (`persona-interp compose`, INTJ, ρ = 0.3, 65 test items per axis, seed 0
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

from persona_interp.analysis.causal import DoseRow
from persona_interp.data.personas import MBTI_AXES
from persona_interp.evaluation.stats import Estimate
from persona_interp.report.markdown import transfer_ratio
from persona_interp.report.study_results import AtlasStudy, CompositionStudy, EqualDamageComparison, RegimesStudy, TypeRow
from persona_interp.report.wording import count, join, persona_list, span

NO_PROMPT = "no prompt"                 # the dose rows' system without a persona prompt
MODE_WORDS = {"zero": "zeroed", "mean": "mean-ablated"}
KIND_ORDER, MODE_ORDER = ("neuron", "head"), ("zero", "mean")
RECUR_TOP, RECUR_PAIRS = 3, 3           # a top unit recurs when it ranks in the top three of at least three pairs
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth",
            9: "ninth", 10: "tenth"}
UNRELATED = 0.15                        # regime directions whose |cosine| is at most this count as nearly unrelated
SMALL_SHARE = 0.5                       # a direction reproducing under half its regime's effect does not carry it
IDENTITY = 0.005                        # a regime whose own injection gives 1.00 of its effect on every pair is its direction
REGIME_WORDS = {"prompt": "persona prompt", "mask": "Contrastive-Wanda mask pair", "steering": "CAA steering vector"}

Side = Literal["above", "across", "below"]


def _side(estimate: Estimate) -> Side:
    """Where an interval lies: ``above`` 0, ``below`` it, or ``across`` it (an undefined interval too)."""
    if estimate.defined and estimate.low > 0:
        return "above"
    return "below" if estimate.defined and estimate.high < 0 else "across"


def _name(persona: str) -> str:
    return persona_list([persona])


def _percent(change: float) -> str:
    """A perplexity change as a signed percentage: ``+0.5 %``, ``+29 %``, ``+205 %``."""
    value = 100 * change
    return f"{value:+.0f} %" if abs(value) >= 10 else f"{value:+.1f} %"


def _ks(ks: Sequence[int]) -> str:
    return "k = " + join([str(k) for k in ks])


def _seeds(seeds: Sequence[int]) -> str:
    """``0–2`` for consecutive seeds, ``0, 3 and 5`` otherwise."""
    ordered = sorted(seeds)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}–{ordered[-1]}"
    return join([str(s) for s in ordered])


def _at_least(value: float, digits: int = 3) -> str:
    """``value`` rounded down, so that "at least" stays true: 0.99839 is ``0.998``."""
    return f"{math.floor(value * 10 ** digits) / 10 ** digits:.{digits}f}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# The atlas

def _curve(atlas: AtlasStudy, kind: str, mode: str, system: str = NO_PROMPT) -> list[tuple[DoseRow, list[float]]]:
    """The top-k rows of one dose–response curve, by k, each with the random draws' shifts at the same k (rows without
    a random draw left out)."""
    rows = [r for r in atlas.dose_response or [] if (r.kind, r.mode, r.system) == (kind, mode, system)]
    curve = []
    for top in sorted((r for r in rows if r.selection == "top"), key=lambda r: r.k):
        random = [r.shift for r in rows if r.selection == "random" and r.k == top.k]
        if random:
            curve.append((top, random))
    return curve


def versus_random(top: Estimate, random: Sequence[float]) -> str:
    """The verdict on a top-k ablation against as many random units: ``more than random`` where its interval leaves
    0 and lies beyond every random draw's shift on its side, ``not distinguishable from random`` where it reaches the
    range of the draws' shifts, ``less than random`` otherwise.

    Examples:
        >>> versus_random(Estimate(0.43, 0.24, 0.61, 48), [0.04, 0.03, 0.05])
        'more than random'
        >>> versus_random(Estimate(-0.19, -0.28, -0.09, 48), [-0.04, -0.01])
        'more than random'
        >>> versus_random(Estimate(0.08, 0.06, 0.10, 48), [0.03, 0.11])
        'not distinguishable from random'
    """
    if top.defined and (top.low > max(0.0, *random) or top.high < min(0.0, *random)):
        return "more than random"
    if not top.defined or (top.low <= max(random) and top.high >= min(random)):
        return "not distinguishable from random"
    return "less than random"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _curve_clause(curve: list[tuple[DoseRow, list[float]]]) -> str:
    """``more than random at k = 4, 16 and 64 and not distinguishable from random at k = 1``."""
    verdicts: dict[str, list[int]] = {}
    for top, random in curve:
        verdicts.setdefault(versus_random(top.estimate("shift"), random), []).append(top.k)
    if len(verdicts) == 1:
        verdict = next(iter(verdicts))
        return f"{verdict} at {'every' if verdict == 'more than random' else 'any'} k" if len(curve) > 1 else f"{verdict} at k = {curve[0][0].k}"
    order = ["more than random", "not distinguishable from random", "less than random"]
    return join([f"{verdict} at {_ks(verdicts[verdict])}" for verdict in order if verdict in verdicts])


def _largest(curve: list[tuple[DoseRow, list[float]]], digits: int = 3) -> str:
    """``k = 64: +0.361 [-0.103, +0.825] against +0.315 for random, at +205 % perplexity``."""
    top, random = curve[-1]
    damage = f", at {_percent(top.perplexity_change)} perplexity" if top.perplexity_change is not None else ""
    return f"k = {top.k}: {top.estimate('shift').signed(digits)} against {_mean(random):+.{digits}f} for random{damage}"


def _against_steering(e: EqualDamageComparison) -> str:
    """Whether the top-k ablation moves the margin ``more than``, ``as much as`` or ``less than`` the steering vector
    at the same KL, in either direction: by magnitude, the ablation's interval apart from both of the steering's."""
    ablation = e.shift("ablation")
    low, high = (ablation.low, ablation.high) if ablation.value >= 0 else (-ablation.high, -ablation.low)
    steering = [e.shift("steer_seek"), e.shift("steer_reject")]
    magnitudes = [(s.low, s.high) if s.value >= 0 else (-s.high, -s.low) for s in steering]
    if low > max(h for _, h in magnitudes):
        return "more than"
    if high < min(lo for lo, _ in magnitudes):
        return "less than"
    return "as much as"


def _atlas_detail(atlas: AtlasStudy) -> str:
    """The paragraph on the pair with the fullest dose–response: localisation, every curve against random units, the
    prompts and the comparison with steering at equal damage."""
    config, persona = atlas.config, atlas.persona
    sizes = {d.n_samples for d in atlas.signature_data}
    signatures = (f"signatures of {sizes.pop()} calibration items per pole" if len(sizes) == 1
                  else "signatures of " + " / ".join(f"{d.side} {d.n_samples}" for d in atlas.signature_data) + " calibration items")
    setup = [signatures] + ([f"steering vector fit on {atlas.fit_items}"] if atlas.equal_damage else [])
    setup += [f"{config.n_causal} held-out test items", f"random controls over seeds {_seeds(config.seeds)}"] if atlas.dose_response else []
    text = (f"**Where the {_name(persona)} persona sits, and whether its units are causal.** `persona-interp analyse --persona "
            f"{persona}` ({', '.join(setup)}; [`reports/atlas/{persona}.md`](reports/atlas/{persona}.md), figures in "
            f"`figures/atlas/`): the two poles' signatures have a cosine of at least {_at_least(min(atlas.signature_cosine))} "
            "in every layer")
    grid = atlas.grids.get("differ_cw")
    shares = [v for row in grid.values for v in row if not math.isnan(v)] if grid else []
    if shares:
        text += (f", and the opposing ReLU Contrastive-Wanda masks differ in {span(shares, 100, 0)} % of entries across "
                 f"layers and maps (the construction alone lets them differ in up to 2ρ = {200 * config.sparsity:.0f} %, "
                 "whatever the personas; see the like-for-like overlap above)")
    sentences = [text + "."]
    if atlas.top_neurons:
        layers = [u.layer for u in atlas.top_neurons]
        sentences.append(f"The {count(len(layers))} most divergent MLP neurons sit in layers {min(layers)}–{max(layers)}.")
    main = _curve(atlas, "neuron", "zero")
    if main:
        top, random = main[-1]
        shift, damage = top.estimate("shift"), top.perplexity_change
        side = _side(shift)
        moves = (f"shifts the answer margin toward {'seek' if side == 'above' else 'reject'} by {shift.signed(3)} nats/token"
                 if side != "across" else f"does not detectably shift the answer margin ({shift.signed(3)}, interval across 0)")
        text = (f"Zero-ablating the {top.k} most divergent neurons {moves}" + (f" at {_percent(damage)} perplexity" if damage is not None else "")
                + f", against {_mean(random):+.3f} (seeds {min(random):+.3f} to {max(random):+.3f}) for {top.k} random neurons")
        if len(main) > 1:
            values = [abs(t.value) for t in (row.estimate("shift") for row, _ in main)]
            grows = all(a < b for a, b in zip(values, values[1:]))
            text += (f"; the shift {'grows with k' if grows else 'does not grow steadily with k'} ("
                     + ", ".join(f"k = {row.k}: {row.shift:+.3f} against {_mean(r):+.3f}" for row, r in main[:-1]) + ")")
        sentences.append(text + ".")
    clauses = []
    for kind in KIND_ORDER:
        for mode in MODE_ORDER:
            curve = _curve(atlas, kind, mode)
            if curve:                                   # the zeroed neurons' largest k is quoted above
                figures = "" if (kind, mode) == ("neuron", "zero") else f" ({_largest(curve)})"
                clauses.append(f"{MODE_WORDS.get(mode, mode)} {kind}s are {_curve_clause(curve)}{figures}")
    if clauses:
        sentences.append("Against as many random units of the same kind (no prompt): " + "; ".join(clauses) + ".")
    if main:
        k = main[-1][0].k
        systems = [system for system in dict.fromkeys(r.system for r in atlas.dose_response or []) if system != NO_PROMPT]
        prompted = [(system, row, r) for system in systems
                    for row, r in _curve(atlas, "neuron", "zero", system) if row.k == k]
        if prompted:
            sentences.append(f"With a persona prompt on, zeroing the {k} neurons shifts the margin by "
                             + join([f"{row.estimate('shift').signed(3)} ({system}; random {_mean(r):+.3f})" for system, row, r in prompted]) + ".")
    e = atlas.equal_damage
    if e is not None:
        sentences.append(f"At the same KL ({e.ablation_kl:.4f}; the steering's {e.steering_kl:.4f}) the mean-difference steering "
                         f"vector at layer {e.steering_layer} shifts the margin by {e.shift('steer_seek').signed(3)} (+α) and "
                         f"{e.shift('steer_reject').signed(3)} (−α): zeroing the top {e.k} neurons ({e.shift('ablation').signed(3)}) "
                         f"moves it {_against_steering(e)} steering, in either direction.")
    return " ".join(sentences)


def _lowest(values: dict[str, float]) -> tuple[str, list[float]]:
    """The persona with the lowest value, and the others' values."""
    low = min(values, key=lambda p: values[p])
    return low, [v for p, v in values.items() if p != low]


def _recurring(atlases: Sequence[AtlasStudy]) -> str | None:
    """Heads and neurons in the top [`RECUR_TOP`][persona_interp.report.study_findings.RECUR_TOP] of at least
    [`RECUR_PAIRS`][persona_interp.report.study_findings.RECUR_PAIRS] pairs, with their ranks."""
    units: dict[tuple[str, int, int], list[tuple[int, str]]] = {}
    for atlas in atlases:
        for kind, ranked in (("H", atlas.top_heads), ("N", atlas.top_neurons)):
            for rank, unit in enumerate(ranked[:RECUR_TOP], 1):
                units.setdefault((kind, unit.layer, unit.unit), []).append((rank, atlas.persona))
    recurring = [(key, sorted(ranks)) for key, ranks in units.items() if len(ranks) >= RECUR_PAIRS]
    if not recurring:
        return None
    words = []
    for i, ((kind, layer, index), ranks) in enumerate(sorted(recurring, key=lambda x: (-len(x[1]), x[1][0][0]))):
        by_rank: dict[int, list[str]] = {}
        for rank, persona in ranks:
            by_rank.setdefault(rank, []).append(persona)
        what = ("head " if kind == "H" else "neuron ") if i == 0 else ""
        words.append(f"{what}L{layer}{kind}{index} ranks " + join([f"{ORDINALS.get(r, f'#{r}')} for {persona_list(ps)}"
                                                                   for r, ps in sorted(by_rank.items())]))
    return (f"Some top units recur across pairs (in the top {count(RECUR_TOP)} of at least {count(RECUR_PAIRS)}): "
            + "; ".join(words) + ", which suggests they track how the answers are written rather than a disposition.")


def _atlas_pairs(atlases: Sequence[AtlasStudy]) -> str:
    """The paragraph on every pair: localisation, recurring units, the largest top-k neuron ablation against random
    neurons and against steering at the same KL."""
    n = len(atlases)
    cosines = {a.persona: min(a.signature_cosine) for a in atlases}
    low, others = _lowest(cosines)
    low_layer = min(range(len(next(a for a in atlases if a.persona == low).signature_cosine)),
                    key=lambda i: next(a for a in atlases if a.persona == low).signature_cosine[i])
    pairs = f"the {count(n)} pairs" if n > 1 else f"the {_name(atlases[0].persona)} pair"
    text = (f"The localisation of {pairs} (one row per pair in `reports/atlas/*.md`): signatures with a cosine "
            f"of at least {_at_least(cosines[low])} in every layer")
    if others:
        text += f" (lowest: {_name(low)}, {cosines[low]:.3f} in layer {low_layer}; the others at least {_at_least(min(others))})"
    overlap = {a.persona: a.overlap[0].overall for a in atlases if a.overlap and "contrastive_wanda" in a.overlap[0].pair}
    if overlap:
        low_mask, other_masks = _lowest(overlap)
        text += f", opposing ReLU Contrastive-Wanda masks differing in {span(list(overlap.values()), 100, 0)} % of entries"
        if other_masks:
            text += f" (lowest: {_name(low_mask)}, {100 * overlap[low_mask]:.0f} %; the others {span(other_masks, 100, 0)} %)"
    sentences = [text + "."]
    recurring = _recurring(atlases)
    if recurring:
        sentences.append(recurring)
    curves = {a.persona: curve for a in atlases if (curve := _curve(a, "neuron", "zero"))}
    if curves:
        largest = {p: c[-1] for p, c in curves.items()}
        ks = sorted({row.k for row, _ in largest.values()})
        seeds = sorted({s for a in atlases if a.persona in curves for s in a.config.seeds})
        items = sorted({row.n for row, _ in largest.values()})
        how = (f"each pair's {ks[0]} most divergent neurons" if len(ks) == 1 else "each pair's k most divergent neurons (the largest k measured)")
        verdicts: dict[str, list[str]] = {}
        for p, (row, random) in largest.items():
            verdicts.setdefault(versus_random(row.estimate("shift"), random), []).append(p)

        def figures(p: str, perplexity: bool = False) -> str:
            row, random = largest[p]
            k = f"k = {row.k}: " if len(ks) > 1 else ""
            damage = f", at {_percent(row.perplexity_change)} perplexity" if perplexity and row.perplexity_change is not None else ""
            return f"{_name(p)} {k}{row.estimate('shift').signed(2)} (random {_mean(random):+.2f}{damage})"

        setup = f"no persona prompt, {join([str(i) for i in items])} held-out items, random seeds {_seeds(seeds)}"
        more = verdicts.get("more than random", [])
        if more:
            changes = [change for p in more if (change := largest[p][0].perplexity_change) is not None]
            at = (f", {'each at ≤' if len(more) > 1 else 'at'} {100 * max(changes):.1f} % perplexity" if len(changes) == len(more) else "")
            where = f"{count(len(more))} of the {count(n)} pairs" if n > 1 else "its pair"
            sentences.append(f"Zeroing {how} ({setup}) moves the answer margin more than as many random neurons on {where}: "
                             + join([figures(p) for p in more]) + at + ".")
            toward = {side: [p for p in more if _side(largest[p][0].estimate("shift")) == side] for side in ("above", "below")}
            sentences.append("Ranked by |z|, the top neurons carry no sign: the shift goes "
                             + join([f"toward {'seek' if side == 'above' else 'reject'} on {persona_list(ps)}"
                                     for side, ps in toward.items() if ps]) + ".")
        rest = [p for p in curves if p not in more]
        if rest:
            across = [p for p in rest if _side(largest[p][0].estimate("shift")) == "across"]
            beside = [p for p in rest if p not in across]
            parts = ([f"the interval is across 0 on {join([figures(p, True) for p in across])}"] if across else [])
            parts += ([f"the shift is {versus_random(largest[p][0].estimate('shift'), largest[p][1])} on {figures(p, True)}"
                       for p in beside])
            sentences.append(("Elsewhere " if more else f"Zeroing {how} ({setup}): ") + "; ".join(parts) + ".")
    compared = {a.persona: a.equal_damage for a in atlases if a.equal_damage is not None}
    if compared:
        groups: dict[str, list[str]] = {}
        for p, e in compared.items():
            groups.setdefault(_against_steering(e), []).append(
                f"{_name(p)} ({e.shift('ablation').value:+.2f} vs {e.shift('steer_seek').value:+.2f} / {e.shift('steer_reject').value:+.2f})")
        short = {"more than": "more", "as much as": "as much (intervals overlapping)", "less than": "less"}
        words = [(f"{verdict} mean-difference steering (+α / −α) on " if i == 0 else f"{short[verdict]} on ") + join(groups[verdict])
                 for i, verdict in enumerate(v for v in short if v in groups)]
        sentences.append("At the same KL, zeroing them moves the margin " + join(words) + ".")
    return " ".join(sentences)


def atlas_findings_markdown(atlases: Sequence[AtlasStudy]) -> str:
    """The atlas paragraphs: the pair with the fullest dose–response in detail (the first of them in ``atlases``'
    order), then every pair; an atlas without dose–response (localisation only) leaves those sentences out.

    Examples:
        >>> from persona_interp.report.study_results import load_atlas
        >>> atlases = [load_atlas(f"reports/atlas/{p}.json") for p in ("power", "wealth", "thinking_feeling")]
        >>> text = atlas_findings_markdown(atlases)
        >>> text.startswith("**Where the power persona sits"), "the interval is across 0 on thinking–feeling +0.02" in text
        (True, True)
        >>> "more than as many random neurons on two of the three pairs: power +0.43 [+0.24, +0.61] (random +0.03)" in text
        True
    """
    if not atlases:
        raise ValueError("the atlas block needs at least one atlas")
    detail = max(atlases, key=lambda a: len(a.dose_response or []))
    paragraphs = [_atlas_detail(detail)] if detail.dose_response else []
    return "\n\n".join([*paragraphs, _atlas_pairs(atlases)]) + "\n"


# The composition study

def _beats(condition: Estimate, control: Estimate) -> str:
    """``more than random`` where the condition's interval lies above its control's, ``less than random`` where below,
    ``not distinguishable from random`` where they overlap."""
    if condition.low > control.high:
        return "more than random"
    return "less than random" if condition.high < control.low else "not distinguishable from random"


def _versus_control(pairs: list[tuple[str, Estimate, Estimate]], what: str) -> str:
    """``the composed mask is not distinguishable from random on any axis`` or ``more than random on X, …``."""
    groups: dict[str, list[str]] = {}
    for axis, condition, control in pairs:
        groups.setdefault(_beats(condition, control), []).append(axis)
    if len(groups) == 1:
        verdict = next(iter(groups))
        return f"{what} is {verdict} on {'every' if verdict != 'not distinguishable from random' else 'any'} axis"
    return f"{what} is " + join([f"{verdict} on {join(axes)}" for verdict, axes in groups.items()])


def _pole_extremes(rows: Sequence[TypeRow]) -> str:
    """``from judging +0.72 [+0.16, +1.27] to introversion +1.02 [+0.44, +1.60]``: the rows' lowest and highest shift."""
    ordered = sorted(rows, key=lambda r: r.shift)
    low, high = ordered[0], ordered[-1]
    if len(ordered) == 1:
        return f"{low.pole} {low.estimate('shift').signed(2)}"
    return f"from {low.pole} {low.estimate('shift').signed(2)} to {high.pole} {high.estimate('shift').signed(2)}"


def _falls(rows: Sequence[tuple[float, float]], increasing: bool) -> list[tuple[float, float]]:
    """The runs of neighbouring fractions between which the mean margin goes against the trend: ``(from, to)``."""
    runs: list[tuple[float, float]] = []
    for (f0, m0), (f1, m1) in zip(rows, rows[1:]):
        if (m1 < m0) if increasing else (m1 > m0):
            runs = runs[:-1] + [(runs[-1][0], f1)] if runs and runs[-1][1] == f0 else runs + [(f0, f1)]
    return runs


def composition_findings_markdown(study: CompositionStudy) -> str:
    """The composition paragraph: the composed type mask, the intersection of the axis masks and the type prompt on
    each axis (against random masks of the same sparsity), and the fractional curve (trend, monotonicity, the
    intermediate fractions against the random mask).

    Examples:
        >>> from persona_interp.report.study_results import load_composition
        >>> text = composition_findings_markdown(load_composition("reports/composition.json"))
        >>> "moves three of the four axes toward the type's pole" in text, "a positive trend" in text
        (True, True)
    """
    rows: dict[str, dict[str, TypeRow]] = {}
    for row in study.type_rows:
        rows.setdefault(row.condition, {})[row.axis] = row
    sizes = sorted(set(study.n_test.values()))
    tests = (f"{sizes[0]} test items per axis" if len(sizes) == 1
             else "test items per axis: " + ", ".join(f"{_name(a)} {n}" for a, n in study.n_test.items()))
    text = (f"**A full MBTI type from the four axes** (`persona-interp compose`, {study.type}, ρ = {study.sparsity:g}, {tests}, "
            f"seed {study.seed}; [`reports/composition.md`](reports/composition.md))")

    def shift(row: TypeRow) -> Estimate:
        return row.estimate("shift")

    def pole(row: TypeRow) -> str:
        return f"{row.pole} {shift(row).signed(2)}"

    clauses = []
    mask, control = rows.get("type-mask", {}), rows.get("random@type", {})
    if mask:
        sides = {side: [r for r in mask.values() if _side(shift(r)) == side] for side in ("above", "across", "below")}
        moved = sides["above"]
        how_many = f"all {count(len(mask))}" if len(moved) == len(mask) else f"{count(len(moved))} of the {count(len(mask))}"
        clause = (f"the composed type mask moves {how_many} axes toward the type's pole ({', '.join(pole(r) for r in moved)}"
                  if moved else "the composed type mask moves no axis detectably (")
        clause += "".join(f"; {pole(r)}, interval across 0" for r in sides["across"]) + "".join(f"; {pole(r)}, away from it" for r in sides["below"])
        clauses.append(clause.replace("(; ", "(") + ")")
        pairs = [(r.pole, shift(r), shift(control[a])) for a, r in mask.items() if a in control]
        if pairs:
            clauses.append(f"a random mask of the same sparsity moves them by {', '.join(f'{p} {c.signed(2)}' for p, _, c in pairs)}: "
                           + _versus_control(pairs, "the composed mask"))
    both, random = rows.get("intersection", {}), rows.get("random@intersection", {})
    if both:
        moved = [r for r in both.values() if _side(shift(r)) == "above"]
        removed = {r.sparsity for r in both.values()}
        share = f" ({100 * removed.pop():.0f} % of weights removed)" if len(removed) == 1 else ""
        what = f"all {count(len(both))} axes" if len(moved) == len(both) else f"{count(len(moved))} of the {count(len(both))} axes"
        clause = (f"the intersection of the axis masks{share} moves {what} toward the type's pole"
                  + (f" ({_pole_extremes(moved)})" if moved else ""))
        pairs = [(r.pole, shift(r), shift(random[a])) for a, r in both.items() if a in random]
        if pairs:
            above = all(c.value < s.value for _, s, c in pairs)
            clause += (f", {'above' if above else 'not always above'} its random control's point estimates "
                       f"({_pole_extremes([random[a] for a in both if a in random])}); " + _versus_control(pairs, "it"))
        clauses.append(clause)
    sentences = [text + ": " + "; ".join(clauses) + "." if clauses else text + "."]
    prompt = rows.get("type-prompt", {})
    if prompt:
        moved = [r for r in prompt.values() if _side(shift(r)) == "above"]
        if not moved:
            sentences.append("A type prompt moves no axis detectably (" + ", ".join(pole(r) for r in prompt.values()) + ").")
        else:
            figures = shift(moved[0]).signed(2) if len(moved) == 1 else ", ".join(pole(r) for r in moved)
            sentences.append(f"A type prompt moves {'every axis' if len(moved) == len(prompt) else 'only ' + join([r.pole for r in moved])} "
                             f"({figures}).")
    sentences.append(_fraction_sentence(study))
    return " ".join(sentences) + "\n"


def _fraction_sentence(study: CompositionStudy) -> str:
    """The fractional curve: its trend, where it is not monotone, the intermediate fractions against the random mask,
    and whether the fraction is a usable dial."""
    curve, trend = study.curve, study.curve.trend
    fractions = curve.fractions()
    side = _side(trend.slope)
    seek = MBTI_AXES[study.axis][0] if study.axis in MBTI_AXES else f"{_name(study.axis)} (seek)"
    direction = {"above": "a positive trend", "below": "a negative trend", "across": "no detectable trend (interval across 0)"}[side]
    reversals = ("no significant reversal" if trend.significant_reversals == 0
                 else f"{trend.significant_reversals} significant reversal{'s' if trend.significant_reversals > 1 else ''}")
    text = f"The fractional {seek} mask has {direction} (slope {trend.slope.signed(2)} per unit fraction, {reversals})"
    falls = _falls([(r.fraction, r.margin) for r in fractions if r.fraction is not None], trend.increasing)
    clauses = (["the curve is monotone"] if trend.monotonic else
               ["the curve is not monotone " + join([f"between {a:g} and {b:g}" for a, b in falls])] if falls else ["the curve is not monotone"])
    control = curve.control()
    middle = [r for r in fractions if r.fraction is not None and 0 < r.fraction < 1]
    if control is not None and middle:
        verdicts = {_beats(r.estimate("shift"), control.estimate("shift")) for r in middle}
        shifts = [r.shift for r in middle]
        verdict = verdicts.pop() if len(verdicts) == 1 else "partly distinguishable from random"
        clauses.append(f"its intermediate fractions ({min(shifts):+.2f} to {max(shifts):+.2f} against the base model) are {verdict} "
                       f"(the random mask of the same sparsity: {control.estimate('shift').signed(2)})")
    usable = side == "above" and trend.monotonic
    text += (", but " if not trend.monotonic else ", ") + " and ".join(clauses)
    return text + (": on this model the fraction is not a usable dial." if not usable else ": on this model the fraction works as a dial.")


# The regime comparison

def _extremes(values: dict[str, Estimate]) -> str:
    """``from +0.17 [+0.09, +0.26] on power to +0.35 [+0.20, +0.51] on judging–perceiving``."""
    ordered = sorted(values, key=lambda p: values[p].value)
    low, high = ordered[0], ordered[-1]
    if low == high:
        return f"{values[low].signed(2)} on {_name(low)}"
    return f"from {values[low].signed(2)} on {_name(low)} to {values[high].signed(2)} on {_name(high)}"


def _pair_words(pair: str) -> str:
    return pair.replace("|", " vs ")


def regimes_findings_markdown(studies: Sequence[RegimesStudy]) -> str:
    """The regimes paragraph: each regime's seek − reject effect per pair, the cosines between the regimes' residual
    directions at the steering layer, and what each direction injected there reproduces of the regimes' effects.

    Examples:
        >>> from persona_interp.report.study_results import load_regimes
        >>> text = regimes_findings_markdown([load_regimes(f"reports/regimes/{p}.json") for p in ("power", "wealth")])
        >>> text.startswith("**One persona, three regimes** (`persona-interp regimes`, 48 held-out items, 16 neutral texts")
        True
    """
    if not studies:
        raise ValueError("the regimes block needs at least one regime comparison")
    by = {s.persona: s for s in studies}
    names = list(dict.fromkeys(name for s in studies for name in s.effect))
    setup = [f"{join([str(n) for n in sorted({s.n_items for s in studies})])} held-out items",
             f"{join([str(n) for n in sorted({s.n_texts for s in studies})])} neutral texts",
             f"seed {join([str(n) for n in sorted({s.seed for s in studies})])}",
             f"{count(len(studies))} pairs" if len(studies) > 1 else f"the {_name(studies[0].persona)} pair"]
    text = f"**One persona, {count(len(names))} regimes** (`persona-interp regimes`, {', '.join(setup)}; `reports/regimes/`)"
    every, partial = [], []
    for name in names:
        effects = {p: s.effect[name] for p, s in by.items() if name in s.effect}
        sides = {side: [p for p, e in effects.items() if _side(e) == side] for side in ("above", "across", "below")}
        word = REGIME_WORDS.get(name, name)
        if len(sides["above"]) == len(effects):
            every.append(f"{word} ({_extremes(effects)})")
            continue
        clause = (f"the {word} does on {count(len(sides['above']))} pairs ({persona_list(sides['above'])}: "
                  f"{_extremes({p: effects[p] for p in sides['above']})})" if sides["above"] else f"the {word} moves them on no pair")
        if sides["across"]:
            clause += " and not detectably on " + join([f"{_name(p)} ({effects[p].signed(2)})" for p in sides["across"]])
        if sides["below"]:
            clause += " and reverses them on " + join([f"{_name(p)} ({effects[p].signed(2)})" for p in sides["below"]])
        partial.append(clause)
    clauses = ([f"every pair's {join(every)} moves the answers (seek − reject, nats/token)"] if every else []) + partial
    sentences = [f"{text}: {'; '.join(clauses)}."]
    cosines = {(p, pair): s.at_layer(values) for p, s in by.items() for pair, values in s.cosine.items()}
    if cosines:
        apart = {key: c for key, c in cosines.items() if abs(c) > UNRELATED}
        layers = sorted({s.layer for s in studies})
        where = f"layer {layers[0]}" if len(layers) == 1 else f"the steering layer (layers {layers[0]}–{layers[-1]}, chosen per pair)"
        unrelated = len(apart) < len(cosines) / 2
        exceptions = apart if unrelated else {key: c for key, c in cosines.items() if key not in apart}
        text = (f"The {count(len(names))} regimes' seek − reject residual directions at {where} are "
                f"{'nearly unrelated' if unrelated else 'not unrelated'}: cosines {min(cosines.values()):+.2f} to "
                f"{max(cosines.values()):+.2f}, |cos| {'≤' if unrelated else '>'} {UNRELATED:g}")
        if exceptions:
            per_persona: dict[str, list[str]] = {}
            for (p, pair), c in exceptions.items():
                per_persona.setdefault(p, []).append(f"{_pair_words(pair)} ({c:+.2f})")
            text += " except " + join([f"{_name(p)}'s {join(words)}" for p, words in per_persona.items()])
        else:
            text += " for every two regimes of every pair"
        bands = [s.random_cosine_band for s in studies if s.random_cosine_band is not None]
        if bands:
            text += (f"; 95 % of random directions' cosines lie within {min(b[0] for b in bands):+.2f} to "
                     f"{max(b[1] for b in bands):+.2f}")
        sentences.append(text + ".")
    transfer = _transfer_sentences(by, names)
    if transfer:
        sentences.append(transfer)
    return " ".join(sentences) + "\n"


def _transfer_sentences(by: dict[str, RegimesStudy], names: list[str]) -> str | None:
    """What each regime's direction, injected at the steering layer with another regime's norm, reproduces of that
    regime's effect (ratios only where the effect's interval excludes 0)."""
    ratios: dict[tuple[str, str], list[float]] = {}
    for s in by.values():
        for source in s.transfer:
            for target in s.transfer[source]:
                ratio = transfer_ratio(s, source, target)
                if ratio is not None:
                    ratios.setdefault((source, target), []).append(ratio)
    if not ratios:
        return None
    identity = [n for n in names if (ratios.get((n, n)) and all(abs(r - 1) < IDENTITY for r in ratios[(n, n)]))]
    whole = [n for n in names if any(src == n and tgt != n and all(r >= 1 for r in rs) for (src, tgt), rs in ratios.items())]
    sentences = []
    if whole:
        parts = []
        for source in whole:
            targets = sorted(((t, rs) for (s, t), rs in ratios.items() if s == source and t != source), key=lambda x: min(x[1]) < 1)
            parts.append(f"the {source} direction reproduces another regime's whole effect ("
                         + ", ".join(f"{span(rs, digits=2)}× the {t}'s" for t, rs in targets) + ")")
        others = [r for (s, t), rs in ratios.items() if s not in whole and s != t for r in rs]
        text = (f"Injected at that layer with the other regime's norm (ratios where that regime has an effect), "
                f"{'only ' if len(whole) < len(names) else ''}" + "; ".join(parts))
        if others:
            text += f"; the other directions give at most {max(others):.2f}× another regime's effect"
        sentences.append(text + ".")
    own = [n for n in names if n not in identity and (n, n) in ratios]
    if own:
        text = ("The " + join([f"the {n}'s" for n in own])[4:] + " own mean shift" + ("s" if len(own) > 1 else "") + " reproduce"
                + ("" if len(own) > 1 else "s") + " at most " + join([f"{max(ratios[(n, n)]):.2f}" for n in own])
                + f" of {'their' if len(own) > 1 else 'its'} own effect{'s' if len(own) > 1 else ''}")
        against: dict[str, list[str]] = {}
        for p, s in by.items():
            for n in own:
                effect, cell = s.effect[n], s.transfer[n][n]
                injected = Estimate(cell.value, cell.low, cell.high, cell.n)
                if effect.excludes_zero and injected.defined and _side(injected) not in ("across", _side(effect)):
                    against.setdefault(p, []).append(n)
        if against:
            text += (", and on " + join([f"{_name(p)} ({'both' if len(ns) == len(own) == 2 else join([f'the {n}' for n in ns])})"
                                           for p, ns in against.items()]) + " the injection pushes the other way")
        sentences.append(text + ".")
        if all(max(ratios[(n, n)]) < SMALL_SHARE for n in own):
            subject = _capital(join([f"a {n}" for n in own]))
            sentences.append(f"{subject} do{'es' if len(own) == 1 else ''} not act through one direction at one layer.")
    return " ".join(sentences) or None
