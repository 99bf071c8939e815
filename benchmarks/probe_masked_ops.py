"""Does a weight-masked forward do more work than a plain one? Operator counts, not times.

Profiles one forward of a random batch without a mask and one inside ``ablate`` (the profiler wraps
the forward only, not entering or leaving the context), and prints the number of calls of the
copy / conversion / matrix-product operators, and every (operator, input shapes) pair whose count
differs. Counts do not depend on how busy the machine is, unlike the times in ``bench.py``.

    $ .venv/bin/python benchmarks/probe_masked_ops.py --sparsity 0.5
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

import persona_interp as pi

COUNTED_OPS = ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous",
               "aten::linear", "aten::matmul", "aten::mm", "aten::addmm")


def operator_counts(model, tokens: torch.Tensor) -> collections.Counter:
    """Calls per (operator, input shapes) in one forward of ``tokens`` (after one warm-up forward)."""
    with torch.inference_mode():
        model(tokens)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(tokens)
    return collections.Counter((e.name, str(e.input_shapes)) for e in prof.events() if e.name in COUNTED_OPS)


def per_operator(counts: collections.Counter) -> dict[str, int]:
    """Total calls per operator name."""
    totals: collections.Counter = collections.Counter()
    for (name, _), n in counts.items():
        totals[name] += n
    return dict(sorted(totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--n-calibration", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs=2, default=(8, 256), metavar=("ROWS", "TOKENS"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = pi.load_model()
    items = pi.load_persona("power", "train").sample(args.n_calibration, seed=0)
    seek, reject = (pi.collect_signatures(model, items, side, progress=False) for side in ("seek", "reject"))
    mask = pi.contrastive_wanda_masks(model, seek, reject, args.sparsity)[0]
    tokens = torch.randint(0, 1000, tuple(args.batch))
    plain = operator_counts(model, tokens)
    with pi.ablate(model, mask):
        masked = operator_counts(model, tokens)
    print("plain forward: ", per_operator(plain))
    print("masked forward:", per_operator(masked))
    print("(operator, shapes) called more often under the mask:", (masked - plain).most_common(10) or "none")
    print("(operator, shapes) called more often without it:   ", (plain - masked).most_common(10) or "none")


if __name__ == "__main__":
    main()
