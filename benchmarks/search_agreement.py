"""How far a full-size mask search moves with the dtype and the CPU: the main job's searches of chosen mask methods
for one persona, rerun here (same splits, texts, grid and seed as `reproduce` under the FULL preset) and written as a
search checkpoint, then compared row by row with the checkpoint another run wrote (``reports/rerun/checkpoints``):
each candidate's validation separation and its KL on the selection texts, and the row each damage budget picks.

    $ .venv/bin/python benchmarks/search_agreement.py --methods gradient snip_set_difference --dtype float32 \\
          --against reports/rerun/checkpoints/power-searches.json --out benchmarks/search_agreement_f32_avx2.json

The rerun writes its rows as they are measured (``OUT``'s ``.searches.json`` beside it), so a cut-off run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dtype_speed import cpu_flags  # noqa: E402  (a sibling script)

import persona_interp as pi  # noqa: E402
from persona_interp.data.personas import SIDES, load_persona  # noqa: E402
from persona_interp.evaluation.checkpoint import SearchCheckpoint, checkpoint_key  # noqa: E402
from persona_interp.evaluation.rows import MaskSearchRow  # noqa: E402
from persona_interp.evaluation.scoring import DamageReference  # noqa: E402
from persona_interp.evaluation.search import budget_picks  # noqa: E402
from persona_interp.evaluation.tuning import select_masks  # noqa: E402
from persona_interp.masks.builders import FamilyCache  # noqa: E402
from persona_interp.masks.registry import MethodInputs  # noqa: E402
from persona_interp.report.results import git_revision  # noqa: E402
from persona_interp.signatures import collect_signatures  # noqa: E402
from persona_interp.studies.config import FULL  # noqa: E402
from persona_interp.studies.reproduce import run_neutral_texts, test_items  # noqa: E402

SEP = "\x00"


def rerun(model: Any, persona: str, methods: list[str], path: Path) -> dict[str, dict[str, Any]]:
    """The FULL preset's searches of ``methods`` for ``persona``, as `persona_conditions` runs them, their rows
    saved in the search checkpoint at ``path`` (read back where it already holds them)."""
    config = FULL
    train = load_persona(persona, "train").without_questions(test_items(persona, config).questions())
    fit, validation = train.split(config.validation_fraction, seed=config.seed)
    fit = fit.sample(config.n_calibration, seed=config.seed) if config.n_calibration else fit
    validation = validation.sample(config.n_validation, seed=config.seed) if config.n_validation else validation
    assert config.mask_search is not None
    by_scope = {scope: tuple(collect_signatures(model, fit, side, token_scope=scope, batch_size=config.batch_size,
                                                max_tokens=config.max_tokens, per_sample=scope == config.token_scope)
                             for side in SIDES)
                for scope in dict.fromkeys([config.token_scope, *config.mask_search.token_scopes])}
    texts = run_neutral_texts(config)
    selection = DamageReference.build(model, texts.selection, config.batch_size)
    inputs = MethodInputs(items=list(fit), neutral_texts=texts.fit, persona=persona)
    space = dataclasses.replace(config.mask_search, stop_above=max(config.damage_budgets))
    checkpoint = SearchCheckpoint(path, key=checkpoint_key({"persona": persona, "dtype": str(pi.get_adapter(model).dtype)}))
    families = FamilyCache(model)
    for method in methods:
        select_masks(model, method, by_scope, validation, space, reference=selection, persona=persona,   # type: ignore[arg-type]
                     budgets=config.damage_budgets, checkpoint=checkpoint.part(f"masks {method}"),
                     batch_size=config.batch_size, families=families, inputs=inputs)
    return json.loads(path.read_text())["scored"]


def compare(mine: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]], methods: list[str],
            budgets: list[float]) -> dict[str, Any]:
    """Per method: every candidate both measured (separation and KL side by side, their differences), those only one
    measured, and the row each budget picks in each."""
    out: dict[str, Any] = {}
    for method in methods:
        prefix = f"masks {method}{SEP}"
        keys = [k for k in dict.fromkeys([*theirs, *mine]) if k.startswith(prefix)]
        rows, tables = [], {}
        for name, scored in (("mine", mine), ("theirs", theirs)):
            tables[name] = {k: MaskSearchRow.model_validate(scored[k]) for k in keys if k in scored}
        for k in keys:
            a, b = tables["mine"].get(k), tables["theirs"].get(k)
            rows.append({"candidate": json.loads(k.split(SEP, 1)[1]),
                         "separation": [None if r is None else r.separation for r in (a, b)],
                         "kl": [None if r is None else r.kl for r in (a, b)]})
        picks = {}
        for name, table in tables.items():
            listed = list(table.values())
            picks[name] = {str(b): json.loads(list(table)[i].split(SEP, 1)[1])
                           for chosen, i in budget_picks(listed, budgets) for b in chosen}
        both = [r for r in rows if None not in r["kl"]]
        sep = [abs(r["separation"][0] - r["separation"][1]) for r in both if None not in r["separation"]]
        kl = [abs(r["kl"][0] - r["kl"][1]) for r in both]
        out[method] = {"rows": rows, "picks": picks, "same_picks": picks["mine"] == picks["theirs"],
                       "n_both": len(both), "max_abs_separation_difference": max(sep, default=None),
                       "max_abs_kl_difference": max(kl, default=None)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="power")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--against", required=True, help="another run's search checkpoint (PERSONA-searches.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"error: {out} exists; pass --force to overwrite it")
    theirs = json.loads(Path(args.against).read_text())["scored"]
    model = pi.load_model(dtype=args.dtype)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    mine = rerun(model, args.persona, args.methods, out.with_suffix(".searches.json"))
    result = {"date": started, "revision": git_revision(), **cpu_flags(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "dtype": str(pi.get_adapter(model).dtype), "persona": args.persona,
              "against": args.against, "budgets": FULL.damage_budgets,
              "methods": compare(mine, theirs, args.methods, FULL.damage_budgets)}
    for method, entry in result["methods"].items():
        print(f"{method}: {entry['n_both']} candidates in both, separation differs by up to "
              f"{entry['max_abs_separation_difference']}, KL by up to {entry['max_abs_kl_difference']}; "
              f"same picks: {entry['same_picks']}")
        for row in entry["rows"]:
            c = row["candidate"]
            print(f"  {c['sparsity']:<6} {c['modules']:<9} {c['layers']:<5} sep {row['separation']} kl {row['kl']}")
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
