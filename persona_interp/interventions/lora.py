"""LoRA fine-tuning regime (the paper's SFT row): low-rank updates ``ΔW = (α/r)·B·A`` on the model's
linear maps, trained on one pole's calibration answers, applied at run time like a mask.

The update is peft's default LoRA (A Kaiming-uniform, B zero, scaling α/r; a test checks it against
peft on the same transformers model). It is trained here, through the model adapter and
``torch.func.functional_call`` on the TransformerLens model itself, rather than by peft's module
surgery: peft rewrites the wrapped transformers modules, which a TransformerBridge that split GPT-2's
fused q/k/v does not run and a HookedTransformer does not have, so the same code now fine-tunes every
model the rest of the toolkit supports, on exactly the maps a mask would cover.

Examples:
    >>> lora = train_lora(model, fit[:4], side="seek", config=LoRAConfig(epochs=1, rank=2), progress=False)
    >>> with lora.apply(model):                  # weights + ΔW inside, restored bit-exact on exit
    ...     scores = score_ab(model, test, progress=False)
    >>> LoRA.load(lora.save("power_seek.lora.safetensors")).delta("blocks.0.mlp.down").shape     # [out, in]
    torch.Size([32, 48])
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Literal, Sequence, overload

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from persona_interp.data.files import read_header, write_tagged
from persona_interp.data.personas import PersonaItem, Side, check_side
from persona_interp.interventions.base import edit_weights
from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import encode_batch, token_budget
from persona_interp.progress import stage

FORMAT = "persona_interp.interventions.lora/1"


@dataclass
class LoRAConfig:
    """Rank, scaling, targets and the training schedule. ``modules``/``layers`` select maps like the
    mask builders (default: every linear map)."""

    rank: int = 8
    alpha: float = 16.0
    modules: list[str] | None = None
    layers: list[int] | None = None
    epochs: int = 2
    learning_rate: float = 5e-4
    batch_size: int = 8
    max_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"rank, epochs and batch_size must be positive, got {self.rank}, {self.epochs}, {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass
class LoRA:
    """Trained factors per map, ``A`` ``[r, in]`` and ``B`` ``[out, r]`` in the ``[out, in]`` view."""

    A: dict[str, Float[Tensor, "r n_in"]]
    B: dict[str, Float[Tensor, "n_out r"]]
    scaling: float
    meta: dict[str, Any] = field(default_factory=dict)

    def delta(self, name: str, device: torch.device | str | None = None) -> Float[Tensor, "out in"]:
        """``ΔW = scaling·B·A`` of one map, ``[out, in]``, computed on ``device`` (default: the factors')."""
        return self.scaling * (self.B[name].to(device) @ self.A[name].to(device))

    def check_model(self, model: Any) -> None:
        """Raise [`ModelMismatchError`][persona_interp.model.adapter.ModelMismatchError] unless this LoRA fits
        ``model`` (fingerprint, maps, shapes)."""
        get_adapter(model).check_fits(self.meta.get("fingerprint"), "LoRA",
                                      {name: (self.B[name].shape[0], self.A[name].shape[1]) for name in self.A})

    def apply(self, model: Any) -> ContextManager[Any]:
        """Context manager: every covered weight is ``W + ΔW`` inside; restored bit-exact on exit (also on
        exception). Nests with masks and other LoRAs on other maps; one map edited twice raises ``RuntimeError``."""
        self.check_model(model)
        adapter = get_adapter(model)

        def edit(name: str, parameter: Tensor) -> Tensor:
            original = parameter.detach().clone()
            parameter.add_(adapter.to_native(name, self.delta(name, parameter.device)).to(parameter.dtype))
            return original

        def restore(name: str, parameter: Tensor, original: Tensor) -> None:
            parameter.copy_(original)

        return edit_weights(model, self.A, edit, restore, "LoRA")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save as safetensors (factors + JSON metadata); never overwrites unless ``overwrite=True``."""
        tensors = {**{f"A|{n}": a.contiguous() for n, a in self.A.items()}, **{f"B|{n}": b.contiguous() for n, b in self.B.items()}}
        return write_tagged(path, tensors, FORMAT, {"scaling": repr(self.scaling), "meta": json.dumps(self.meta)}, save_file, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LoRA":
        """Load a LoRA saved by [`save`][persona_interp.interventions.lora.LoRA.save] (no unpickling)."""
        header = read_header(path, FORMAT, "LoRA")
        tensors = load_file(str(path))
        A = {k.split("|", 1)[1]: v for k, v in tensors.items() if k.startswith("A|")}
        B = {k.split("|", 1)[1]: v for k, v in tensors.items() if k.startswith("B|")}
        return cls(A, B, float(header["scaling"]), json.loads(header["meta"]))


def init_factors(model: Any, config: LoRAConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """peft's default initialisation: ``A`` Kaiming-uniform (a = √5, as ``nn.Linear``), ``B`` zero."""
    maps = get_adapter(model).select_maps(config.modules, config.layers)
    if not maps:
        raise ValueError(f"no linear maps match modules={config.modules} layers={config.layers}")
    adapter = get_adapter(model)
    generator = torch.Generator().manual_seed(config.seed)            # drawn on the CPU: the same factors on any device
    A, B = {}, {}
    for m in maps:
        bound = math.sqrt(6.0 / ((1 + 5.0) * m.n_in))                 # kaiming_uniform_(a=√5): gain² = 2/(1+a²)
        device = adapter.parameter(m.name).device
        A[m.name] = ((torch.rand(config.rank, m.n_in, generator=generator) * 2 - 1) * bound).to(device)
        B[m.name] = torch.zeros(m.n_out, config.rank, device=device)
    return A, B


def answer_loss(model: Any, tokens: Tensor, targets: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    """Mean cross-entropy of the answer tokens (``targets`` is −100 elsewhere), optionally with
    some parameters replaced (``functional_call``)."""
    # tie_weights=False: with True, torch 2.13 leaves the replacement in place on a TransformerBridge, whose
    # parameters are reachable under two paths; nothing LoRA touches is tied (embeddings are never targets)
    tokens = tokens.to(get_adapter(model).input_device)
    logits = torch.func.functional_call(model, params, (tokens,), tie_weights=False) if params else model(tokens)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten().to(logits.device), ignore_index=-100)


def _targets(batch: Any) -> Tensor:
    return torch.where(batch.token_mask("answer"), batch.tokens, torch.full_like(batch.tokens, -100))


@overload
def train_lora(model: Any, items: Sequence[PersonaItem], side: Side, config: LoRAConfig | None = None, *,
               snapshots: Literal[False] = False, progress: bool = True) -> LoRA: ...
@overload
def train_lora(model: Any, items: Sequence[PersonaItem], side: Side, config: LoRAConfig | None = None, *,
               snapshots: Literal[True], progress: bool = True) -> list[LoRA]: ...
def train_lora(model: Any, items: Sequence[PersonaItem], side: Side, config: LoRAConfig | None = None, *,
               snapshots: bool = False, progress: bool = True) -> LoRA | list[LoRA]:
    """Fine-tune LoRA factors on ``side``'s answers to ``items`` (chat-formatted; loss on answer tokens
    only), seeded. With ``snapshots`` returns one LoRA per epoch (for choosing the epoch on a
    validation split); the model's weights are never changed.

    Examples:
        >>> runs = train_lora(model, fit[:4], "seek", LoRAConfig(epochs=2, rank=2, modules=["mlp"]), snapshots=True, progress=False)
        >>> len(runs), len(runs[-1].meta["train_loss"]), sorted(runs[0].A)[:2]      # one LoRA per epoch
        (2, 2, ['blocks.0.mlp.down', 'blocks.0.mlp.gate'])
    """
    config = config or LoRAConfig()
    items = list(items)
    if not items:
        raise ValueError("train_lora got no items")
    check_side(side)
    adapter = get_adapter(model)
    A, B = init_factors(model, config)
    for t in (*A.values(), *B.values()):
        t.requires_grad_(True)
    scaling = config.alpha / config.rank
    names = {name: adapter.parameter_name(name) for name in A}
    base = {name: adapter.parameter(name).detach() for name in A}
    optimiser = torch.optim.AdamW([*A.values(), *B.values()], lr=config.learning_rate, weight_decay=0.0)
    order = random.Random(config.seed)
    meta = {"fingerprint": adapter.fingerprint, "side": side, "n_items": len(items), "config": dataclasses.asdict(config)}
    out, losses = [], []
    was_training = model.training
    frozen = {p: p.requires_grad for p in model.parameters()}
    model.eval()                                             # no dropout: deterministic given the seed
    for p in frozen:
        p.requires_grad_(False)                              # gradients reach A and B only
    starts = range(0, len(items), config.batch_size)
    try:
        with stage(f"LoRA[{side}] training", total=config.epochs * len(starts), progress=progress) as bar:
            for epoch in range(config.epochs):
                shuffled = list(items)
                order.shuffle(shuffled)
                epoch_loss = []
                for start in starts:
                    batch = encode_batch(model.tokenizer, [(it.question, it.answer(side)) for it in shuffled[start:start + config.batch_size]],
                                         max_tokens=token_budget(model, config.max_tokens))
                    params = {names[n]: base[n] + adapter.to_native(n, scaling * (B[n] @ A[n])).to(base[n].dtype) for n in A}
                    loss = answer_loss(model, batch.tokens, _targets(batch), params)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    epoch_loss.append(float(loss.detach()))
                    bar.update()
                losses.append(sum(epoch_loss) / len(epoch_loss))
                if snapshots or epoch == config.epochs - 1:
                    out.append(LoRA({n: a.detach().cpu() for n, a in A.items()}, {n: b.detach().cpu() for n, b in B.items()},
                                    scaling, {**meta, "epochs": epoch + 1, "train_loss": list(losses)}))
    finally:
        model.train(was_training)
        for p, flag in frozen.items():
            p.requires_grad_(flag)
    return out if snapshots else out[-1]
