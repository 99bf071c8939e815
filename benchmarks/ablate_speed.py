"""How long does ``with ablate(model, mask): pass`` take on the embedded model? Random masks on every map at
ρ = 0.3 and 0.5, float32 and bfloat16: the first call (which faults in the buffers it sets aside), the median
and the fastest of ``--calls`` more, each followed by a bit-exact check of every weight. Seconds on 2 cores;
run it alone on the machine (the goal in issue #21 is enter + exit < 0.2 s).

    $ .venv/bin/python benchmarks/ablate_speed.py --out benchmarks/ablate_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import persona_interp as pi
from persona_interp.data.files import write_text

from dtype_speed import cpu_flags
from scale import enter_exit_times


def enter_exit_seconds(model: torch.nn.Module, mask: pi.Mask, calls: int) -> dict[str, float]:
    """First, median and fastest enter + exit of ``calls`` after the first; raises if a weight changed."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    seconds = enter_exit_times(model, mask, calls)
    for name, p in model.named_parameters():
        if not torch.equal(p.detach().view(torch.uint8), before[name].view(torch.uint8)):
            raise AssertionError(f"{name} was not restored bit-exact")
    rest = seconds[1:]
    return {"first": seconds[0], "median": statistics.median(rest), "best": min(rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8, help="timed calls after the first")
    parser.add_argument("--out", help="write the measurements here as JSON")
    args = parser.parse_args()
    rows = []
    for dtype in ("float32", "bfloat16"):
        model = pi.load_model(dtype=dtype)
        for sparsity in (0.3, 0.5):
            mask = pi.random_mask(model, sparsity, seed=0)
            row = {"dtype": dtype, "sparsity": sparsity, "maps": len(mask.keep),
                   **enter_exit_seconds(model, mask, args.calls)}
            rows.append(row)
            print(f"{dtype} ρ={sparsity}: first {row['first']:.3f} s, median {row['median']:.3f} s, "
                  f"best {row['best']:.3f} s ({row['maps']} maps, restored bit-exact)")
    if args.out:
        write_text(args.out, json.dumps({**cpu_flags(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
