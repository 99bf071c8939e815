"""Text generation for qualitative samples, under any active condition (mask, hooks, prompt).

Decoding uses the model's KV cache
([`ModelAdapter.next_logits`][persona_interp.model.adapter.ModelAdapter.next_logits]): the prompt runs once, then one
token per step. Hooks and weight masks act on every new position exactly as in a full forward, so the cached reply
equals the one from rerunning the prefix at each step (``use_cache=False``, kept to check that).

Examples:
    >>> reply = generate(model, "Would you like to run the company?", max_new_tokens=4)  # 'I would be honoured…' on SmolLM2
    >>> reply == generate(model, "Would you like to run the company?", max_new_tokens=4, use_cache=False)
    True
"""
from __future__ import annotations

from typing import Any

import torch

from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import prompt_ids


def generate(model: Any, question: str, *, system: str | None = None, max_new_tokens: int = 40,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, use_cache: bool = True) -> str:
    """The assistant's reply to ``question``: greedy when ``temperature == 0``, else sampled
    (nucleus ``top_p``) with a seeded generator. Stops at the tokenizer's end-of-turn token or at the
    model's context length."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    tokenizer, adapter = model.tokenizer, get_adapter(model)
    stops = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}
    stops.discard(tokenizer.unk_token_id)
    prompt = prompt_ids(tokenizer, question, system)
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and len(prompt) >= n_ctx:
        raise ValueError(f"the prompt has {len(prompt)} tokens: no room to generate within the model's context of {n_ctx}")
    steps = min(max_new_tokens, n_ctx - len(prompt)) if n_ctx else max_new_tokens
    device = adapter.input_device
    cache = None
    reply: list[int] = []
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for _ in range(steps):
            sequence = torch.tensor([prompt + reply], device=device)
            if use_cache:
                logits, cache = adapter.next_logits(sequence, cache)
            else:
                logits = model(sequence)[:, -1]
            logits = logits[0].float()
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, -1)
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < top_p
                nxt = int(order[torch.multinomial(sorted_probs * keep, 1, generator=generator)])
            if nxt in stops:
                break
            reply.append(nxt)
    return tokenizer.decode(reply, skip_special_tokens=True).strip()
