"""Where the quick main job spends its time: `reproduce(QUICK)` timed by stage (the progress display's record),
each stage's share of the wall time, the model forwards and sequences per stage (the evaluation's against the least it
needs), the peak resident memory and which stages raised it, written to JSON with the CPU's model and flags and the
date. Minutes on the embedded model; a tiny model runs it in seconds (tests/test_benchmark.py).

    $ .venv/bin/python benchmarks/pipeline.py --out benchmarks/pipeline.json [--force] [--model PATH] [--dtype bfloat16]
          [--damage-aware-methods all | NAME ...] [--racing N]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dtype_speed import cpu_flags  # noqa: E402  (a sibling script)

import persona_interp as pi  # noqa: E402
from persona_interp.progress import peak_memory_mb, reset_stage_times, stage_times  # noqa: E402
from persona_interp.report.results import PersonaResult  # noqa: E402
from persona_interp.evaluation.search import Racing  # noqa: E402
from persona_interp.masks.damage_aware import DAMAGE_AWARE_METHODS  # noqa: E402
from persona_interp.studies.config import QUICK, ReproduceConfig  # noqa: E402
from persona_interp.studies.reproduce import git_revision, reproduce, run_neutral_texts  # noqa: E402


def run(model: Any, config: ReproduceConfig = QUICK, out_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the main job on ``model`` under ``config`` (into ``out_dir``, a temporary folder when None) and return
    the per-stage wall times, shares and model forwards, the total wall time and the peak resident memory.

    A forward is one call of the model's top module, counted by the main job itself
    ([`counting_forwards`][persona_interp.progress.counting_forwards]): a scoring batch, a signature batch (stopped
    after the last layer's input), a damage measurement's batch, a training step's forward; with its rows (sequences)
    and tokens (positions, padding included). The evaluation's rows are set against the least it needs
    ([`evaluation_minimum`][pipeline.evaluation_minimum]); the searches' minimum depends on how far each sweep goes
    and is not derived."""
    reset_stage_times()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(out_dir or scratch)
        start = time.perf_counter()
        reproduce(config, out, model=model, progress=progress, force=True)
        wall = time.perf_counter() - start
        results = pi.load_results(out / "results.json")
    by_name: dict[str, dict[str, float]] = defaultdict(
        lambda: {"seconds": 0.0, "forwards": 0, "rows": 0, "tokens": 0, "runs": 0, "peak_rise_mb": 0.0})
    for record in stage_times():
        entry = by_name[record.name]
        entry["seconds"] += record.seconds
        entry["forwards"] += record.forwards
        entry["rows"] += record.rows
        entry["tokens"] += record.tokens
        entry["runs"] += 1
        entry["peak_rise_mb"] += record.peak_rise_mb          # which stages raised the process's peak memory
    stages: list[dict[str, Any]] = [{"stage": name, **entry, "share": entry["seconds"] / wall} for name, entry in by_name.items()]
    packed = pi.get_adapter(model).accepts_packed_options
    minimum = sum(evaluation_minimum(entry, len(run_neutral_texts(config).reported), packed)
                  for entry in results.personas.values())
    for s in stages:
        if s["stage"] == "evaluation":
            s["minimum_rows"] = minimum
    outside = wall - sum(s["seconds"] for s in stages)
    return {"wall_s": wall, "stages": stages, "outside_stages_s": outside, "outside_stages_share": outside / wall,
            "forwards": sum(s["forwards"] for s in stages), "rows_forwarded": sum(s["rows"] for s in stages),
            "tokens_forwarded": sum(s["tokens"] for s in stages), "peak_rss_mb": peak_memory_mb(),
            "personas": list(config.personas), "dtype": config.dtype,
            "dtype_ran": next(iter(results.personas.values())).provenance.dtype}   # "auto" resolved


def evaluation_minimum(entry: PersonaResult, n_reported: int, packed: bool) -> int:
    """The fewest sequences the evaluation of one persona must forward: each distinct scoring once (``n_test`` rows,
    twice that where the two options of an item cannot share a row) and each distinct damage once (the reported and
    other-persona texts, one row each), the base model's counted once for both its reference and its own row.
    Distinct is read from the results, not from the code that avoids the repeats: two conditions whose per-item margins
    are equal bit for bit scored alike, two whose damage is equal measured alike."""
    scorings = {tuple(item.margin_sum) for item in entry.per_item.values()}
    damages = {(d.perplexity, d.kl, d.kl_other) for d in (entry.damage or {}).values()}
    texts = n_reported + (entry.used.other_texts or 0)
    return len(scorings) * entry.n_test * (1 if packed else 2) + len(damages) * texts


def table(result: dict[str, Any]) -> str:
    """The stages as text: seconds, share of the wall time, forwards, sequences (and the least the stage needs, where
    derived) and how much each raised the peak resident memory, then the totals."""
    lines = [f"{'stage':34s} {'seconds':>9s} {'share':>7s} {'forwards':>9s} {'sequences':>10s} {'minimum':>9s} {'peak rise MB':>13s}"]
    for s in sorted(result["stages"], key=lambda s: -s["seconds"]):
        minimum = f"{s['minimum_rows']:9d}" if "minimum_rows" in s else f"{'—':>9s}"
        lines.append(f"{s['stage']:34s} {s['seconds']:9.1f} {s['share']:7.1%} {s['forwards']:9d} {s['rows']:10d} {minimum}"
                     f" {s['peak_rise_mb']:13.0f}")
    lines.append(f"{'(outside any stage)':34s} {result['outside_stages_s']:9.1f} {result['outside_stages_share']:7.1%}")
    lines.append(f"{'total':34s} {result['wall_s']:9.1f} {1:7.1%} {result['forwards']:9d} {result['rows_forwarded']:10d}"
                 f"   ({result['tokens_forwarded']} token positions)")
    lines.append(f"peak resident memory: {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model path or name for load_model (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default=QUICK.dtype)
    parser.add_argument("--out", default="benchmarks/pipeline.json")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--damage-aware-methods", nargs="+", default=QUICK.damage_aware_methods,
                        help=f"the damage-aware methods the mask search runs ('all': {', '.join(DAMAGE_AWARE_METHODS)})")
    parser.add_argument("--racing", type=int, help="race every search's candidates on this many validation items first")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"error: {out} exists; pass --force to overwrite it")
    methods = list(DAMAGE_AWARE_METHODS) if args.damage_aware_methods == ["all"] else args.damage_aware_methods
    config = dataclasses.replace(QUICK, dtype=args.dtype, damage_aware_methods=methods,
                                 racing=Racing(first=args.racing) if args.racing else None)
    model = pi.load_model(args.model, dtype=args.dtype)
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "revision": git_revision(),
              **cpu_flags(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "model": args.model or "embedded SmolLM2-135M-Instruct",
              "damage_aware_methods": methods, "racing": args.racing, **run(model, config, progress=not args.quiet)}
    print(table(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
