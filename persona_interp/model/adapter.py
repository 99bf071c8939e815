"""The one place that knows model internals.

Every other module sees a model through [`ModelAdapter`][persona_interp.model.adapter.ModelAdapter]: the linear maps
of each block (q, k, v, o, gate, up, down) with their weights viewed as ``[out, in]``, the hook that carries each
map's input, the MLP-neuron hook and the per-head hook. Two model kinds are supported:
``TransformerBridge`` (TransformerLens 3.x / 4.x, raw HF weights, including GPT-2's Conv1D stored
``[in, out]`` and its fused qkv) and ``HookedTransformer`` (TransformerLens <= 3.x, per-head weights).

Examples:
    >>> adapter = get_adapter(model)
    >>> [m.name for m in adapter.maps][:3]
    ['blocks.0.attn.q', 'blocks.0.attn.k', 'blocks.0.attn.v']
"""
from __future__ import annotations

import hashlib
import json
import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

ATTN_KINDS = ("q", "k", "v", "o")
MLP_KINDS = ("gate", "up", "down")
MODULE_OF_KIND = {**{k: "attn" for k in ATTN_KINDS}, **{k: "mlp" for k in MLP_KINDS}}


def map_name(layer: int, kind: str) -> str:
    """The project's name of one linear map, ``blocks.{layer}.{module}.{kind}`` (the same for every architecture).

    Examples:
        >>> map_name(3, "down")
        'blocks.3.mlp.down'
    """
    if kind not in MODULE_OF_KIND:
        raise ValueError(f"unknown linear map kind {kind!r}; known: {', '.join(MODULE_OF_KIND)}")
    return f"blocks.{int(layer)}.{MODULE_OF_KIND[kind]}.{kind}"


def parse_map_name(name: str) -> tuple[int, str, str]:
    """``(layer, module, kind)`` of a map name written by [`map_name`][persona_interp.model.adapter.map_name].

    Examples:
        >>> parse_map_name("blocks.3.mlp.down")
        (3, 'mlp', 'down')
    """
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blocks" or not parts[1].isdigit() or MODULE_OF_KIND.get(parts[3]) != parts[2]:
        raise ValueError(f"not a linear map name: {name!r} (expected blocks.LAYER.attn.q|k|v|o or blocks.LAYER.mlp.gate|up|down)")
    return int(parts[1]), parts[2], parts[3]


@dataclass(frozen=True)
class LinearMap:
    """One linear map of a block: ``name`` is ``blocks.{layer}.{module}.{kind}``; ``site`` is the hook
    carrying its input (``[batch, pos, n_in]``, or ``[batch, pos, heads, d_head]`` for o)."""

    name: str
    layer: int
    module: str
    kind: str
    site: str
    n_out: int
    n_in: int


@dataclass
class _Access:
    parameter: Callable[[], Tensor]
    to_out_in: Callable[[Tensor], Tensor]
    to_native: Callable[[Tensor], Tensor]
    bias: Callable[[], Tensor | None] = lambda: None


def _identity(x: Tensor) -> Tensor:
    return x


def _transpose(x: Tensor) -> Tensor:
    return x.T


SAMPLE_PER_MAP = 512          # entries of each weight whose sign bits the fingerprint hashes


def _sign_bits(weight: Tensor, n: int) -> bytes:
    """The sign bits of ``n`` evenly spaced entries of ``weight`` (flattened in its own layout), packed."""
    flat = weight.detach().reshape(-1)
    signs = torch.signbit(flat[:: max(1, flat.numel() // n)][:n]).cpu().numpy()
    return np.packbits(signs).tobytes()


class ModelAdapter:
    """Model-specific knowledge for one TransformerLens model (build it with
    [`get_adapter`][persona_interp.model.adapter.get_adapter])."""

    def __init__(self, model: Any):
        self.model = model
        cfg = model.cfg
        self.kind = "hooked" if type(model).__name__ == "HookedTransformer" else "bridge"
        self.n_layers: int = cfg.n_layers
        self.n_heads: int = cfg.n_heads
        self.d_head: int = cfg.d_head
        self.d_model: int = cfg.d_model
        self.d_mlp: int = cfg.d_mlp
        self.n_kv_heads: int = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        self._access: dict[str, _Access] = {}
        self._parameter_names: dict[int, str] | None = None
        self.maps: list[LinearMap] = []
        for layer in range(self.n_layers):
            block = model.blocks[layer]
            found = self._hooked_block(block, layer) if self.kind == "hooked" else self._bridge_block(block, layer)
            for kind, access in found:
                name = map_name(layer, kind)
                n_out, n_in = access.to_out_in(access.parameter()).shape
                self._access[name] = access
                self.maps.append(LinearMap(name, layer, MODULE_OF_KIND[kind], kind, self._site(layer, kind), n_out, n_in))
        self.map_by_name = {m.name: m for m in self.maps}
        self._legacy: set[str] | None = None
        self.fingerprint = self._fingerprint()

    # ----------------------------------------------------------------- hooks
    def _site(self, layer: int, kind: str) -> str:
        if kind in ("q", "k", "v"):
            return f"blocks.{layer}.ln1.hook_normalized" if self.kind == "hooked" else f"blocks.{layer}.attn.q.hook_in"
        if kind == "o":
            return self.head_hook(layer)
        if kind in ("gate", "up"):
            return f"blocks.{layer}.ln2.hook_normalized" if self.kind == "hooked" else f"blocks.{layer}.mlp.in.hook_in"
        return self.neuron_hook(layer)

    def neuron_hook(self, layer: int) -> str:
        """Hook of the MLP hidden activation ``[batch, pos, d_mlp]`` (the input of ``down``)."""
        return f"blocks.{layer}.mlp.hook_post"

    def head_hook(self, layer: int) -> str:
        """Hook of the per-head attention output ``z``: ``[batch, pos, n_heads, d_head]``."""
        return f"blocks.{layer}.attn.hook_z"

    def pattern_hook(self, layer: int) -> str:
        """Hook of the attention pattern ``[batch, heads, query, key]``."""
        return f"blocks.{layer}.attn.hook_pattern"

    final_residual_hook = "ln_final.hook_normalized"

    @property
    def accepts_packed_options(self) -> bool:
        """Whether the forward takes a 4-D boolean ``attention_mask`` and ``position_ids`` (the bridge
        hands them to a transformers model), so both A/B options can share one prompt; HookedTransformer
        and natively booted bridges cannot."""
        from transformers import PreTrainedModel

        return self.kind == "bridge" and isinstance(getattr(self.model, "original_model", None), PreTrainedModel)

    def output_hook(self, name: str) -> str:
        """Hook of map ``name``'s output ``[batch, pos, n_out]`` (a bridge's linear submodule's ``hook_out``), where
        a constant can be added to the map's output (mean ablation). HookedTransformer's per-head maps have none."""
        self._get(name)                                               # a clear error for an unknown map
        spec = self.map_by_name[name]
        if self.kind != "bridge":
            raise ValueError(f"{name}: map output hooks are known for TransformerBridge models only, not {type(self.model).__name__}")
        return f"blocks.{spec.layer}.{spec.module}.{ {'up': 'in', 'down': 'out'}.get(spec.kind, spec.kind)}.hook_out"

    def residual_hook(self, layer: int) -> str:
        """Hook of the residual stream entering block ``layer`` (``[batch, pos, d_model]``)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {self.n_layers} layers")
        return f"blocks.{layer}.hook_resid_pre"

    def unembed(self, residual: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from final normalised residuals (any leading shape), so callers can unembed only
        the positions they need."""
        shape = residual.shape
        weight = next(self.model.unembed.parameters())                  # on the last shard under a device_map
        x = residual.reshape(1, -1, shape[-1]).to(device=weight.device, dtype=weight.dtype)   # norms may upcast
        logits = self.model.unembed(x).reshape(*shape[:-1], -1)
        cap = getattr(self.model.cfg, "output_logits_soft_cap", 0.0) or 0.0
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    @property
    def input_sites(self) -> list[str]:
        """Distinct input hooks in forward order (q, k and v share one, so do gate and up)."""
        return list(dict.fromkeys(m.site for m in self.maps))

    # --------------------------------------------------------------- weights
    def weight(self, name: str) -> Float[Tensor, "out in"]:
        """The weight of map ``name`` as ``[out, in]`` (a view where the layout allows)."""
        access = self._get(name)
        return access.to_out_in(access.parameter().detach())

    def parameter(self, name: str) -> Tensor:
        """The stored parameter behind map ``name``, in the model's own layout."""
        return self._get(name).parameter()

    def parameter_name(self, name: str) -> str:
        """Qualified name (as in ``model.named_parameters()``) of the parameter behind map ``name``,
        for ``torch.func.functional_call``."""
        if self._parameter_names is None:
            self._parameter_names = {id(p): n for n, p in self.model.named_parameters()}
        return self._parameter_names[id(self.parameter(name))]

    def bias(self, name: str) -> Float[Tensor, " out"] | None:
        """The bias parameter added to map ``name``'s output (``[out]``, edited in place by weight edits), or
        ``None`` where the map has none (Llama-style models; GPT-2's Conv1D maps have one).

        Examples:
            >>> adapter.bias("blocks.0.mlp.down") is None     # a Llama's; GPT-2's is [d_model]
            True
        """
        return self._get(name).bias()
    def to_out_in(self, name: str, x: Tensor) -> Float[Tensor, "out in"]:
        """Convert a tensor in the parameter's own layout (its gradient, say) to the map's ``[out, in]`` view."""
        return self._get(name).to_out_in(x)

    def to_native(self, name: str, x: Shaped[Tensor, "out in"]) -> Tensor:
        """Convert an ``[out, in]`` tensor (a mask, a weight) to the parameter's own layout."""
        return self._get(name).to_native(x)

    def _get(self, name: str) -> _Access:
        if name not in self._access:
            raise KeyError(f"model has no linear map {name!r}; it has e.g. {self.maps[0].name!r}")
        return self._access[name]

    # ------------------------------------------------------------ per model kind
    @staticmethod
    def _bridge_block(block: Any, layer: int) -> list[tuple[str, _Access]]:
        from transformers.pytorch_utils import Conv1D

        found = []
        subs = [("q", block.attn, "q"), ("k", block.attn, "k"), ("v", block.attn, "v"), ("o", block.attn, "o"),
                ("gate", block.mlp, "gate"), ("up", block.mlp, "in"), ("down", block.mlp, "out")]
        for kind, parent, attr in subs:
            sub = getattr(parent, attr, None) if attr in parent._modules else None
            if sub is None:
                if kind == "gate":
                    continue  # ungated MLP (GPT-2)
                raise ValueError(f"blocks.{layer}: the bridge has no '{attr}' linear map; this architecture is not supported")
            module = sub.original_component
            conv = isinstance(module, Conv1D)
            found.append((kind, _Access(
                parameter=partial(getattr, module, "weight"),
                to_out_in=_transpose if conv else _identity,
                to_native=_transpose if conv else _identity,
                bias=partial(getattr, module, "bias", None),
            )))
        return found

    def _hooked_block(self, block: Any, layer: int) -> list[tuple[str, _Access]]:
        norm = getattr(block.cfg, "normalization_type", None)
        if norm not in (None, "LNPre", "RMSPre"):
            raise ValueError(
                f"HookedTransformer with normalization_type={norm!r}: the inputs of q/k/v and gate/up are only "
                "available as hooks when the norm weights are folded; load it with fold_ln=True"
            )
        attn, mlp = block.attn, block.mlp

        def per_head_in(get: Callable[[], Tensor]) -> _Access:  # [heads, d_model, d_head] -> [heads*d_head, d_model]
            return _Access(
                parameter=get,
                to_out_in=lambda w: w.permute(0, 2, 1).reshape(-1, w.shape[1]),
                to_native=lambda x: x.reshape(get().shape[0], get().shape[2], get().shape[1]).permute(0, 2, 1),
            )

        def kv(which: str) -> Callable[[], Tensor]:
            return lambda: getattr(attn, f"_W_{which}") if hasattr(attn, f"_W_{which}") else getattr(attn, f"W_{which}")

        found = [
            ("q", per_head_in(lambda: attn.W_Q)),
            ("k", per_head_in(kv("K"))),
            ("v", per_head_in(kv("V"))),
            ("o", _Access(  # [heads, d_head, d_model] -> [d_model, heads*d_head]
                parameter=lambda: attn.W_O,
                to_out_in=lambda w: w.reshape(-1, w.shape[-1]).T,
                to_native=lambda x: x.T.reshape(attn.W_O.shape),
                bias=lambda: getattr(attn, "b_O", None),
            )),
        ]
        if getattr(mlp, "W_gate", None) is not None:
            found.append(("gate", _Access(lambda: mlp.W_gate, _transpose, _transpose)))
        found += [("up", _Access(lambda: mlp.W_in, _transpose, _transpose)),
                  ("down", _Access(lambda: mlp.W_out, _transpose, _transpose, lambda: getattr(mlp, "b_out", None)))]
        return found

    # ------------------------------------------------------------ identity
    def _fingerprint(self) -> str:
        """Architecture, shapes and the sign bits of a fixed sample of the token embedding and of **every linear
        map's** weight ([`SAMPLE_PER_MAP`][persona_interp.model.adapter.SAMPLE_PER_MAP] evenly spaced entries of each,
        in the weight's own layout), hashed: a fine-tune or a merged LoRA that leaves the embedding alone still
        changes the signs of some sampled entries of the maps it touched.

        Sign bits survive casting to any floating-point format and moving to any device (rounding keeps the sign,
        also of a tiny value that rounds to ±0), so the same weights give the same fingerprint in float32,
        bfloat16 or float16, on the CPU or a GPU. Cost: one strided slice per map, read once per model
        ([`get_adapter`][persona_interp.model.adapter.get_adapter] caches the adapter)."""
        weights = [self.model.W_E] + [self._access[m.name].parameter() for m in self.maps]
        return self._digest(b"".join(_sign_bits(w, SAMPLE_PER_MAP) for w in weights))

    def _embedding_sample(self) -> Float[Tensor, " sample"]:
        """Every k-th entry of the token embedding (about 4096 of them), in its own dtype and device: what the
        legacy fingerprints hashed."""
        embedding = self.model.W_E.detach().flatten()
        return embedding[:: max(1, embedding.numel() // 4096)]

    def _digest(self, weights: bytes) -> str:
        desc = {
            "class": type(self.model).__name__,
            "arch": str(getattr(self.model.cfg, "architecture", None) or getattr(self.model.cfg, "original_architecture", None)),
            "dims": [self.n_layers, self.n_heads, self.n_kv_heads, self.d_head, self.d_model, self.d_mlp],
            "maps": [(m.name, m.n_out, m.n_in) for m in self.maps],
        }
        digest = hashlib.sha256(json.dumps(desc).encode())
        digest.update(weights)
        return digest.hexdigest()[:16]

    @property
    def legacy_fingerprints(self) -> set[str]:
        """Fingerprints files saved by earlier versions carry for this model, still accepted (with a warning):
        the sign bits of the token embedding only (which a fine-tune of the other weights kept), and for a
        float32 model the older hash of the float32 embedding sample."""
        if self._legacy is None:
            sample = self._embedding_sample()
            signs = torch.signbit(sample).cpu()
            legacy = {self._digest(bytes(signs.to(torch.uint8).tolist()))}
            if sample.dtype == torch.float32:
                legacy.add(self._digest(sample.cpu().numpy().tobytes()))
            self._legacy = legacy
        return self._legacy

    @property
    def accepted_fingerprints(self) -> set[str]:
        """This model's fingerprint and the
        [`legacy_fingerprints`][persona_interp.model.adapter.ModelAdapter.legacy_fingerprints] of files saved
        before."""
        return {self.fingerprint} | self.legacy_fingerprints

    def check_fits(self, fingerprint: str | None, what: str, shapes: dict[str, tuple[int | None, ...]]) -> None:
        """The one model check of every saved or built object (masks, signatures, LoRAs): its ``fingerprint``
        must be this model's ([`check_fingerprint`][persona_interp.model.adapter.ModelAdapter.check_fingerprint]) and
        every map in ``shapes`` must exist here with that ``(n_out, n_in)`` (``n_out`` None: not recorded; any other
        rank is a mismatch). ``what`` names the object, e.g. ``"mask 'wanda'"``.

        Examples:
            >>> adapter.check_fits(mask.meta.get("fingerprint"), "mask", {"blocks.0.mlp.down": (32, 47)})
            Traceback (most recent call last):
            persona_interp.model.adapter.ModelMismatchError: mask: blocks.0.mlp.down has shape (32, 47), the model's weight is (32, 48)
        """
        self.check_fingerprint(fingerprint, f"{what} was built for")
        for name, shape in shapes.items():
            if name not in self.map_by_name:
                raise ModelMismatchError(f"{what} has map {name!r}, which the model lacks")
            spec = self.map_by_name[name]
            if len(shape) != 2 or shape[1] != spec.n_in or shape[0] not in (None, spec.n_out):
                shown = f"n_in {shape[1]}" if len(shape) == 2 and shape[0] is None else shape
                raise ModelMismatchError(f"{what}: {name} has shape {shown}, the model's weight is {(spec.n_out, spec.n_in)}")

    def check_fingerprint(self, fingerprint: str | None, what: str) -> None:
        """Raise [`ModelMismatchError`][persona_interp.model.adapter.ModelMismatchError] unless ``fingerprint`` (of a
        saved mask, signature or LoRA) is this model's; ``None`` (a hand-made object) is accepted. ``what`` says what
        and how, e.g. ``"mask 'wanda' was built for"``."""
        if fingerprint is None or fingerprint == self.fingerprint:
            return
        if fingerprint in self.legacy_fingerprints:
            warnings.warn(f"{what} a model with the legacy fingerprint {fingerprint} (token embedding only, which "
                          "a fine-tune that leaves the embedding alone shares with its base): accepted; save the file "
                          f"again to record this model's fingerprint {self.fingerprint}", stacklevel=3)
            return
        raise ModelMismatchError(
            f"{what} model {fingerprint}, not for this one ({self.fingerprint}: "
            f"{self.n_layers} layers, d_model {self.d_model}, {self.dtype}). Fingerprints hash the architecture and "
            "the weights, not the dtype or device; a file saved before that rule from a float32 model loads only on a "
            "float32 model: load it there and save it again")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the linear maps' weights."""
        return self.parameter(self.maps[0].name).dtype

    @property
    def device_map(self) -> dict[str, str] | None:
        """accelerate's ``{module: device}`` map of a model sharded with ``device_map``; None for a model on one device."""
        placed = getattr(getattr(self.model, "original_model", None), "hf_device_map", None)
        return {name: str(device) for name, device in placed.items()} if placed else None

    @property
    def input_device(self) -> torch.device:
        """Where token ids go in: the device of the token embedding (the first shard under a ``device_map``)."""
        return self.model.W_E.device

    def next_logits(self, sequence: Int[Tensor, "batch pos"], cache: Any = None) -> tuple[Float[Tensor, "batch vocab"], Any]:
        """Logits after the last token of ``sequence``, and the state to pass with the next, longer sequence.
        Only the tokens the state has not seen run, through the model's own KV cache (Hugging Face's under a
        TransformerBridge, TransformerLens' for a HookedTransformer); a model without one (a TL-native bridge)
        reruns the whole sequence. Hooks and weight edits act on the new positions as in a full forward.

        Examples:
            >>> logits, state = adapter.next_logits(tokens[:, :4])                 # the prompt once
            >>> logits, state = adapter.next_logits(tokens[:, :5], state)          # then only the new token runs
            >>> torch.allclose(logits, model(tokens[:, :5])[:, -1], atol=1e-5)
            True
        """
        past, seen = cache if cache is not None else (None, 0)
        new = sequence[:, seen:]
        if self.kind == "hooked":
            if past is None:
                try:                                                   # TransformerLens 3.x, then 2.x
                    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as KVCache
                except ImportError:
                    from transformer_lens.past_key_value_caching import (  # type: ignore[import-not-found, no-redef]  # 2.x only
                        HookedTransformerKeyValueCache as KVCache)
                past = KVCache.init_cache(self.model.cfg, self.model.cfg.device, sequence.shape[0])
            return self.model(new, past_kv_cache=past)[:, -1], (past, sequence.shape[1])
        hooks = [block.attn.register_forward_pre_hook(_cache_alias, with_kwargs=True) for block in self.model.blocks]
        try:
            extra = {"past_key_values": past} if past is not None else {"use_cache": True}
            logits, past = self.model(new, return_type="logits_and_cache", **extra)
        finally:
            for hook in hooks:
                hook.remove()
        return logits[:, -1], ((past, sequence.shape[1]) if past is not None else None)

    def select_maps(self, modules: tuple[str, ...] | list[str] | None = None,
                    layers: tuple[int, ...] | list[int] | range | None = None) -> list[LinearMap]:
        """Maps filtered by module type (``attn``/``mlp``), kind (``q``…``down``) or full name, and layer.

        Examples:
            >>> [m.name for m in adapter.select_maps(modules=["mlp"], layers=range(1, 2))]
            ['blocks.1.mlp.gate', 'blocks.1.mlp.up', 'blocks.1.mlp.down']
        """
        known = {"attn", "mlp", *MODULE_OF_KIND, *self.map_by_name}
        for item in modules or ():
            if item not in known:
                raise ValueError(f"unknown module {item!r}: use 'attn', 'mlp', one of {sorted(MODULE_OF_KIND)} or a map name")
        for layer in layers or ():
            if not 0 <= layer < self.n_layers:
                raise ValueError(f"layer {layer} out of range: the model has {self.n_layers} layers")
        return [m for m in self.maps
                if (modules is None or m.module in modules or m.kind in modules or m.name in modules)
                and (layers is None or m.layer in layers)]


def _cache_alias(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Hand a bridge attention the KV cache under the name it reads: transformers >= 5.2x passes ``cache=``,
    TransformerLens 4.3's attention components read ``past_key_values`` and would attend to the new tokens alone."""
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


class ModelMismatchError(ValueError):
    """A signature, mask or LoRA was built for a different model."""


_ADAPTERS: "weakref.WeakKeyDictionary[Any, ModelAdapter]" = weakref.WeakKeyDictionary()


def get_adapter(model: Any) -> ModelAdapter:
    """The (cached) adapter of a TransformerLens model.

    Examples:
        >>> get_adapter(model).weight("blocks.0.mlp.down").shape   # [d_model, d_mlp]
        torch.Size([32, 48])
    """
    if isinstance(model, ModelAdapter):
        return model
    if not hasattr(model, "run_with_hooks") or not hasattr(model, "blocks"):
        raise TypeError(f"expected a TransformerLens model (TransformerBridge or HookedTransformer), got {type(model).__name__}")
    if model not in _ADAPTERS:
        _ADAPTERS[model] = ModelAdapter(model)
    return _ADAPTERS[model]
