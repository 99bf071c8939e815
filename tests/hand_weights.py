"""Independent, hand-written access to each test architecture's weights as [out, in].

The adapter must agree with these; they are written from each architecture's own parameter
names and layouts, not through the adapter.
"""
from __future__ import annotations

import einops
import torch


def hand_weight(model, kind: str, layer: int, map_kind: str) -> torch.Tensor:
    """A view (or, for per-head HookedTransformer weights, a rearranged copy) of one map as [out, in]."""
    if kind in ("hooked_gated", "hooked_gpt2"):
        attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
        if map_kind in ("q", "k", "v"):
            w = {"q": attn.W_Q, "k": getattr(attn, "_W_K", attn.W_K), "v": getattr(attn, "_W_V", attn.W_V)}[map_kind]
            return einops.rearrange(w, "h m d -> (h d) m")
        if map_kind == "o":
            return einops.rearrange(attn.W_O, "h d m -> m (h d)")
        return {"gate": mlp.W_gate if map_kind == "gate" else None, "up": mlp.W_in, "down": mlp.W_out}[map_kind].T
    hf = model.original_model if kind != "native" else model
    if kind == "gpt2":
        block = hf.transformer.h[layer]
        d = block.attn.c_attn.weight.shape[0]
        if map_kind in ("q", "k", "v"):
            i = "qkv".index(map_kind)
            return block.attn.c_attn.weight[:, i * d:(i + 1) * d].T
        return {"o": block.attn.c_proj.weight, "up": block.mlp.c_fc.weight, "down": block.mlp.c_proj.weight}[map_kind].T
    if kind == "native":
        block = model.blocks[layer]
        sub = {"q": block.attn.q, "k": block.attn.k, "v": block.attn.v, "o": block.attn.o,
               "gate": block.mlp.gate, "up": getattr(block.mlp, "in"), "down": block.mlp.out}[map_kind]
        return sub.original_component.weight
    layer_module = hf.model.layers[layer]
    return {"q": layer_module.self_attn.q_proj, "k": layer_module.self_attn.k_proj, "v": layer_module.self_attn.v_proj,
            "o": layer_module.self_attn.o_proj, "gate": layer_module.mlp.gate_proj, "up": layer_module.mlp.up_proj,
            "down": layer_module.mlp.down_proj}[map_kind].weight


def multiply_by_hand(model, kind: str, name: str, factor: torch.Tensor) -> None:
    """Multiply map ``name`` of ``model`` by an [out, in] factor, in place, without the adapter."""
    _, layer, _, map_kind = name.split(".")
    with torch.no_grad():
        if kind in ("hooked_gated", "hooked_gpt2"):
            attn, mlp = model.blocks[int(layer)].attn, model.blocks[int(layer)].mlp
            if map_kind in ("q", "k", "v"):
                w = {"q": attn.W_Q, "k": getattr(attn, "_W_K", attn.W_K), "v": getattr(attn, "_W_V", attn.W_V)}[map_kind]
                w.mul_(einops.rearrange(factor, "(h d) m -> h m d", h=w.shape[0]))
            elif map_kind == "o":
                attn.W_O.mul_(einops.rearrange(factor, "m (h d) -> h d m", h=attn.W_O.shape[0]))
            else:
                {"gate": getattr(mlp, "W_gate", None), "up": mlp.W_in, "down": mlp.W_out}[map_kind].mul_(factor.T)
        else:
            hand_weight(model, kind, int(layer), map_kind).mul_(factor)
