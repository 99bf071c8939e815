"""Benchmark: the pipeline against its physical floor (a plain forward) and against the naive way.

Prints a table and writes JSON. Every number is a ratio (or a time) from one run on this machine;
no test asserts a time. Run on the embedded model:

    $ .venv/bin/python benchmarks/bench.py --out benchmarks/results.json

``tests/test_benchmark.py`` runs the same code on a tiny model (smoke mode) so it cannot rot.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import persona_interp as pi
from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import encode_batch, encode_packed
from persona_interp.evaluation.scoring import score_ab


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_memory() -> None:
    """Return freed heap memory to the OS, so each measurement's peak starts from the same floor
    (otherwise a later, smaller job reuses pages an earlier one left resident and looks free)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):                   # not glibc: peaks are then upper bounds
        pass


def measure(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """Wall time, extra peak resident memory (bytes above the start, sampled every 2 ms) and result."""
    _release_memory()
    start_rss, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    return elapsed, max(0, max(peak[0], _rss()) - start_rss), result


def _batches(model: Any, items: Sequence[pi.PersonaItem], batch_size: int, max_tokens: int):
    for start in range(0, len(items), batch_size):
        yield encode_batch(model.tokenizer, [(it.question, it.matching) for it in items[start:start + batch_size]],
                           max_tokens=max_tokens)


def n_tokens(model: Any, items: Sequence[pi.PersonaItem], max_tokens: int) -> int:
    """Real (unpadded) tokens that A/B scoring feeds the model for ``items``: both options packed
    behind one prompt where the adapter allows it, else one row per option."""
    if get_adapter(model).accepts_packed_options:
        packed = encode_packed(model.tokenizer, [(it.question, it.matching, it.not_matching) for it in items], None, max_tokens)
        return int((packed.prompt_len + packed.a_len + packed.b_len).sum())
    pairs = [(it.question, answer) for it in items for answer in (it.matching, it.not_matching)]
    return int(encode_batch(model.tokenizer, pairs, None, max_tokens).lengths.sum())


def plain_forward(model: Any, items: Sequence[pi.PersonaItem], batch_size: int, max_tokens: int) -> None:
    """The floor: the same token batches through the model, nothing kept."""
    with torch.inference_mode():
        for batch in _batches(model, items, batch_size, max_tokens):
            model(batch.tokens)


def naive_signature(model: Any, items: Sequence[pi.PersonaItem], batch_size: int, max_tokens: int) -> dict[str, torch.Tensor]:
    """The naive way: ``run_with_cache`` of every input site, then reduce (mean per-sample norm per channel)."""
    adapter = get_adapter(model)
    sites = adapter.input_sites
    sums: dict[str, torch.Tensor] = {}
    n = 0
    with torch.inference_mode():
        for batch in _batches(model, items, batch_size, max_tokens):
            _, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name in sites)
            mask = batch.token_mask("all").double()[..., None]
            for site in sites:
                x = cache[site].reshape(*batch.tokens.shape, -1).double()
                norm = (x.square() * mask).sum(1).sqrt().sum(0)
                sums[site] = sums.get(site, 0) + norm
            n += len(batch.tokens)
    return {site: value / n for site, value in sums.items()}


def run(model: Any, train: Sequence[pi.PersonaItem], test: Sequence[pi.PersonaItem], *, n_calibration: int,
        n_test: int, batch_size: int = 8, max_tokens: int = 256, sparsity: float = 0.5, rounds: int = 5) -> dict[str, Any]:
    """Every measurement of the issue, as a dict of times, memory and ratios."""
    adapter = get_adapter(model)
    calib, small = list(train[:n_calibration]), list(train[: max(1, n_calibration // 4)])
    test = list(test[:n_test])
    dataset = pi.PersonaDataset("bench", calib)
    out: dict[str, Any] = {"n_calibration": len(calib), "n_test": len(test), "batch_size": batch_size}
    plain_forward(model, small, batch_size, max_tokens)                                   # warm-up
    _, m_sig_small, _ = measure(lambda: pi.collect_signatures(model, pi.PersonaDataset("bench", small), "seek",
                                                              batch_size=batch_size, max_tokens=max_tokens, progress=False))
    t_plain, m_plain, _ = measure(lambda: plain_forward(model, calib, batch_size, max_tokens))
    t_sig, m_sig, sig = measure(lambda: pi.collect_signatures(model, dataset, "seek", batch_size=batch_size,
                                                              max_tokens=max_tokens, progress=False))
    t_naive, m_naive, naive = measure(lambda: naive_signature(model, calib, batch_size, max_tokens))
    site_of = {m.site: m.name for m in adapter.maps}
    out["naive_max_abs_diff"] = max(float((naive[site] - sig.norm_mean(site_of[site])).abs().max()) for site in naive)
    out.update(forward_s=t_plain, signatures_s=t_sig, naive_s=t_naive,
               signatures_over_forward=t_sig / t_plain, naive_over_ours_time=t_naive / t_sig,
               naive_over_forward_time=t_naive / t_plain,
               extra_memory_forward_mb=m_plain / 2**20, extra_memory_ours_mb=m_sig / 2**20,
               extra_memory_naive_mb=m_naive / 2**20, naive_over_ours_memory=m_naive / max(m_sig, 1),
               naive_over_forward_memory=m_naive / max(m_plain, 1),
               extra_memory_4x_tokens_ratio=m_sig / max(m_sig_small, 1))

    reject = pi.collect_signatures(model, dataset, "reject", batch_size=batch_size, max_tokens=max_tokens, progress=False)
    t_build, _, pair = measure(lambda: pi.contrastive_wanda_masks(model, sig, reject, sparsity))
    out["mask_build_s"] = t_build
    tokens = next(_batches(model, calib, batch_size, max_tokens)).tokens

    def forward_time() -> float:
        """One forward of the batch, timed."""
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(tokens)
            return time.perf_counter() - t0

    def enter_exit() -> None:
        with pi.ablate(model, pair[0]):
            pass

    out["ablate_enter_exit_s"], extra, _ = measure(enter_exit)                              # the first call
    out["ablate_extra_memory_mb"] = extra / 2**20
    out["ablate_enter_exit_best_s"] = min(measure(enter_exit)[0] for _ in range(3))
    neurons = pi.NeuronMask({layer: list(range(0, adapter.d_mlp, 7)) for layer in range(adapter.n_layers)})
    heads = pi.HeadMask({layer: [0] for layer in range(adapter.n_layers)})
    # Plain and masked forwards interleaved, fastest of several each: a slow spell of the machine
    # then hits both sides of a ratio instead of one.
    best = {"plain": float("inf"), "masked": float("inf"), "neuron": float("inf"), "head": float("inf")}
    for _ in range(rounds):
        best["plain"] = min(best["plain"], forward_time())
        for name, mask in (("masked", pair[0]), ("neuron", neurons), ("head", heads)):
            with pi.ablate(model, mask):
                best[name] = min(best[name], forward_time())
    out.update(masked_forward_over_plain=best["masked"] / best["plain"],
               neuron_mask_forward_over_plain=best["neuron"] / best["plain"],
               head_mask_forward_over_plain=best["head"] / best["plain"])

    t_batched, _, _ = measure(lambda: score_ab(model, test, batch_size=batch_size, progress=False))
    t_single, _, _ = measure(lambda: score_ab(model, test, batch_size=1, progress=False))
    tokens_eval = n_tokens(model, test, max_tokens)
    tokens_calib = sum(int(batch.lengths.sum()) for batch in _batches(model, calib, batch_size, max_tokens))
    out.update(eval_batched_s=t_batched, eval_single_s=t_single, batching_speedup=t_single / t_batched,
               eval_single_tokens_per_s=tokens_eval / t_single, eval_batched_tokens_per_s=tokens_eval / t_batched,
               forward_tokens_per_s=tokens_calib / t_plain)

    def end_to_end() -> None:
        seek_sig = pi.collect_signatures(model, dataset, "seek", batch_size=batch_size, max_tokens=max_tokens, progress=False)
        reject_sig = pi.collect_signatures(model, dataset, "reject", batch_size=batch_size, max_tokens=max_tokens, progress=False)
        masks = pi.contrastive_wanda_masks(model, seek_sig, reject_sig, 0.3)
        score_ab(model, test, batch_size=batch_size, progress=False)
        for mask in masks:
            with pi.ablate(model, mask):
                score_ab(model, test, batch_size=batch_size, progress=False)

    out["end_to_end_s"] = measure(end_to_end)[0]
    return out


GOALS = {"signatures_over_forward": ("<=", 1.15), "naive_over_ours_time": (">=", 2.0), "naive_over_ours_memory": (">=", 10.0),
         "extra_memory_4x_tokens_ratio": ("<=", 1.5), "masked_forward_over_plain": ("<=", 1.02),
         "neuron_mask_forward_over_plain": ("<=", 1.10), "head_mask_forward_over_plain": ("<=", 1.10),
         "batching_speedup": (">=", 3.0), "end_to_end_s": ("<=", 300.0), "ablate_enter_exit_s": ("<=", 0.2)}
SPEEDUPS = ("forward_s", "signatures_s", "mask_build_s", "ablate_enter_exit_s", "eval_batched_s", "end_to_end_s")


def speedups(slow: dict[str, Any], fast: dict[str, Any]) -> dict[str, float]:
    """Per timed step, how many times faster ``fast`` (e.g. bfloat16) ran than ``slow`` (float32)."""
    return {f"{key[:-2]}_speedup": slow[key] / fast[key] for key in SPEEDUPS if key in slow and key in fast}


def table(results: dict[str, Any], prefix: str = "") -> str:
    """The results as a plain-text table, with each goal and whether this run met it (nested sections, e.g.
    one per dtype, get their name as a prefix)."""
    lines = [f"{'measure':44s} {'value':>12s}  goal"] if not prefix else []
    for key, value in results.items():
        if isinstance(value, dict):
            lines.append(table(value, f"{prefix}{key}."))
            continue
        goal = GOALS.get(key)
        text = f"{value:12.4g}" if isinstance(value, float) else f"{value!s:>12s}"
        verdict = ""
        if goal:
            ok = value <= goal[1] if goal[0] == "<=" else value >= goal[1]
            verdict = f"{goal[0]} {goal[1]:g}  {'met' if ok else 'MISSED'}"
        lines.append(f"{prefix + key:44s} {text}  {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="power")
    parser.add_argument("--n-calibration", type=int, default=128)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="model dtypes to run, in order")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"error: {out} exists; pass --force to overwrite it")
    train, test = list(pi.load_persona(args.persona, "train")), list(pi.load_persona(args.persona, "test"))
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for dtype in args.dtypes:
        print(f"== {dtype}", flush=True)
        results[dtype] = run(pi.load_model(dtype=dtype), train, test, n_calibration=args.n_calibration, n_test=args.n_test)
    if "float32" in results and "bfloat16" in results:
        results["bfloat16_over_float32"] = speedups(results["float32"], results["bfloat16"])
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
