"""Differentiable objectives of the damage-aware masks: the A/B margin of calibration items and the next-token
log-probs of neutral texts, both read as the scorers read them
([`score_ab`][persona_interp.evaluation.scoring.score_ab]'s per-token margin,
[`DamageReference`][persona_interp.evaluation.scoring.DamageReference]'s texts), with the graph kept.

Examples:
    >>> margin = ab_margins(model, fit[:2]).sum()
    >>> torch.autograd.grad(margin, adapter.parameter("blocks.1.mlp.down"))[0].shape
    torch.Size([32, 48])
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.personas import PersonaItem
from persona_interp.evaluation.scoring import _neutral_batches, _next_token_logprobs, answer_logprobs
from persona_interp.model.chat import encode_batch, token_budget


def ab_margins(model: Any, items: Sequence[PersonaItem], max_tokens: int = 512) -> Float[Tensor, " n"]:
    """Per item, the seek answer's mean log-prob per token minus the reject answer's (``score_ab``'s
    ``margin_mean``), differentiable (each option its own row).

    Examples:
        >>> ab_margins(model, fit[:3]).shape
        torch.Size([3])
    """
    pairs = [(it.question, answer) for it in items for answer in (it.matching, it.not_matching)]
    batch = encode_batch(model.tokenizer, pairs, max_tokens=token_budget(model, max_tokens))
    per_token = answer_logprobs(model, batch) / (batch.lengths - batch.answer_start).double()
    return per_token[0::2] - per_token[1::2]


def neutral_logprobs(model: Any, texts: Sequence[str], batch_size: int = 8,
                     max_tokens: int = 256) -> Iterator[tuple[Float[Tensor, "n vocab"], Float[Tensor, " n"]]]:
    """Per batch of texts, the next-token log-probs at every real position ``[n, vocab]`` and the log-prob of the
    actual next token ``[n]`` (graph kept), on the texts as ``DamageReference`` reads them.

    Examples:
        >>> for logprobs, observed in neutral_logprobs(model, texts[:2]):
        ...     print(logprobs.shape[1], observed.requires_grad)      # the vocabulary; the graph kept
        2000 True
    """
    for tokens, real in _neutral_batches(model, texts, batch_size, max_tokens):
        logprobs, tokens, real = _next_token_logprobs(model, tokens, real)
        observed = logprobs.gather(2, tokens[:, 1:, None])[..., 0]
        yield logprobs[real], observed[real]


def kl_from(base: Float[Tensor, "n vocab"], logprobs: Float[Tensor, "n vocab"]) -> Float[Tensor, ""]:
    """Mean KL(base ‖ model) per position of two sets of log-probs (base detached)."""
    base = base.detach()
    return (base.exp() * (base - logprobs)).sum(-1).mean()


def frozen_weights(model: Any) -> dict[torch.nn.Parameter, bool]:
    """Every parameter's ``requires_grad``, then set to False (restore with
    [`restore_grad`][persona_interp.masks.objectives.restore_grad])."""
    states = {p: p.requires_grad for p in model.parameters()}
    for p in states:
        p.requires_grad_(False)
    return states


def restore_grad(states: dict[torch.nn.Parameter, bool]) -> None:
    """Set every parameter's ``requires_grad`` back as
    [`frozen_weights`][persona_interp.masks.objectives.frozen_weights] found it."""
    for p, flag in states.items():
        p.requires_grad_(flag)
