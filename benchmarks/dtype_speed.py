"""Is bfloat16 faster than float32 on this machine? One forward batch and one signature collection in each
dtype on the embedded model, with the CPU flags that decide it (AMX-BF16 / AVX512-BF16). Prints the ratios
and writes JSON; a minute or two on 2 cores.

    $ .venv/bin/python benchmarks/dtype_speed.py --out benchmarks/dtype_speed_MACHINE.json
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

import persona_interp as pi
from persona_interp.data.files import write_text
from persona_interp.model.chat import encode_batch


def cpu_flags() -> dict[str, object]:
    """The CPU's model name and which of the bfloat16-relevant instruction sets it has."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(re.findall(r"\b(amx_bf16|avx512_bf16|avx512f|avx2)\b", text))
    name = re.search(r"model name\s*:\s*(.*)", text)
    return {"cpu": name.group(1) if name else platform.processor(), "flags": sorted(flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall-clock seconds of ``fn()`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="calibration items of the signature timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="write the measurements here as JSON")
    args = parser.parse_args()
    data = pi.load_persona("power").sample(args.n, seed=0)
    seconds: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "bfloat16"):
        model = pi.load_model(dtype=dtype)
        batch = encode_batch(model.tokenizer, [(item.question, item.matching) for item in data][:8], None, 256)
        with torch.inference_mode():
            forward = timed(lambda m=model, t=batch.tokens: m(t), args.repeats)
        signatures = timed(lambda m=model: pi.collect_signatures(m, data, "seek", progress=False), 1)
        seconds[dtype] = {"forward": forward, "signatures": signatures}
        print(f"{dtype}: forward of {tuple(batch.tokens.shape)} tokens {forward:.2f} s, {args.n} signatures {signatures:.2f} s")
    ratios = {k: seconds["bfloat16"][k] / seconds["float32"][k] for k in seconds["float32"]}
    print("bfloat16 / float32 time: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    result = {**cpu_flags(), "torch": torch.__version__, "threads": torch.get_num_threads(), "n": args.n,
              "seconds": seconds, "bfloat16_over_float32": ratios, "date": time.strftime("%Y-%m-%d")}
    if args.out:
        write_text(Path(args.out), json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
