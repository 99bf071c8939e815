"""Learned unit masks with a damage term (issue #35, idea 2; Bayazit et al., arXiv 2310.03084).

A sigmoid gate per unit (an MLP neuron: an input column of ``down``; an attention head: its ``d_head`` input
columns of ``o``) multiplies the unit's activation. For each pole the gates are trained on calibration pairs with

    loss = −margin toward the pole + λ·KL(base ‖ gated) on neutral texts + β·mean(1 − gate)

(the margin as ``score_ab``'s per-token ``margin_mean``, the KL per neutral token), started from the contrastive z
(a unit whose z points to the other pole starts lower), a few dozen Adam steps, batches in a seeded order:
deterministic on the CPU. The trained gate logits rank the units; at a sparsity the lowest are removed as whole
columns, so the result is a [`Mask`][persona_interp.masks.mask.Mask] pair like any other (a
[`MaskFamily`][persona_interp.masks.builders.MaskFamily]: every sparsity from one training).

Examples:
    >>> seek, reject = learned_masks(model, fit[:4], texts, sig_seek, sig_reject, 0.1, layers=[1], config=GateConfig(steps=2))
    >>> sorted(seek.keep), round(seek.sparsity(), 4)     # whole input columns: 5 of down's 48, 4 of o's 32
    (['blocks.1.attn.o', 'blocks.1.mlp.down'], 0.1125)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from persona_interp.data.files import read_header, write_tagged
from persona_interp.data.personas import SIDES, PersonaItem
from persona_interp.masks.builders import MaskFamily, check_contrast, check_sparsity, contrast, row_ranks, selected_maps
from persona_interp.masks.mask import Mask
from persona_interp.masks.objectives import ab_margins, frozen_weights, kl_from, neutral_logprobs, restore_grad
from persona_interp.model.adapter import LinearMap, get_adapter
from persona_interp.signatures import Signature

FORMAT = "persona_interp.learned_gates/1"

UNIT_KINDS = ("down", "o")       # the maps whose input columns are units: MLP neurons, attention heads


@dataclass
class GateConfig:
    """Options of the gate training (recorded in the masks' metadata).

    ``lam`` weighs the neutral KL, ``beta`` the share of gate mass removed, ``init_logit`` the starting logit
    (sigmoid 0.95 at 3), ``init_scale`` the contrastive z's pull on it."""

    steps: int = 40
    learning_rate: float = 0.1
    lam: float = 1.0
    beta: float = 0.05
    init_logit: float = 3.0
    init_scale: float = 0.1
    batch_size: int = 8
    max_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_tokens < 1:
            raise ValueError(f"steps, batch_size and max_tokens must be positive, got {self.steps}, {self.batch_size}, {self.max_tokens}")
        values = {name: getattr(self, name) for name in ("learning_rate", "lam", "beta", "init_logit", "init_scale")}
        bad = {name: v for name, v in values.items() if not (isinstance(v, (int, float)) and math.isfinite(v))
               or (name == "learning_rate" and v <= 0) or (name in ("lam", "beta", "init_scale") and v < 0)}
        if bad:
            raise ValueError(f"GateConfig: {bad} out of range (finite; learning_rate > 0; lam, beta, init_scale >= 0)")


@dataclass
class LearnedGates:
    """Trained gate logits per pole and map, one per input column ``[n_in]`` (a head's logit repeated over its
    ``d_head`` columns), and the loss of each step.

    Examples:
        >>> gates = train_gates(model, fit[:4], texts, sig_seek, sig_reject, layers=[1], config=GateConfig(steps=2))
        >>> seek, reject = gates.family(model).pair(0.1)
        >>> len(gates.losses["seek"]), gates.logits["seek"]["blocks.1.mlp.down"].shape
        (2, torch.Size([48]))
    """

    logits: dict[str, dict[str, Float[Tensor, " n_in"]]]
    losses: dict[str, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save as safetensors (the logits, float32, bit-exact; the losses and metadata as JSON); never overwrites
        unless ``overwrite=True``.

        Examples:
            >>> gates = train_gates(model, fit[:4], texts, sig_seek, sig_reject, layers=[1], config=GateConfig(steps=2))
            >>> again = LearnedGates.load(gates.save("gates.safetensors"))
            >>> again.logits["seek"]["blocks.1.mlp.down"].equal(gates.logits["seek"]["blocks.1.mlp.down"]), again.losses == gates.losses
            (True, True)
        """
        tensors = {f"{side}|{name}": logit.contiguous() for side, maps in self.logits.items() for name, logit in maps.items()}
        return write_tagged(path, tensors, FORMAT, {"losses": json.dumps(self.losses), "meta": json.dumps(self.meta)},
                            save_file, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LearnedGates:
        """Load gates saved by [`save`][persona_interp.masks.learned.LearnedGates.save] (no unpickling)."""
        header = read_header(path, FORMAT, "learned gates")
        logits: dict[str, dict[str, Tensor]] = {side: {} for side in SIDES}
        for key, logit in load_file(str(path)).items():
            side, name = key.split("|", 1)
            if side not in logits:
                raise ValueError(f"{path}: tensor {key!r} is of no pole ({list(SIDES)})")
            logits[side][name] = logit
        return cls(logits, json.loads(header["losses"]), json.loads(header["meta"]))

    def family(self, model: Any, cache: bool = False) -> MaskFamily:
        """The masks at any sparsity: each row of a map keeps its ``⌊n_in·(1−ρ)⌋`` highest-gate columns."""
        adapter = get_adapter(model)
        adapter.check_fingerprint(self.meta.get("fingerprint"), "learned gates were trained for")
        maps = [adapter.map_by_name[name] for name in self.logits["seek"]]

        def ranker(model: Any, name: str) -> tuple[Tensor, Tensor]:
            n_out = adapter.map_by_name[name].n_out
            seek, reject = (row_ranks(self.logits[side][name].double()[None, :].expand(n_out, -1).contiguous()) for side in SIDES)
            return seek, reject

        meta = {k: v for k, v in self.meta.items() if k != "fingerprint"}
        return MaskFamily(model, "learned_gates", maps, ranker, meta, cache=cache)


def _unit_maps(model: Any, modules: Iterable[str] | None, layers: Iterable[int] | None) -> list[LinearMap]:
    maps = [m for m in selected_maps(model, modules, layers) if m.kind in UNIT_KINDS]
    if not maps:
        raise ValueError(f"learned gates act on units, the input columns of {UNIT_KINDS}; modules={modules} layers={layers} select none")
    return maps


def _gate_hook(gate: Tensor, per_head: bool) -> Any:
    def hook(activation: Tensor, hook: Any) -> Tensor:
        g = torch.sigmoid(gate).to(device=activation.device, dtype=activation.dtype)
        if per_head:
            shaped = activation.reshape(*activation.shape[:2], g.shape[0], -1)
            return (shaped * g[:, None]).reshape(activation.shape)
        return activation * g
    return hook


def train_gates(model: Any, items: Sequence[PersonaItem], neutral_texts: Sequence[str], seek: Signature,
                reject: Signature, *, config: GateConfig | None = None, modules: Iterable[str] | None = None,
                layers: Iterable[int] | None = None, persona: str | None = None) -> LearnedGates:
    """Train one gate per unit of the selected ``down`` / ``o`` maps for each pole (see the module docstring).
    The model's weights are never changed; every parameter's ``requires_grad`` is restored.

    Examples:
        >>> gates = train_gates(model, fit[:4], texts, sig_seek, sig_reject, config=GateConfig(steps=2), modules=["mlp"])
        >>> sorted(gates.logits["reject"])
        ['blocks.0.mlp.down', 'blocks.1.mlp.down']
    """
    config = config or GateConfig()
    items, neutral_texts = list(items), list(neutral_texts)
    if not items or not neutral_texts:
        raise ValueError(f"learned gates need calibration items and neutral texts, got {len(items)} and {len(neutral_texts)}")
    check_contrast(seek, reject, 1e-8)
    adapter = get_adapter(model)
    maps = _unit_maps(model, modules, layers)
    for sig in (seek, reject):
        sig.check_model(adapter)
    z = {m.name: contrast(seek, reject, m.name).float() for m in maps}
    z = {m.name: (z[m.name].reshape(adapter.n_heads, -1).mean(1) if m.kind == "o" else z[m.name])
         .to(adapter.parameter(m.name).device) for m in maps}                # the gates live beside their weights
    with torch.inference_mode():
        base = [logprobs.half().cpu() for logprobs, _ in                   # as DamageReference keeps them
                neutral_logprobs(model, neutral_texts, config.batch_size, config.max_tokens)]
    logits: dict[str, dict[str, Tensor]] = {}
    losses: dict[str, list[float]] = {}
    states = frozen_weights(model)
    try:
        for sign, side in zip((1.0, -1.0), SIDES):
            gates = {m.name: (config.init_logit + config.init_scale * sign * z[m.name]).requires_grad_(True) for m in maps}
            hooks = [(m.site, _gate_hook(gates[m.name], m.kind == "o")) for m in maps]
            optimiser = torch.optim.Adam(list(gates.values()), lr=config.learning_rate)
            generator = torch.Generator().manual_seed(config.seed)
            order: list[int] = []
            losses[side] = []
            with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
                for step in range(config.steps):
                    if len(order) < config.batch_size:
                        order += torch.randperm(len(items), generator=generator).tolist()
                    batch, order = [items[i] for i in order[:config.batch_size]], order[config.batch_size:]
                    texts_at = (step % len(base)) * config.batch_size
                    texts = neutral_texts[texts_at:texts_at + config.batch_size]
                    gated, _ = next(neutral_logprobs(model, texts, config.batch_size, config.max_tokens))
                    removed = torch.cat([1 - torch.sigmoid(g) for g in gates.values()]).mean()
                    loss = (-sign * ab_margins(model, batch, config.max_tokens).mean().float()
                            + config.lam * kl_from(base[step % len(base)].to(gated.device).float(), gated) + config.beta * removed)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    losses[side].append(float(loss.detach()))
            logits[side] = {m.name: (gates[m.name].detach().repeat_interleave(m.n_in // gates[m.name].numel())).cpu()
                            for m in maps}
    finally:
        restore_grad(states)
    meta = {"fingerprint": adapter.fingerprint, "persona": persona or seek.meta.get("dataset"), "statistic": seek.statistic,
            "n_items": len(items), "n_neutral": len(neutral_texts), **{f"gate_{k}": v for k, v in vars(config).items()}}
    return LearnedGates(logits, losses, meta)


def learned_masks(model: Any, items: Sequence[PersonaItem], neutral_texts: Sequence[str], seek: Signature,
                  reject: Signature, sparsity: float, **options: Any) -> tuple[Mask, Mask]:
    """Learned unit masks: [`train_gates`][persona_interp.masks.learned.train_gates] (options: ``config``,
    ``modules``, ``layers``, ``persona``), then each pole removes, per selected ``down`` / ``o`` map, the
    ``n_in − ⌊n_in·(1−ρ)⌋`` input columns with the lowest gates.

    Examples:
        >>> seek, reject = learned_masks(model, fit[:4], texts, sig_seek, sig_reject, 0.1, modules=["mlp"], layers=[1],
        ...                              config=GateConfig(steps=2))
        >>> seek.meta["method"], seek.sparsity()           # 5 of the 48 neurons: ⌊48·0.9⌋ = 43 kept
        ('learned_gates', 0.1041...)
    """
    check_sparsity(sparsity)
    return train_gates(model, items, neutral_texts, seek, reject, **options).family(model).pair(
        sparsity, modules=options.get("modules"), layers=options.get("layers"))
