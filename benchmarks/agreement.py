"""How far a run in one dtype is from the same run in another: per-item margins and every verdict.

Compares two ``results.json`` files of ``persona-interp reproduce`` (same configuration, e.g. ``--dtype float32``
and ``--dtype bfloat16``): for every condition both ran, the max and mean absolute difference of the per-item,
per-token margins; for every seek − reject contrast, mask-vs-random control and equal-damage pick, whether the
verdict (interval above 0, below 0, or across it; beats its control or not; which regime wins a budget) is the
same; and which validation-split choices differ. Prints markdown and writes JSON.

    $ .venv/bin/python benchmarks/agreement.py results/f32/results.json results/bf16/results.json \\
          --out benchmarks/agreement.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import persona_interp as pi
from persona_interp.data.personas import SIDES
from persona_interp.evaluation.rows import PromptSearchRow
from persona_interp.report.results import Used


def verdict(low: float, high: float) -> str:
    """``+`` when the interval is above 0, ``-`` below, ``0`` when it holds 0.

    Example:
        >>> verdict(0.1, 0.3), verdict(-0.2, 0.1)
        ('+', '0')
    """
    return "+" if low > 0 else "-" if high < 0 else "0"


def _phrasing(table: list[PromptSearchRow]) -> dict[str, str]:
    """The phrasing each pole chose (:func:`~persona_interp.evaluation.tuning.select_prompts`): the seek pole's
    highest margin, the reject pole's lowest."""
    scored = [row for row in table if row.margin is not None]
    return {side: (max if side == "seek" else min)((r for r in scored if r.side == side), key=lambda r: r.margin).prompt
            for side in SIDES if any(r.side == side for r in scored)}


def choices(used: Used) -> dict[str, Any]:
    """What a persona's validation split chose, per search the run made: each pole's phrasing, each steering
    method's (layer, multiplier), the LoRA epochs, each mask method's configuration and each damage-matched
    control's sparsity; not how the candidates scored, nor the diagnostics (measured, not chosen).

    Example:
        >>> choices(pi.load_results("reports/results.json").personas["power"].used)["steering_search"]["pca"]
        (15, 4.0)
    """
    out: dict[str, Any] = {}
    if used.prompt_search is not None:
        out["prompt_search"] = _phrasing(used.prompt_search)
    if used.steering_search is not None:
        out["steering_search"] = {method: (s.layer, s.multiplier) for method, s in used.steering_search.items()}
    if used.lora_search is not None:
        out["lora_search"] = used.lora_search.epochs
    if used.mask_search is not None:
        out["mask_search"] = {method: m.chosen for method, m in used.mask_search.items()}
    if used.matched_controls is not None:
        out["matched_controls"] = {name: c.sparsity for name, c in used.matched_controls.items()}
    return out


def compare(a: pi.RunResults, b: pi.RunResults) -> dict[str, Any]:
    """Per persona both runs hold: margin differences per condition, verdicts of both runs and whether they agree,
    and which validation-split choices (:func:`choices`) differ."""
    out: dict[str, Any] = {}
    for persona in sorted(set(a.personas) & set(b.personas)):
        pa, pb = a.personas[persona], b.personas[persona]
        margins = {}
        for name in sorted(set(pa.per_item) & set(pb.per_item)):
            diffs = [abs(u - v) for u, v in zip(pa.per_item[name].margin_mean, pb.per_item[name].margin_mean)]
            margins[name] = {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs), "n": len(diffs)}
        contrasts = []
        for ca, cb in zip(pa.contrasts, pb.contrasts):
            va, vb = verdict(ca.difference_low, ca.difference_high), verdict(cb.difference_low, cb.difference_high)
            contrasts.append({"pair": ca.pair, "a": ca.difference, "b": cb.difference, "verdict_a": va,
                              "verdict_b": vb, "same": va == vb and ca.pair == cb.pair})
        controls = [{"condition": ca.condition, "a": ca.beats_control, "b": cb.beats_control,
                     "same": ca.beats_control == cb.beats_control and ca.condition == cb.condition}
                    for ca, cb in zip(pa.controls, pb.controls)]
        budgets = [{"budget": ea.budget, "a": ea.pair, "b": eb.pair, "same": ea.pair == eb.pair}
                   for ea, eb in zip(pa.equal_damage, pb.equal_damage)]
        ua, ub = choices(pa.used), choices(pb.used)
        out[persona] = {"margins": margins, "contrasts": contrasts, "controls": controls, "equal_damage": budgets,
                        "choices_differ": sorted(k for k in set(ua) | set(ub) if ua.get(k) != ub.get(k)),
                        "verdicts_changed": sum(not r["same"] for r in contrasts + controls + budgets)}
    return out


def markdown(result: dict[str, Any], names: tuple[str, str]) -> str:
    """The comparison as markdown tables."""
    a, b = names
    lines = []
    for persona, r in result.items():
        lines += [f"### {persona}: {a} vs {b}", "", "| condition | n | max abs Δ margin | mean abs Δ margin |", "|---|---|---|---|"]
        lines += [f"| {k} | {m['n']} | {m['max_abs']:.4f} | {m['mean_abs']:.4f} |" for k, m in r["margins"].items()]
        lines += ["", f"| pair | seek − reject ({a}) | ({b}) | verdict {a} / {b} |", "|---|---|---|---|"]
        lines += [f"| {c['pair']} | {c['a']:+.3f} | {c['b']:+.3f} | {c['verdict_a']} / {c['verdict_b']}"
                  f"{'' if c['same'] else ' **changed**'} |" for c in r["contrasts"]]
        lines += ["", f"Beats its random control ({a} / {b}): " + ", ".join(
            f"{c['condition']} {c['a']}/{c['b']}{'' if c['same'] else ' **changed**'}" for c in r["controls"])]
        lines += [f"Equal-damage winners ({a} / {b}): " + ", ".join(
            f"KL ≤ {e['budget']}: {e['a']}/{e['b']}{'' if e['same'] else ' **changed**'}" for e in r["equal_damage"])]
        lines += [f"Validation choices that differ: {', '.join(r['choices_differ']) or 'none'}; "
                  f"verdicts changed: {r['verdicts_changed']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="results.json of the reference run (e.g. float32)")
    parser.add_argument("b", help="results.json of the other run (e.g. bfloat16)")
    parser.add_argument("--out", help="write the comparison as JSON here (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args()
    ra, rb = (pi.load_results(p) for p in (args.a, args.b))                 # validated; older files read too
    result = compare(ra, rb)
    names = (ra.provenance.dtype, rb.provenance.dtype)                      # the dtype that ran ("auto" resolved)
    print(markdown(result, names))
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise SystemExit(f"error: {out} exists; pass --force to overwrite it")
        out.write_text(json.dumps({"a": args.a, "b": args.b, "dtypes": names, "revision_a": ra.revision,
                                   "revision_b": rb.revision, "personas": result}, indent=1))


if __name__ == "__main__":
    main()
