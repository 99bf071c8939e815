"""Generation with the model's KV cache: the same reply as rerunning the prefix, under every kind of condition."""
from __future__ import annotations

import contextlib

import pytest
import torch

import persona_interp as pi
from persona_interp.interventions.steering import SteeringVector
from persona_interp.model.adapter import get_adapter


def conditions(model):
    adapter = get_adapter(model)
    vector = SteeringVector(1, torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0)))
    return {"base": contextlib.nullcontext(),
            "mask": pi.ablate(model, pi.random_mask(model, 0.3, seed=1)),
            "steering": vector.apply(model, 3.0),
            "neurons": pi.ablate(model, pi.NeuronMask({0: [1, 2, 3]}))}


def test_cached_reply_equals_rerunning_the_prefix(tiny_model):
    replies = []
    for name, condition in conditions(tiny_model).items():
        with condition:
            cached = pi.generate(tiny_model, "Would you like more power?", max_new_tokens=12)
            rerun = pi.generate(tiny_model, "Would you like more power?", max_new_tokens=12, use_cache=False)
            sampled = [pi.generate(tiny_model, "Hi", max_new_tokens=8, temperature=1.0, seed=3, use_cache=c) for c in (True, False)]
        assert cached == rerun, name
        assert sampled[0] == sampled[1], name
        replies.append(cached)
    assert len(set(replies)) > 1            # the conditions change the reply, so the comparison above can fail


def test_the_prompt_runs_once_then_one_token_per_step(tiny_model, model_kind):
    adapter = get_adapter(tiny_model)
    lengths: list[int] = []

    def record(x, hook):
        lengths.append(x.shape[1])

    with tiny_model.hooks(fwd_hooks=[(adapter.residual_hook(0), record)]):
        pi.generate(tiny_model, "Would you like more power?", max_new_tokens=6)
    prompt = len(pi.model.chat.prompt_ids(tiny_model.tokenizer, "Would you like more power?"))
    if model_kind == "native":            # a TL-native bridge has no KV cache: it reruns the prefix
        assert lengths == list(range(prompt, prompt + len(lengths)))
    else:
        assert lengths[0] == prompt and all(n == 1 for n in lengths[1:])
    assert 1 < len(lengths) <= 6


def test_generation_stops_at_the_context_length(tokenizer):
    from conftest import build_model

    model = build_model("native", tokenizer)          # n_ctx 128
    long = "power " * 200
    with pytest.raises(ValueError, match="no room to generate within the model's context of 128"):
        pi.generate(model, long)
    question = next(q for q in ("power " * k for k in range(200, 0, -1))
                    if len(pi.model.chat.prompt_ids(tokenizer, q)) < 124)
    room = 128 - len(pi.model.chat.prompt_ids(tokenizer, question))
    assert 0 < room < 10
    reply = pi.generate(model, question, max_new_tokens=100)
    assert len(tokenizer.encode(reply)) <= room + 2      # re-tokenising the text may merge or split a token
