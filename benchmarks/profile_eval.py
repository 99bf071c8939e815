"""Where A/B scoring spends its time, one item at a time vs batched (torch profiler, CPU).

Prints the top operators of each run and the share of time in matrix products, which bounds what
batching can gain on a CPU: a run that is already mostly matrix products cannot get much faster.

    $ .venv/bin/python benchmarks/profile_eval.py --n-test 48
"""
from __future__ import annotations

import argparse
import time

from torch.profiler import ProfilerActivity, profile

import persona_interp as pi
from persona_interp.evaluation.scoring import score_ab

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention")


def profile_scoring(model, items, batch_size: int) -> dict[str, float]:
    """Wall time and the self-CPU share of matrix-product operators for one scoring run."""
    score_ab(model, items[:batch_size], batch_size=batch_size, progress=False)          # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        score_ab(model, items, batch_size=batch_size, progress=False)
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    matmul = sum(event.self_cpu_time_total for event in averages if event.key in MATMUL_OPS)
    print(f"\n== batch_size {batch_size}: {wall:.1f} s wall, matrix products {matmul / total:.0%} of operator time ==")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=8))
    return {"wall_s": wall, "matmul_share": matmul / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="power")
    parser.add_argument("--n-test", type=int, default=48)
    args = parser.parse_args()
    model = pi.load_model()
    items = list(pi.load_persona(args.persona, "test"))[: args.n_test]
    single, batched = profile_scoring(model, items, 1), profile_scoring(model, items, 8)
    print(f"\nbatching speed-up {single['wall_s'] / batched['wall_s']:.2f}x; matrix-product share "
          f"{single['matmul_share']:.0%} (one at a time) vs {batched['matmul_share']:.0%} (batched)")


if __name__ == "__main__":
    main()
