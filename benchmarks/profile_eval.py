"""Where A/B scoring spends its time, one item at a time vs batched (torch profiler, CPU), and what a faster forward
could buy: each run's operator time grouped (matrix products, attention, normalisation, elementwise, casts and
copies, the rest), and the TransformerBridge's forward against the wrapped transformers model's on the same tokens.

The share of matrix products bounds what batching or a fused forward can gain on a CPU: a run that is already
mostly matrix products cannot get much faster except by computing fewer tokens. Shares come from the profiler's
self time per operator (not from cProfile, whose function-level attribution charges the operators a Python
function launches to that function).

    $ .venv/bin/python benchmarks/profile_eval.py --n-test 64 --dtype auto [--out benchmarks/profile_eval.json [--force]]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dtype_speed import cpu_flags  # noqa: E402  (a sibling script)

import persona_interp as pi  # noqa: E402
from persona_interp.evaluation.scoring import score_ab  # noqa: E402
from persona_interp.report.results import git_revision  # noqa: E402

GROUPS = {      # operator -> group; an operator not listed counts as "other"
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax", "aten::_log_softmax"),
    "normalisation": ("aten::pow", "aten::mean", "aten::rsqrt", "aten::sqrt", "aten::div_", "aten::_fused_rms_norm"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::neg", "aten::cat", "aten::where", "aten::sum"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
}


def grouped_shares(averages: Any) -> dict[str, float]:
    """Share of the operators' self time per group of [`GROUPS`] (and ``other``)."""
    total = sum(event.self_cpu_time_total for event in averages) or 1.0
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    for event in averages:
        group = next((g for g, ops in GROUPS.items() if event.key in ops), "other")
        shares[group] += event.self_cpu_time_total / total
    return shares


def profile_scoring(model: Any, items: list, batch_size: int) -> dict[str, Any]:
    """Wall time and the grouped operator shares of one scoring run."""
    score_ab(model, items[:batch_size], batch_size=batch_size, progress=False)          # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        score_ab(model, items, batch_size=batch_size, progress=False)
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    shares = grouped_shares(averages)
    print(f"\n== batch_size {batch_size}: {wall:.1f} s wall; " + ", ".join(f"{g} {s:.0%}" for g, s in shares.items()) + " ==")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=10))
    return {"wall_s": wall, "shares": shares}


def bridge_overhead(model: Any, batch: int = 8, length: int = 120, rounds: int = 5) -> dict[str, float]:
    """Fastest of ``rounds`` interleaved forwards of the same random tokens through the TransformerBridge and through
    the transformers model it wraps (no hooks on either)."""
    hf = model.original_model
    tokens = torch.randint(0, hf.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    best = {"bridge_s": float("inf"), "transformers_s": float("inf")}
    with torch.no_grad():
        for _ in range(rounds):
            for key, run in (("bridge_s", model), ("transformers_s", hf)):
                t0 = time.perf_counter()
                run(tokens)
                best[key] = min(best[key], time.perf_counter() - t0)
    return {**best, "bridge_over_transformers": best["bridge_s"] / best["transformers_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="power")
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 where the CPU is fast in it), float32 or bfloat16")
    parser.add_argument("--out", default=None, help="write the numbers as JSON (with the CPU's flags and the revision)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.out and Path(args.out).exists() and not args.force:
        raise SystemExit(f"error: {args.out} exists; pass --force to overwrite it")
    model = pi.load_model(dtype=args.dtype)
    items = list(pi.load_persona(args.persona, "test"))[: args.n_test]
    single, batched = profile_scoring(model, items, 1), profile_scoring(model, items, 8)
    overhead = bridge_overhead(model)
    print(f"\nbatching speed-up {single['wall_s'] / batched['wall_s']:.2f}x; matrix products "
          f"{single['shares']['matrix products']:.0%} (one at a time) vs {batched['shares']['matrix products']:.0%} (batched); "
          f"bridge forward / transformers forward {overhead['bridge_over_transformers']:.3f}")
    if args.out:
        result = {"dtype": str(pi.get_adapter(model).dtype), "n_test": len(items), "one_at_a_time": single, "batched": batched,
                  "bridge": overhead, "cpu": cpu_flags(), "torch_threads": torch.get_num_threads(),
                  "revision": git_revision(), "date": _dt.date.today().isoformat()}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
