"""Text generation for qualitative samples, under any active condition (mask, hooks, prompt).

No KV cache: every step reruns the prefix, so hooks and weight masks apply exactly as in scoring
(and TransformerBridge's cached generation is avoided, which gave degenerate text on SmolLM2).

Example:
    >>> generate(model, "Would you like to run the company?", max_new_tokens=30)
    'I would be honoured to ...'
"""
from __future__ import annotations

from typing import Any

import torch

from persona_interp.model.adapter import get_adapter
from persona_interp.model.chat import prompt_ids


def generate(model: Any, question: str, *, system: str | None = None, max_new_tokens: int = 40,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """The assistant's reply to ``question``: greedy when ``temperature == 0``, else sampled
    (nucleus ``top_p``) with a seeded generator. Stops at the tokenizer's end-of-turn token."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    tokenizer = model.tokenizer
    stops = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}
    stops.discard(tokenizer.unk_token_id)
    tokens = torch.tensor([prompt_ids(tokenizer, question, system)], device=get_adapter(model).input_device)
    start = tokens.shape[1]
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(tokens)[0, -1].float()
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, -1)
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < top_p
                choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)
                nxt = int(order[choice])
            if nxt in stops:
                break
            tokens = torch.cat([tokens, torch.tensor([[nxt]], device=tokens.device)], 1)
    return tokenizer.decode(tokens[0, start:], skip_special_tokens=True).strip()
