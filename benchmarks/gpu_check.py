"""GPU check: the pipeline on a random-initialised LLaMA-2-7B-shaped model in bfloat16 on one GPU (and, where
there are two or more GPUs, sharded over them with accelerate), in under 8 minutes on one H200.

What it measures, stage by stage (each stage timed between ``torch.cuda.synchronize()`` calls, with the peak
GPU memory it reached, ``torch.cuda.max_memory_allocated`` per device, reset before it):

* signatures of both poles over 64 calibration samples each (``collect_signatures``);
* Contrastive-Wanda masks at ρ = 0.3 on every linear map;
* ``ablate``: enter and exit, the first call and the fastest of 3 more; that every map is restored bit-exact
  (a checksum of every map's raw bits, plus full copies of three maps compared with ``torch.equal``) and that
  the mask did change the weights while entered;
* a plain forward over the token batches A/B scoring feeds the model (same packing, same order) and A/B
  scoring of 64 items, fastest of 3 each after a warm-up, as real (unpadded) tokens per second;
* A/B scoring with the seek mask ablated (its mean margin, to see it is finite and differs).

With ≥ 2 GPUs the model is rebuilt and ``pi.load_model(hf, tokenizer=tok, device_map=...)`` shards it with a
balanced accelerate map (``get_balanced_memory`` + ``infer_auto_device_map``: what ``from_pretrained``'s
``device_map="auto"`` does; the map the library's own ``"auto"`` would pick is recorded too), and the same
stages run again under ``sharded_``. The model is random: no number says anything about personas.

Every stage is guarded: a failure records its traceback under ``errors`` and the stages that need it are
listed under ``skipped``; the JSON is rewritten after every stage, so a killed run keeps what ran. Exit status:
0 when no stage failed, 1 when one did, 2 when ``--device cuda`` finds no GPU.

Here (CPU, seconds; what ``tests/test_scale_scripts.py`` runs):

    $ HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --device cpu --size tiny --out /tmp/gpu_check

On the device machine (an H200: Python 3.12 with torch 2.11, transformers 5.17, accelerate, jaxtyping, einops,
tokenizers, safetensors, pandas, pyarrow, xxhash, fsspec; no venv, no network). It gets only a copy of the
working tree, so the packages it lacks travel as wheels: transformer-lens (not there), transformers 5.24 (the
project needs >= 5.23) and what importing transformer-lens needs that is not there (datasets, dill,
multiprocess). Once, here, in the repo's root:

    $ echo /.whl/ >> .git/info/exclude
    $ python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        transformer-lens==4.3.0 transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19

then through the device tool, with ``carry: [".whl"]`` and ``timeout_s: 600`` (the package is used from the
tree through ``PYTHONPATH``, no install):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 || exit; \\
      python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log

``$OUT/gpu_check.json`` and the log come back. ``--size 1b`` (TinyLlama-1.1B's shape) is a shorter GPU run.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import (DTYPES, VOCAB, Run, build_llama, build_tokenizer, covered_bytes, goal_table,  # noqa: E402
                   map_checksums, n_parameters, rss_meter, synthetic_items)  # (scale puts the repo on sys.path)
import persona_interp as pi  # noqa: E402
from bench import n_tokens  # noqa: E402
from persona_interp.model.chat import encode_batch, encode_packed  # noqa: E402
from persona_interp.evaluation.scoring import score_ab  # noqa: E402

ROUNDS = 3


def sync() -> None:
    """Wait for every GPU's queued work (no-op without CUDA), so a timer reads finished work."""
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        torch.cuda.synchronize(index)


def cuda_meter(fn: Callable[[], Any]) -> tuple[float, dict[str, Any], Any]:
    """Seconds of ``fn()`` between synchronisations, peak and current GPU memory (GiB) per device, the result."""
    devices = range(torch.cuda.device_count())
    sync()
    for index in devices:
        torch.cuda.reset_peak_memory_stats(index)
    t0 = time.perf_counter()
    result = fn()
    sync()
    seconds = time.perf_counter() - t0
    peaks = [torch.cuda.max_memory_allocated(index) / 2**30 for index in devices]
    allocated = [torch.cuda.memory_allocated(index) / 2**30 for index in devices]
    return seconds, {"peak_gpu_gib": max(peaks), "peak_gpu_gib_per_device": peaks,
                     "allocated_gpu_gib_per_device": allocated}, result


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of ``fn()``, synchronised on both sides."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def scoring_batches(model: Any, items: Sequence[pi.PersonaItem], batch_size: int,
                    max_tokens: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The token batches (and forward kwargs) ``score_ab`` feeds the model for ``items``: same length order,
    same rows per batch, options packed behind one prompt where the adapter allows it."""
    packed = pi.get_adapter(model).accepts_packed_options
    order = sorted(items, key=lambda it: len(it.question) + len(it.matching) + len(it.not_matching))
    rows = batch_size if packed else max(1, batch_size // 2)
    batches = []
    for start in range(0, len(order), rows):
        chunk = order[start:start + rows]
        if packed:
            batch = encode_packed(model.tokenizer, [(it.question, it.matching, it.not_matching) for it in chunk],
                                  None, max_tokens)
            batches.append((batch.tokens, {"attention_mask": batch.attention, "position_ids": batch.position_ids}))
        else:
            pairs = [(it.question, answer) for it in chunk for answer in (it.matching, it.not_matching)]
            batches.append((encode_batch(model.tokenizer, pairs, None, max_tokens).tokens, {}))
    return batches


def plain_forward(model: Any, batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> None:
    """The floor: every batch through the model on its input device, nothing kept."""
    device = model.W_E.device
    with torch.inference_mode():
        for tokens, kwargs in batches:
            model(tokens.to(device), **{key: value.to(device) for key, value in kwargs.items()})


def ablate_check(run: Run, prefix: str, model: Any, mask: pi.Mask) -> None:
    """``ablate`` enter and exit times (first, fastest of ``ROUNDS``), and bit-exact restore of every map."""
    adapter = pi.get_adapter(model)
    names = [adapter.maps[i].name for i in (0, len(adapter.maps) // 2, -1)]
    before, copies = map_checksums(model), {name: adapter.parameter(name).detach().clone() for name in names}
    enters, exits = [], []
    for _ in range(ROUNDS + 1):
        with contextlib.ExitStack() as stack:
            enters.append(timed(lambda: stack.enter_context(pi.ablate(model, mask))))
            exits.append(timed(stack.close))
    with pi.ablate(model, mask):
        inside = map_checksums(model)
    changed = sum(inside[name] != before[name] for name in mask.keep)
    exact = map_checksums(model) == before and all(torch.equal(adapter.parameter(n), copies[n]) for n in names)
    run.measure(**{f"{prefix}ablate_enter_first_s": enters[0], f"{prefix}ablate_enter_s": min(enters[1:]),
                   f"{prefix}ablate_exit_first_s": exits[0], f"{prefix}ablate_exit_s": min(exits[1:]),
                   f"{prefix}ablate_changed_maps": int(changed), f"{prefix}restore_bit_exact": bool(exact),
                   f"{prefix}covered_weights_gib": covered_bytes(model, mask) / 2**30})


def throughput(run: Run, prefix: str, model: Any, items: Sequence[pi.PersonaItem], batch_size: int,
               max_tokens: int) -> Any:
    """Real tokens per second of a plain forward over the scoring batches and of ``score_ab`` (fastest of
    ``ROUNDS`` each, interleaved, after a warm-up); returns the scores."""
    batches = scoring_batches(model, items, batch_size, max_tokens)
    scores = score_ab(model, items, batch_size=batch_size, max_tokens=max_tokens, progress=False)
    plain_forward(model, batches)
    t_forward, t_score = float("inf"), float("inf")
    for _ in range(ROUNDS):
        t_forward = min(t_forward, timed(lambda: plain_forward(model, batches)))
        t_score = min(t_score, timed(lambda: score_ab(model, items, batch_size=batch_size, max_tokens=max_tokens,
                                                      progress=False)))
    tokens = n_tokens(model, items, max_tokens)
    run.measure(**{f"{prefix}scoring_tokens": tokens, f"{prefix}forward_tokens_per_s": tokens / t_forward,
                   f"{prefix}score_ab_tokens_per_s": tokens / t_score,
                   f"{prefix}score_ab_over_forward_time": t_score / t_forward,
                   f"{prefix}margin_mean": float(scores.margin_mean.mean())})
    return scores


def ablated_margin(run: Run, prefix: str, model: Any, mask: pi.Mask, items: Sequence[pi.PersonaItem],
                   batch_size: int, max_tokens: int) -> None:
    """Mean A/B margin with ``mask`` ablated."""
    with pi.ablate(model, mask):
        scores = score_ab(model, items, batch_size=batch_size, max_tokens=max_tokens, progress=False)
    margin = scores.margin_mean
    run.measure(**{f"{prefix}ablated_margin_mean": float(margin.mean()),
                   f"{prefix}ablated_margins_finite": bool(torch.isfinite(margin).all())})


def pipeline(run: Run, prefix: str, load: Callable[[], Any], args: argparse.Namespace) -> None:
    """Every stage on the model ``load()`` returns, names prefixed by ``prefix``."""
    calib = synthetic_items(args.n_calibration, (20, 60), (8, 30), seed=1)
    items = synthetic_items(args.n_items, (20, 60), (8, 30), seed=2)
    common = dict(batch_size=args.batch_size, max_tokens=args.max_tokens, progress=False)
    p = prefix
    model = run.stage(f"{p}load", load)
    if model is None:
        return
    adapter = pi.get_adapter(model)
    run.measure(**{f"{p}n_parameters": n_parameters(model), f"{p}n_maps": len(adapter.maps),
                   f"{p}weight_devices": sorted({str(adapter.parameter(m.name).device) for m in adapter.maps}),
                   f"{p}weight_dtype": str(adapter.parameter(adapter.maps[0].name).dtype)})
    sigs = {side: run.stage(f"{p}signatures_{side}", lambda side=side: pi.collect_signatures(
        model, [(it.question, it.answer(side)) for it in calib], side=side, **common), needs=[f"{p}load"])
        for side in ("seek", "reject")}
    masks = run.stage(f"{p}masks", lambda: pi.contrastive_wanda_masks(model, sigs["seek"], sigs["reject"], args.sparsity),
                      needs=[f"{p}signatures_seek", f"{p}signatures_reject"])
    if masks is not None:
        run.measure(**{f"{p}mask_sparsity": masks[0].sparsity()})
    run.stage(f"{p}ablate", lambda: ablate_check(run, p, model, masks[0]), needs=[f"{p}masks"])
    run.stage(f"{p}throughput", lambda: throughput(run, p, model, items, args.batch_size, args.max_tokens),
              needs=[f"{p}load"])
    run.stage(f"{p}score_ab_ablated", lambda: ablated_margin(run, p, model, masks[0], items, args.batch_size,
                                                             args.max_tokens), needs=[f"{p}masks"])


def balanced_map(hf_model: Any) -> tuple[dict[str, Any], int]:
    """A device map spreading ``hf_model`` evenly over the visible GPUs (``from_pretrained``'s ``"auto"``), and
    how many devices the unbalanced ``infer_auto_device_map`` default (the library's ``"auto"``) would use."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = getattr(hf_model, "_no_split_modules", None)
    default = infer_auto_device_map(hf_model, no_split_module_classes=no_split)
    memory = get_balanced_memory(hf_model, no_split_module_classes=no_split)
    balanced = infer_auto_device_map(hf_model, max_memory=memory, no_split_module_classes=no_split)
    return balanced, len(set(default.values()))


def sharded_load(run: Run, size: str, tokenizer: Any, dtype: torch.dtype) -> Any:
    """A fresh model of ``size`` sharded over every GPU through ``pi.load_model(..., device_map=...)``."""
    hf = build_llama(size, len(tokenizer), dtype, "cuda:0", seed=1)
    device_map, default_devices = balanced_map(hf)
    run.measure(sharded_device_map_devices=sorted({str(d) for d in device_map.values()}),
                library_auto_map_devices=default_devices)
    return pi.load_model(hf, tokenizer=tokenizer, device_map=device_map)


def check_table(results: dict[str, Any]) -> str:
    """Stage times and memory, then the measures; the checks (bit-exact, no errors, 8 minutes) with verdicts."""
    memory_key = "peak_gpu_gib" if results["config"]["device"] == "cuda" else "extra_peak_rss_mb"
    rows: list[tuple[str, Any, str, bool | None]] = []
    for name, stage in results["stages"].items():
        rows += [(f"{name}_s", stage["seconds"], "", None), (f"{name}_{memory_key}", stage[memory_key], "", None)]
    for name, value in results["measures"].items():
        exact = name.endswith("restore_bit_exact") or name.endswith("margins_finite")
        rows.append((name, value if not isinstance(value, list) else ",".join(map(str, value)),
                     "True" if exact else "", (value is True) if exact else None))
    rows += [("total_s", results["total_s"], "<= 480", results["total_s"] <= 480),
             ("stage_errors", len(results["errors"]), "0", not results["errors"])]
    return goal_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every stage, write ``OUT/gpu_check.json``, print the table; the exit status (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True,
                        help="folder for gpu_check.json (created if missing; an existing gpu_check.json is replaced)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where the model runs")
    parser.add_argument("--size", choices=["tiny", "1b", "7b"], default="7b", help="Llama shape (scale.SIZES)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="the model's parameter dtype")
    parser.add_argument("--n-calibration", type=int, default=64, help="calibration samples per pole")
    parser.add_argument("--n-items", type=int, default=64, help="A/B items scored")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of signatures and scoring")
    parser.add_argument("--max-tokens", type=int, default=256, help="token limit of every sample")
    parser.add_argument("--sparsity", type=float, default=0.3, help="ρ of the Contrastive-Wanda masks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (torch sees no GPU); use --device cpu --size tiny",
              file=sys.stderr, flush=True)
        return 2
    import transformers

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if args.device == "cuda" else []
    config = {**vars(args), "torch": torch.__version__, "transformers": transformers.__version__,
              "transformer_lens": metadata.version("transformer-lens"), "gpus": gpus,
              "torch_threads": torch.get_num_threads()}
    run = Run(Path(args.out) / "gpu_check.json", cuda_meter if args.device == "cuda" else rss_meter, config)
    dtype, device = DTYPES[args.dtype], "cuda:0" if args.device == "cuda" else "cpu"
    tokenizer = run.stage("tokenizer", lambda: build_tokenizer(VOCAB[args.size]))
    if tokenizer is None:
        print(check_table(run.results), flush=True)
        return 1
    hf = run.stage("build_model", lambda: build_llama(args.size, len(tokenizer), dtype, device))
    if hf is not None:
        pipeline(run, "", lambda: pi.load_model(hf, tokenizer=tokenizer), args)
    del hf
    gc.collect()
    if args.device == "cuda" and torch.cuda.device_count() >= 2:
        torch.cuda.empty_cache()
        pipeline(run, "sharded_", lambda: sharded_load(run, args.size, tokenizer, dtype), args)
    else:
        run.skip("sharded_load", "needs --device cuda and at least 2 GPUs")
    print(check_table(run.results), flush=True)
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
