"""Where the quick main job spends its time: `reproduce(QUICK)` timed by stage (the progress display's record),
each stage's share of the wall time, the model forwards per stage, the peak resident memory and which stages raised
it, written to JSON with the CPU's model and flags and the date. Minutes on the embedded model; a tiny model runs it in seconds
(tests/test_benchmark.py).

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
from persona_interp.progress import add_forwards, peak_memory_mb, reset_stage_times, stage_times  # noqa: E402
from persona_interp.evaluation.search import Racing  # noqa: E402
from persona_interp.masks.damage_aware import DAMAGE_AWARE_METHODS  # noqa: E402
from persona_interp.studies.config import QUICK, ReproduceConfig  # noqa: E402
from persona_interp.studies.reproduce import git_revision, reproduce  # noqa: E402


def run(model: Any, config: ReproduceConfig = QUICK, out_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run the main job on ``model`` under ``config`` (into ``out_dir``, a temporary folder when None) and return
    the per-stage wall times, shares and model forwards, the total wall time and the peak resident memory.

    A forward is one call of the model's top module (a pre-hook counts it): a scoring batch, a signature batch
    (stopped after the last layer's input), a damage measurement's batch, a LoRA training step's forward.
    No minimum is stated beside the count: the protocol's minimum is not yet derived (issue #33)."""
    counts = {"forwards": 0, "rows": 0}

    def count(module: Any, args: tuple, kwargs: dict) -> None:
        counts["forwards"] += 1
        first = args[0] if args else next(iter(kwargs.values()), None)
        counts["rows"] += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 1 else 1
        add_forwards()

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    reset_stage_times()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            reproduce(config, Path(out_dir or scratch), model=model, progress=progress, force=True)
            wall = time.perf_counter() - start
    finally:
        handle.remove()
    by_name: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "forwards": 0, "runs": 0, "peak_rise_mb": 0.0})
    for record in stage_times():
        entry = by_name[record.name]
        entry["seconds"] += record.seconds
        entry["forwards"] += record.forwards
        entry["runs"] += 1
        entry["peak_rise_mb"] += record.peak_rise_mb          # which stages raised the process's peak memory
    stages = [{"stage": name, **entry, "share": entry["seconds"] / wall} for name, entry in by_name.items()]
    outside = wall - sum(s["seconds"] for s in stages)
    return {"wall_s": wall, "stages": stages, "outside_stages_s": outside, "outside_stages_share": outside / wall,
            "forwards": counts["forwards"], "rows_forwarded": counts["rows"], "peak_rss_mb": peak_memory_mb(),
            "personas": list(config.personas), "dtype": config.dtype}


def table(result: dict[str, Any]) -> str:
    """The stages as text: seconds, share of the wall time, forwards and how much each raised the peak resident
    memory, then the totals."""
    lines = [f"{'stage':34s} {'seconds':>9s} {'share':>7s} {'forwards':>9s} {'peak rise MB':>13s}"]
    for s in sorted(result["stages"], key=lambda s: -s["seconds"]):
        lines.append(f"{s['stage']:34s} {s['seconds']:9.1f} {s['share']:7.1%} {s['forwards']:9d} {s['peak_rise_mb']:13.0f}")
    lines.append(f"{'(outside any stage)':34s} {result['outside_stages_s']:9.1f} {result['outside_stages_share']:7.1%}")
    lines.append(f"{'total':34s} {result['wall_s']:9.1f} {1:7.1%} {result['forwards']:9d}"
                 f"   ({result['rows_forwarded']} sequences forwarded)")
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
