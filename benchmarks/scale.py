"""Scale check on the CPU: the whole pipeline on a random-initialised ~1B-parameter Llama in bfloat16.

Stages, each timed and measured (extra peak resident memory above the stage's start, sampled every
2 ms as in ``bench.py``): building the tokenizer and the model, signatures of both poles (16 short
samples each), Contrastive-Wanda masks at ρ = 0.3, ``ablate`` (the first enter + exit and the fastest
of ``--ablate-rounds`` more, the resident memory it adds while entered against ρ × the covered weights'
bytes, bit-exact restore of every map), A/B scoring of 16 items with and without the mask, and ``ablate``
enter + exit on the embedded SmolLM2-135M with a random mask on every map (first and fastest of 3).
The model is random, so no number says anything about
personas: this checks speed, memory and correctness at a size the tests never reach.

    $ HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale.py --out benchmarks/scale.json   # ~1B, a few minutes
    $ HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scale.py --size tiny --out /tmp/s.json  # seconds

Writes the JSON after every stage (a crash leaves the stages before it) and prints a table of
measure / value / goal / met. ``gpu_check.py`` reuses the builders and the stage runner from here.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from jaxtyping import Shaped  # noqa: E402
from torch import Tensor  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]   # the repo's package (also without an install) and bench.py
import persona_interp as pi  # noqa: E402
from bench import _release_memory, _rss, measure  # noqa: E402
from persona_interp.evaluation.scoring import score_ab  # noqa: E402

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["the", "and", "ing", "ion", "er"]
SIZES = {   # Llama shapes: tiny for the tests, 1b = TinyLlama-1.1B's body, 7b = LLaMA-2-7B's
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
}
VOCAB = {"tiny": 400, "1b": 4096, "7b": 4096}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
ABLATE_SLACK_MB = 64   # the "small constant" ablate may add beyond ρ × the covered weights


# ---------------------------------------------------------------------- builders (shared with gpu_check.py)
def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up words of 1–4 syllables (a corpus a BPE can learn thousands of merges from).

    Example:
        >>> len(set(pseudo_words(100)))
        100
    """
    rng, words = random.Random(seed), set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def sentence(rng: random.Random, words: Sequence[str], n_words: tuple[int, int]) -> str:
    """A sentence of ``n_words[0]..n_words[1]`` random words, capitalised, with a full stop."""
    text = " ".join(rng.choice(words) for _ in range(rng.randint(*n_words)))
    return text[:1].upper() + text[1:] + "."


def build_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained offline on pseudo-word sentences, with a chat template
    (the approach of ``tests/conftest.py``); ``len(tokenizer)`` is at most ``vocab_size``.

    Example:
        >>> len(build_tokenizer(400)) <= 400
        True
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rng, words = random.Random(seed), pseudo_words(max(200, vocab_size), seed)
    corpus = [sentence(rng, words, (4, 16)) for _ in range(4 * len(words))]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, show_progress=False,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    folder = tempfile.mkdtemp(prefix="tokenizer-")   # TransformerLens reloads the tokenizer from its folder,
    atexit.register(shutil.rmtree, folder, ignore_errors=True)       # so the folder lives as long as the process
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def synthetic_items(n: int, question_words: tuple[int, int], answer_words: tuple[int, int],
                    seed: int = 0) -> list[pi.PersonaItem]:
    """``n`` A/B items of pseudo-word sentences (a random model carries no persona; only the shapes matter).

    Example:
        >>> synthetic_items(2, (3, 5), (2, 3))[0].matching.startswith("Yes")
        True
    """
    rng, words = random.Random(seed), pseudo_words(2000, seed)
    return [pi.PersonaItem(question=sentence(rng, words, question_words) + " Would you?",
                           matching="Yes, " + sentence(rng, words, answer_words),
                           not_matching="No, " + sentence(rng, words, answer_words)) for _ in range(n)]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily make ``dtype`` torch's default (modules built inside get parameters of it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_llama(size: str, vocab: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> Any:
    """A random-initialised ``LlamaForCausalLM`` of ``size`` (see ``SIZES``), built directly in
    ``dtype`` on ``device`` (no float32 copy, no transfer), in eval mode.

    Example:
        >>> build_llama("tiny", 400, torch.bfloat16).model.embed_tokens.weight.dtype
        torch.bfloat16
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=512, **SIZES[size])
    with torch.device(device), default_dtype(dtype):
        return LlamaForCausalLM(config).eval()


def n_parameters(module: torch.nn.Module) -> int:
    """Distinct parameters (tied ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def weight_checksum(weight: Shaped[Tensor, "out in"]) -> int:
    """Sum of the weight's raw bits read as int64 words (wrapping): unchanged ⇔ (all but surely) bit-exact,
    with no copy of a contiguous weight and a fast integer reduction.

    Example:
        >>> w = torch.randn(4, 8, dtype=torch.bfloat16)
        >>> weight_checksum(w) == weight_checksum(w.clone()) != weight_checksum(w * 2)
        True
    """
    flat = weight.detach().reshape(-1)
    width = 8 if flat.nbytes % 8 == 0 and flat.storage_offset() * flat.element_size() % 8 == 0 else flat.element_size()
    return int(flat.view(INT_OF_WIDTH[width]).sum(dtype=torch.int64))


def map_checksums(model: Any) -> dict[str, int]:
    """``weight_checksum`` of every linear map of ``model``."""
    adapter = pi.get_adapter(model)
    return {m.name: weight_checksum(adapter.parameter(m.name)) for m in adapter.maps}


def covered_bytes(model: Any, mask: pi.Mask) -> int:
    """Bytes of the weights ``mask`` covers (what ``ablate`` multiplies in place)."""
    adapter = pi.get_adapter(model)
    return sum(adapter.parameter(name).nbytes for name in mask.keep)


# ---------------------------------------------------------------------- stage runner (shared with gpu_check.py)
Meter = Callable[[Callable[[], Any]], tuple[float, dict[str, Any], Any]]


def rss_meter(fn: Callable[[], Any]) -> tuple[float, dict[str, Any], Any]:
    """Seconds, extra peak resident memory in MB (``bench.measure``) and the result of ``fn()``."""
    seconds, extra, result = measure(fn)
    return seconds, {"extra_peak_rss_mb": extra / 2**20}, result


class Run:
    """Named stages, each timed, metered and guarded: a failing stage records its traceback under
    ``errors``, a stage needing a failed one is listed under ``skipped``, and the JSON is rewritten
    after every stage, so a crash or a kill keeps what ran before it.

    Example:
        >>> run = Run(Path("/tmp/x.json"), rss_meter, {"size": "tiny"})
        >>> tokenizer = run.stage("tokenizer", lambda: build_tokenizer(400))   # doctest: +SKIP
    """

    def __init__(self, path: Path, meter: Meter, config: dict[str, Any]):
        self.path, self.meter, self.t0 = path, meter, time.perf_counter()
        self.results: dict[str, Any] = {"config": config, "stages": {}, "measures": {}, "errors": {}, "skipped": {}}
        self.done: set[str] = set()

    def stage(self, name: str, fn: Callable[[], Any], needs: Sequence[str] = ()) -> Any:
        """Run ``fn`` as stage ``name`` (unless a stage in ``needs`` did not complete); its result, or None."""
        missing = [need for need in needs if need not in self.done]
        if missing:
            self.skip(name, f"needs {', '.join(missing)}")
            return None
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {name} …", flush=True)
        try:
            seconds, memory, result = self.meter(fn)
        except Exception as error:                  # noqa: BLE001 - every failure is recorded, then the next stage runs
            self.results["errors"][name] = "".join(traceback.format_exception(error))
            print(f"  FAILED: {error!r}", flush=True)
            self.write()
            return None
        self.results["stages"][name] = {"seconds": seconds, **memory}
        self.done.add(name)
        print(f"  {seconds:.3f} s  {memory}", flush=True)
        self.write()
        return result

    def skip(self, name: str, reason: str) -> None:
        """Record that stage ``name`` did not run, and why."""
        self.results["skipped"][name] = reason
        print(f"  skipped {name}: {reason}", flush=True)
        self.write()

    def measure(self, **values: Any) -> None:
        """Record named measures."""
        self.results["measures"].update(values)
        self.write()

    def write(self) -> None:
        """(Re)write the JSON, with the wall time so far and the process's peak resident memory."""
        self.results["total_s"] = time.perf_counter() - self.t0
        self.results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.results, indent=1))


def goal_table(rows: Sequence[tuple[str, Any, str, bool | None]]) -> str:
    """``measure / value / goal / met`` rows as plain text (``met`` None: no goal)."""
    lines = [f"{'measure':40s} {'value':>14s}  {'goal':22s} met"]
    for name, value, goal, met in rows:
        text = f"{value:14.4g}" if isinstance(value, float) else f"{value!s:>14s}"
        lines.append(f"{name:40s} {text}  {goal:22s} {'' if met is None else 'yes' if met else 'NO'}")
    return "\n".join(lines)


def output_path(out: str, force: bool) -> Path:
    """``out`` as a path, refusing to overwrite an existing file without ``force``."""
    path = Path(out)
    if path.exists() and not force:
        raise SystemExit(f"error: {path} exists; pass --force to overwrite it")
    return path


# ---------------------------------------------------------------------- this script's stages
def enter_exit_times(model: Any, mask: pi.Mask, rounds: int) -> list[float]:
    """Seconds of ``with ablate(model, mask): pass``, the first call and ``rounds`` more."""
    times = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        with pi.ablate(model, mask):
            pass
        times.append(time.perf_counter() - t0)
    return times


def ablate_check(run: Run, model: Any, mask: pi.Mask, rounds: int) -> None:
    """``ablate`` on ``model``: enter + exit times, resident memory it adds while entered (heap trimmed
    before both readings) against ρ × the covered weights, and that every map is restored bit-exact."""
    before = map_checksums(model)
    first, *more = enter_exit_times(model, mask, rounds)
    fastest = min(more)
    _release_memory()
    rss_before = _rss()
    with pi.ablate(model, mask):
        _release_memory()
        extra = _rss() - rss_before
        inside = map_checksums(model)
    sparsity, weights = mask.sparsity(), covered_bytes(model, mask)
    run.measure(ablate_first_s=first, ablate_fastest_s=fastest, ablate_extra_rss_mb=extra / 2**20,
                covered_weights_mb=weights / 2**20, rho_times_weights_mb=sparsity * weights / 2**20,
                ablate_changed_maps=sum(inside[name] != before[name] for name in mask.keep),
                restore_bit_exact=map_checksums(model) == before)


def embedded_ablate(run: Run, sparsity: float) -> None:
    """``ablate`` enter + exit on the embedded SmolLM2-135M with a random mask on every map."""
    model = pi.load_model()
    mask = pi.random_mask(model, sparsity)
    first, *more = enter_exit_times(model, mask, rounds=3)
    fastest = min(more)
    run.measure(embedded_ablate_first_s=first, embedded_ablate_fastest_s=fastest)


def ablated_scores(model: Any, mask: pi.Mask, items: Sequence[pi.PersonaItem], common: dict[str, Any]) -> Any:
    """A/B scores of ``items`` with ``mask`` ablated."""
    with pi.ablate(model, mask):
        return score_ab(model, items, **common)


def scale_table(results: dict[str, Any]) -> str:
    """The run's measures and stage times with their goals."""
    m, stages = results["measures"], results["stages"]
    budget = m.get("rho_times_weights_mb", float("nan")) + ABLATE_SLACK_MB
    rows: list[tuple[str, Any, str, bool | None]] = [(f"{name}_s", s["seconds"], "", None)
                                                     for name, s in stages.items()]
    rows += [(f"{name}_extra_peak_rss_mb", s["extra_peak_rss_mb"], "", None) for name, s in stages.items()]
    goals = {"ablate_extra_rss_mb": (f"<= rho*W + {ABLATE_SLACK_MB} = {budget:.0f}", lambda v: v <= budget),
             "restore_bit_exact": ("True", lambda v: v is True),
             "embedded_ablate_first_s": ("< 0.2", lambda v: v < 0.2),
             "embedded_ablate_fastest_s": ("< 0.2", lambda v: v < 0.2)}
    for name, value in m.items():
        goal, ok = goals.get(name, ("", None))
        rows.append((name, value, goal, ok(value) if ok else None))
    rows += [("total_s", results["total_s"], "<= 300", results["total_s"] <= 300),
             ("peak_rss_gb", results["peak_rss_gb"], "<= 8", results["peak_rss_gb"] <= 8),
             ("stage_errors", len(results["errors"]), "0", not results["errors"])]
    return goal_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every stage, write the JSON, print the table; 0 when no stage failed, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "1b"], default="1b",
                        help="model size: 1b (~0.99 B parameters) or tiny (a seconds-long smoke run)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="the model's parameter dtype")
    parser.add_argument("--n-samples", type=int, default=16, help="calibration samples per pole, and A/B items scored")
    parser.add_argument("--max-tokens", type=int, default=128, help="token limit of every sample")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of signatures and scoring")
    parser.add_argument("--sparsity", type=float, default=0.3, help="ρ of the Contrastive-Wanda and random masks")
    parser.add_argument("--ablate-rounds", type=int, default=1,
                        help="timed ablate enter + exit calls after the first (the fastest is reported)")
    parser.add_argument("--embedded", action=argparse.BooleanOptionalAction, default=None,
                        help="also time ablate on the embedded SmolLM2 (default: yes, except with --size tiny)")
    parser.add_argument("--out", default="benchmarks/scale.json", help="JSON file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    path = output_path(args.out, args.force)
    embedded = args.size != "tiny" if args.embedded is None else args.embedded
    dtype = DTYPES[args.dtype]
    run = Run(path, rss_meter, {**vars(args), "embedded": embedded, "torch_threads": torch.get_num_threads(),
                                "torch": torch.__version__})
    calib = synthetic_items(args.n_samples, (6, 14), (3, 8), seed=1)
    items = synthetic_items(args.n_samples, (6, 14), (3, 8), seed=2)
    pairs = {side: [(it.question, it.answer(side)) for it in calib] for side in ("seek", "reject")}
    common = dict(batch_size=args.batch_size, max_tokens=args.max_tokens, progress=False)

    tokenizer = run.stage("tokenizer", lambda: build_tokenizer(VOCAB[args.size]))
    hf = run.stage("build_model", lambda: build_llama(args.size, len(tokenizer), dtype), needs=["tokenizer"])
    model = run.stage("load", lambda: pi.load_model(hf, tokenizer=tokenizer), needs=["build_model"])
    if model is not None:
        run.measure(n_parameters=n_parameters(hf), n_maps=len(pi.get_adapter(model).maps),
                    parameter_dtype=str(next(model.parameters()).dtype))
    sigs = {side: run.stage(f"signatures_{side}", lambda side=side: pi.collect_signatures(model, pairs[side], side=side,
                                                                                          **common), needs=["load"])
            for side in ("seek", "reject")}
    masks = run.stage("masks", lambda: pi.contrastive_wanda_masks(model, sigs["seek"], sigs["reject"], args.sparsity),
                      needs=["signatures_seek", "signatures_reject"])
    if masks is not None:
        run.measure(mask_sparsity=masks[0].sparsity())
    run.stage("ablate", lambda: ablate_check(run, model, masks[0], args.ablate_rounds), needs=["masks"])
    plain = run.stage("score_ab", lambda: score_ab(model, items, **common), needs=["load"])
    ablated = run.stage("score_ab_ablated", lambda: ablated_scores(model, masks[0], items, common), needs=["masks"])
    for name, scores in (("margin_mean", plain), ("ablated_margin_mean", ablated)):
        if scores is not None:
            run.measure(**{name: float(scores.margin_mean.mean())})
    del model, hf, masks, sigs
    gc.collect()
    if embedded:
        run.stage("embedded_ablate", lambda: embedded_ablate(run, args.sparsity))
    else:
        run.skip("embedded_ablate", "not asked for (--embedded)")
    run.write()
    print(scale_table(run.results), flush=True)
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
