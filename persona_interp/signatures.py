"""Activation signatures: streaming statistics of every linear map's input over a persona's texts.

For each input site (the hook that carries a linear map's input) and each input channel ``j``:

* per-sample L2 norm over the covered tokens, ``n_sj = ||x_{s,:,j}||_2`` → its mean and variance over
  samples (the Wanda activation ``a_j`` and the contrastive statistics μ, σ²: the paper's statistic);
* the same for the length-fair per-sample RMS ``n_sj / sqrt(T_s)`` (``T_s`` covered tokens of sample ``s``):
  the norm grows with √T, so when one pole's answers are longer the norm's z takes its sign from length.
  ``statistic`` ("norm" or "rms", in the metadata) says which of the two
  [`Signature.sample_mean`][persona_interp.signatures.Signature.sample_mean] and
  [`Signature.sample_var`][persona_interp.signatures.Signature.sample_var] (and so every mask built from the
  signature) use;
* per-token mean, variance and mean |x| over all covered tokens;
* for the MLP hidden site these are the per-neuron mean activation and mean |activation|; for the
  attention ``z`` site also the mean ‖z‖ of each head.

Nothing but running sums is kept (float64), padding never enters a sum, and the unembedding is
skipped, so memory does not grow with the number of tokens.

Examples:
    >>> sig = collect_signatures(model, load_persona("power"), side="seek", max_samples=4, progress=False)
    >>> sig.n_samples, sig.norm_mean("blocks.1.mlp.down").shape     # [d_mlp]
    (4, torch.Size([48]))
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Sequence, cast

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from persona_interp.data.files import read_header, write_tagged
from persona_interp.data.personas import SIDES, PersonaDataset, PersonaItem, Side
from persona_interp.model.adapter import ModelAdapter, get_adapter
from persona_interp.model.capture import forward, stop_hook
from persona_interp.model.chat import (QUESTION_CUT, EncodedBatch, TokenScope, check_token_scope, encode_batch, encode_texts,
                                       token_budget, warn_cut)
from persona_interp.progress import stage

Statistic = Literal["norm", "rms"]
STATISTICS: tuple[Statistic, ...] = ("norm", "rms")   # per-sample statistic of a channel: L2 norm over tokens, or norm / sqrt(T)
FORMAT = "persona_interp.signature/1"


@dataclass
class Signature:
    """Per-site running sums and their derived statistics, tied to one model by its fingerprint."""

    sums: dict[str, dict[str, Tensor]]
    map_sites: dict[str, str]
    head_sites: dict[int, str]
    neuron_sites: dict[int, str]
    meta: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Tensor]] = field(default_factory=dict, repr=False)   # per-sample rows (subset), not saved

    # ------------------------------------------------------------------ derived statistics
    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def statistic(self) -> Statistic:
        """The per-sample statistic masks use: ``norm`` (the paper's) or ``rms`` (length-fair)."""
        return self.meta.get("statistic", "norm")

    def with_statistic(self, statistic: Statistic) -> "Signature":
        """The same sums, with masks built from the per-sample ``statistic`` ("norm" or "rms").

        Examples:
            >>> fair = sig_seek.with_statistic("rms")
            >>> fair.statistic, bool((fair.sample_mean("blocks.1.mlp.down") < sig_seek.sample_mean("blocks.1.mlp.down")).all())
            ('rms', True)
        """
        check_statistic(statistic)
        if statistic == "rms" and not all("rms_sum" in stats for stats in self.sums.values()):
            raise ValueError(f"signature {self.meta.get('dataset')!r} has no RMS sums (saved by an older version): "
                             "collect it again to use statistic='rms'")
        return dataclasses.replace(self, meta={**self.meta, "statistic": statistic})

    def sample_mean(self, map_name: str) -> Float[Tensor, " n_in"]:
        """Mean over samples of the signature's per-sample statistic
        ([`statistic`][persona_interp.signatures.Signature.statistic]) of each input channel."""
        key = "rms_sum" if self.statistic == "rms" else "norm_sum"
        return self._site(map_name)[key] / self.n_samples

    def sample_var(self, map_name: str) -> Float[Tensor, " n_in"]:
        """Unbiased variance over samples of the signature's per-sample statistic."""
        s, n = self._site(map_name), self.n_samples
        total, squares = (s["rms_sum"], s["rms_sq_sum"]) if self.statistic == "rms" else (s["norm_sum"], s["norm_sq_sum"])
        if n < 2:
            return torch.zeros_like(total)
        return ((squares - total ** 2 / n) / (n - 1)).clamp_min(0)

    def subset(self, indices: Sequence[int]) -> "Signature":
        """The signature of some of its samples (by position), from the per-sample rows kept by
        ``collect_signatures(..., per_sample=True)``: norm, RMS and per-token sum and square sums (the
        statistics masks need); neuron |x| and head norms are not kept per sample.

        Examples:
            >>> half = sig_seek.subset(range(0, sig_seek.n_samples, 2))
            >>> half.n_samples, half.meta["subset_of"]
            (4, 8)
        """
        if not self.rows:
            raise ValueError("this signature kept no per-sample rows: collect it with per_sample=True")
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if index.numel() < 1 or int(index.min()) < 0 or int(index.max()) >= self.n_samples:
            raise ValueError(f"subset indices must be positions 0..{self.n_samples - 1}, got {len(index)} of them")
        tokens = self.rows["__tokens__"]["n"][index]
        sums = {}
        for site, rows in self.rows.items():
            if site == "__tokens__":
                continue
            norm = rows["norm"][index]
            rms = norm / tokens.sqrt()[:, None]
            sums[site] = {"norm_sum": norm.sum(0), "norm_sq_sum": (norm ** 2).sum(0), "rms_sum": rms.sum(0),
                          "rms_sq_sum": (rms ** 2).sum(0), "token_sum": rows["token_sum"][index].sum(0),
                          "token_sq_sum": (norm ** 2).sum(0)}
        meta = {**self.meta, "n_samples": int(index.numel()), "n_tokens": int(tokens.sum()), "subset_of": self.n_samples}
        return Signature(sums, self.map_sites, {}, {}, meta)

    def _site(self, map_name: str) -> dict[str, Tensor]:
        if map_name not in self.map_sites:
            raise KeyError(f"signature has no statistics for map {map_name!r}")
        return self.sums[self.map_sites[map_name]]

    def norm_mean(self, map_name: str) -> Float[Tensor, " n_in"]:
        """Mean over samples of the per-sample input-channel L2 norm (the Wanda activation)."""
        return self._site(map_name)["norm_sum"] / self.n_samples

    def norm_var(self, map_name: str) -> Float[Tensor, " n_in"]:
        """Unbiased variance over samples of the per-sample input-channel L2 norm."""
        s = self._site(map_name)
        n = self.n_samples
        if n < 2:
            return torch.zeros_like(s["norm_sum"])
        return ((s["norm_sq_sum"] - s["norm_sum"] ** 2 / n) / (n - 1)).clamp_min(0)

    def token_mean(self, map_name: str) -> Float[Tensor, " n_in"]:
        return self._site(map_name)["token_sum"] / self.n_tokens

    def token_var(self, map_name: str) -> Float[Tensor, " n_in"]:
        s, n = self._site(map_name), self.n_tokens
        return ((s["token_sq_sum"] - s["token_sum"] ** 2 / n) / max(n - 1, 1)).clamp_min(0)

    def neuron_mean(self, layer: int) -> Float[Tensor, " d_mlp"]:
        """Mean activation of each MLP neuron over covered tokens."""
        return self.sums[self.neuron_sites[layer]]["token_sum"] / self.n_tokens

    def neuron_abs_mean(self, layer: int) -> Float[Tensor, " d_mlp"]:
        return self.sums[self.neuron_sites[layer]]["token_abs_sum"] / self.n_tokens

    def head_norm_mean(self, layer: int) -> Float[Tensor, " n_heads"]:
        """Mean ‖z‖ of each attention head over covered tokens."""
        return self.sums[self.head_sites[layer]]["head_norm_sum"] / self.n_tokens

    def head_z_mean(self, layer: int) -> Float[Tensor, "n_heads d_head"]:
        """Mean z vector of each head (for mean-ablation)."""
        s = self.sums[self.head_sites[layer]]
        return (s["token_sum"] / self.n_tokens).reshape(s["head_norm_sum"].shape[0], -1)

    # ------------------------------------------------------------------ identity and I/O
    def check_model(self, model: Any) -> None:
        """Raise [`ModelMismatchError`][persona_interp.model.adapter.ModelMismatchError] unless this signature fits
        ``model`` (fingerprint, maps, widths)."""
        get_adapter(model).check_fits(self.meta.get("fingerprint"), f"signature {self.meta.get('dataset')!r}",
                                      {name: (None, self.sums[site]["norm_sum"].numel()) for name, site in self.map_sites.items()})

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save as safetensors (float64 sums, JSON metadata); refuses to overwrite unless asked."""
        tensors = {f"{site}/{key}": value.contiguous() for site, stats in self.sums.items() for key, value in stats.items()}
        header = {"meta": json.dumps(self.meta), "map_sites": json.dumps(self.map_sites),
                  "head_sites": json.dumps(self.head_sites), "neuron_sites": json.dumps(self.neuron_sites)}
        return write_tagged(path, tensors, FORMAT, header, save_file, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Signature":
        """Load a signature saved by [`save`][persona_interp.signatures.Signature.save] (safetensors: no
        unpickling)."""
        header = read_header(path, FORMAT, "signature")
        sums: dict[str, dict[str, Tensor]] = {}
        for key, value in load_file(str(path)).items():
            site, stat = key.rsplit("/", 1)
            sums.setdefault(site, {})[stat] = value
        as_int_keys = lambda d: {int(k): v for k, v in json.loads(d).items()}  # noqa: E731
        return cls(sums, json.loads(header["map_sites"]), as_int_keys(header["head_sites"]),
                   as_int_keys(header["neuron_sites"]), json.loads(header["meta"]))


def check_statistic(statistic: object) -> None:
    """A ValueError listing [`STATISTICS`][persona_interp.signatures.STATISTICS] unless ``statistic`` is one of
    them."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {list(STATISTICS)} (per-sample L2 norm, or norm / sqrt(tokens)), got {statistic!r}")


NEUTRAL: Final = "neutral"       # the side of a signature collected on plain texts (no chat template)


def _samples(data: PersonaDataset | Sequence[Any],
             side: Side | Literal["neutral"] | None) -> tuple[list[tuple[str, str]] | list[str], Side | Literal["neutral"]]:
    """The samples and their side: (question, answer) pairs (``side``'s answer of each item or ``(question, seek,
    reject)`` triple; a plain ``(question, answer)`` pair is taken as it is, ``side`` then only labels the
    signature), or plain texts (side [`NEUTRAL`][persona_interp.signatures.NEUTRAL]). ``side`` None: "seek" for pairs,
    "neutral" for texts."""
    data = list(data)
    texts = bool(data) and all(isinstance(sample, str) for sample in data)
    side = side if side is not None else (NEUTRAL if texts else "seek")
    if texts:
        if side != NEUTRAL:
            raise ValueError(f"plain texts make a {NEUTRAL!r} signature (no chat template, no poles), got side={side!r}")
        empty = [index for index, text in enumerate(data) if not text.strip()]
        if empty:
            raise ValueError(f"text {empty[0]}: empty text")
        return data, side
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r} ({NEUTRAL!r} is for plain texts)")
    samples = []
    for index, sample in enumerate(data):
        if isinstance(sample, PersonaItem):
            samples.append((sample.question, sample.answer(side)))
        elif isinstance(sample, (tuple, list)) and len(sample) == 3:
            samples.append((sample[0], sample[1] if side == "seek" else sample[2]))
        elif isinstance(sample, (tuple, list)) and len(sample) == 2:
            samples.append(tuple(sample))
        else:
            raise ValueError(f"sample {index}: expected a PersonaItem, a (question, answer) pair, a "
                             f"(question, seek_answer, reject_answer) triple or (all samples) plain texts, got {type(sample).__name__}")
        if not all(isinstance(t, str) and t.strip() for t in samples[-1]):
            raise ValueError(f"sample {index}: question and answer must be non-empty text, got {samples[-1]!r}")
    if not samples:
        raise ValueError("collect_signatures got an empty dataset")
    return samples, side


CHUNK_ELEMENTS = 2**17   # activation elements reduced at once: float64 copies of ~1 MB keep the extra memory at a forward's


class _Accumulator:
    """Hook functions that add one batch's statistics to running float64 sums."""

    def __init__(self, adapter: ModelAdapter, per_sample: bool = False):
        self.head_sites = {adapter.head_hook(layer): layer for layer in range(adapter.n_layers)}
        self.sums: dict[str, dict[str, Tensor]] = {}
        self.rows: dict[str, dict[str, list[Tensor]]] | None = {} if per_sample else None
        self._weights: dict[torch.device, Tensor] = {}

    def hook_for(self, name: str) -> Any:
        """The hook for site ``name`` (keyed by the registered name: bridges report aliases' canonical names)."""
        return lambda activation, hook: self._add(name, activation)

    def set_weights(self, weights: Float[Tensor, "batch pos"]) -> None:
        """The token weights (1 = covered) of the next batch."""
        self._weights = {weights.device: weights}

    def _weights_on(self, device: torch.device) -> Tensor:
        """The batch's token weights on ``device`` (copied once per device: a sharded model spans several)."""
        if device not in self._weights:
            self._weights[device] = next(iter(self._weights.values())).to(device)
        return self._weights[device]

    def _add(self, name: str, activation: Tensor) -> None:
        x = activation.detach()
        heads = x.reshape(*x.shape[:2], -1, x.shape[-1]) if name in self.head_sites and x.dim() == 4 else None
        x = x.reshape(*x.shape[:2], -1)
        weights = self._weights_on(x.device)
        rows = max(1, CHUNK_ELEMENTS // (x.shape[1] * x.shape[2]))       # whole samples per chunk
        for start in range(0, x.shape[0], rows):
            chunk = slice(start, start + rows)
            self._add_rows(name, x[chunk], None if heads is None else heads[chunk], weights[chunk, : x.shape[1], None])

    def cpu_sums(self) -> dict[str, dict[str, Tensor]]:
        """The running sums (kept on each site's device while collecting), moved to the CPU."""
        return {site: {key: value.cpu() for key, value in stats.items()} for site, stats in self.sums.items()}

    def cpu_rows(self, tokens_per_sample: list[int]) -> dict[str, dict[str, Tensor]]:
        """The per-sample rows ``[samples, channels]`` (empty unless ``per_sample``) and the token counts."""
        if self.rows is None:
            return {}
        rows = {site: {key: torch.cat(parts).cpu() for key, parts in stats.items()} for site, stats in self.rows.items()}
        return {**rows, "__tokens__": {"n": torch.tensor(tokens_per_sample, dtype=torch.float64)}}

    def _add_rows(self, name: str, x: Tensor, heads: Tensor | None, w: Tensor) -> None:
        x = x.double()                                               # float64 sums: batch-size invariant to ~1e-7
        xw = x * w
        sq = x * xw
        per_sample_norm = sq.sum(1).sqrt()                           # [batch, channels]
        per_sample_rms = per_sample_norm / w.sum(1).sqrt()            # norm / sqrt(covered tokens)
        token_sums = xw.sum(1)
        if self.rows is not None:
            rows = self.rows.setdefault(name, {"norm": [], "token_sum": []})
            rows["norm"].append(per_sample_norm)
            rows["token_sum"].append(token_sums)
        batch = {
            "norm_sum": per_sample_norm.sum(0),
            "norm_sq_sum": (per_sample_norm ** 2).sum(0),
            "rms_sum": per_sample_rms.sum(0),
            "rms_sq_sum": (per_sample_rms ** 2).sum(0),
            "token_sum": token_sums.sum(0),
            "token_sq_sum": sq.sum((0, 1)),
            "token_abs_sum": xw.abs_().sum((0, 1)),
        }
        if heads is not None:
            batch["head_norm_sum"] = (heads.double().norm(dim=-1) * w).sum((0, 1))
        stats = self.sums.setdefault(name, {key: torch.zeros_like(value) for key, value in batch.items()})
        for key, value in batch.items():
            stats[key] += value


def collect_signatures(model: Any, data: PersonaDataset | Sequence[PersonaItem | tuple[str, str] | tuple[str, str, str]] | Sequence[str],
                       side: Side | Literal["neutral"] | None = None, *,
                       token_scope: TokenScope = "all", batch_size: int = 8, max_tokens: int = 256,
                       max_samples: int | None = None, system: str | None = None, statistic: Statistic = "norm",
                       per_sample: bool = False, progress: bool = True) -> Signature:
    """Run (question, answer) samples through ``model`` and keep streaming input statistics.

    ``side`` picks the answer of each [`PersonaItem`][persona_interp.data.personas.PersonaItem] or
    ``(question, seek, reject)`` triple ("seek" = matching, "reject" = not_matching; the default is "seek"); plain
    ``(question, answer)`` pairs are used as given, so pass each pole's own pairs. Plain texts (strings) are read
    without the chat template, as [`DamageReference`][persona_interp.evaluation.scoring.DamageReference] reads them,
    into a ``side="neutral"`` signature: the third statistic of damage-aware masks. ``token_scope`` is ``all`` (the
    whole chat), ``answer`` or ``prompt`` (plain texts: ``all`` or ``answer``, the whole text). Both per-sample
    statistics are collected; ``statistic`` ("norm", the paper's, or "rms") picks the one masks use (change it later
    with [`Signature.with_statistic`][persona_interp.signatures.Signature.with_statistic]). ``per_sample`` keeps
    per-sample rows for [`Signature.subset`][persona_interp.signatures.Signature.subset] (two float64 rows per channel
    and sample, in memory only).

    Examples:
        >>> seek = collect_signatures(model, fit, side="seek", token_scope="answer", progress=False)
        >>> neutral = collect_signatures(model, load_neutral_texts()[:2], progress=False)
        >>> seek.meta["side"], neutral.meta["side"], seek.n_tokens < sig_seek.n_tokens     # answers only: fewer tokens
        ('seek', 'neutral', True)
    """
    adapter = get_adapter(model)
    check_statistic(statistic)
    check_token_scope(token_scope)
    if batch_size < 1 or max_tokens < 1:
        raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size}, {max_tokens}")
    samples, side = _samples(data, side)
    if side == NEUTRAL and system is not None:
        raise ValueError("plain texts are read without the chat template: a system prompt has no place there")
    if max_samples is not None:
        samples = samples[:max_samples]
    accumulator = _Accumulator(adapter, per_sample)
    sites = list(dict.fromkeys([*adapter.input_sites, *accumulator.head_sites]))
    last_site = adapter.neuron_hook(adapter.n_layers - 1)

    hooks = [(site, accumulator.hook_for(site)) for site in sites] + [(last_site, stop_hook)]
    n_tokens, tokens_per_sample, n_cut = 0, [], 0
    budget = token_budget(model, max_tokens)
    tokenizer = model.tokenizer
    with (stage(f"signatures[{side}]", total=len(samples), progress=progress) as bar, torch.inference_mode(),
          model.hooks(fwd_hooks=hooks)):
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch: EncodedBatch = (encode_texts(tokenizer, cast(list[str], chunk), budget) if side == NEUTRAL   # _samples: texts
                                   else encode_batch(tokenizer, cast(list[tuple[str, str]], chunk), system, budget))
            n_cut += batch.n_cut
            mask: Bool[Tensor, "batch pos"] = batch.token_mask(token_scope)
            if not mask.any(1).all():
                raise ValueError(f"a sample has no tokens in scope {token_scope!r} (max_tokens={max_tokens} too small?)")
            accumulator.set_weights(mask.double())
            n_tokens += int(mask.sum())
            tokens_per_sample += mask.sum(1).tolist()
            forward(model, batch.tokens)
            bar.update(len(batch.tokens))
    warn_cut(n_cut, len(samples), budget, f"signatures[{side}]", "the text was cut to its first tokens" if side == NEUTRAL else QUESTION_CUT)
    name = data.name if isinstance(data, PersonaDataset) else "pairs"
    meta = {"fingerprint": adapter.fingerprint, "dataset": name, "side": side, "n_samples": len(samples),
            "n_tokens": n_tokens, "token_scope": token_scope, "max_tokens": max_tokens, "system": system,
            "statistic": statistic, "n_cut": n_cut}
    return Signature(accumulator.cpu_sums(), {m.name: m.site for m in adapter.maps},
                     {layer: site for site, layer in accumulator.head_sites.items()},
                     {layer: adapter.neuron_hook(layer) for layer in range(adapter.n_layers)}, meta,
                     accumulator.cpu_rows(tokens_per_sample))
