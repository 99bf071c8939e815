"""The one recorder and stop exception: capture reads hook points and skips the rest of the forward."""
import pytest
import torch

import persona_interp as pi
from persona_interp.model.capture import StopForward, capture, forward, stop_hook

TOKENS = torch.tensor([[1, 5, 9, 13], [2, 6, 10, 14]])


def test_capture_reads_what_a_full_forward_sees_and_stops_early(tiny_model):
    adapter = pi.get_adapter(tiny_model)
    names = [adapter.residual_hook(1), adapter.residual_hook(0)]
    seen, later = {}, []

    def record(name):
        def hook(x, hook):
            seen[name] = x.detach().clone()
        return hook

    with tiny_model.hooks(fwd_hooks=[(n, record(n)) for n in names]):
        tiny_model(TOKENS)
    with tiny_model.hooks(fwd_hooks=[(adapter.final_residual_hook, lambda x, hook: later.append(1))]):
        acts = capture(tiny_model, TOKENS, names)
    assert set(acts) == set(names) and not later                   # nothing after the deepest capture ran
    for name in names:
        torch.testing.assert_close(acts[name], seen[name], rtol=0, atol=0)
        assert not acts[name].requires_grad


def test_capture_keeps_a_graph_when_asked_and_refuses_nothing_to_capture(tiny_model):
    name = pi.get_adapter(tiny_model).final_residual_hook
    out = capture(tiny_model, TOKENS, [name], transform=lambda x: x)[name]
    assert out.requires_grad
    with pytest.raises(ValueError, match="at least one hook"):
        capture(tiny_model, TOKENS, [])


def test_forward_swallows_only_the_stop_exception(tiny_model):
    adapter = pi.get_adapter(tiny_model)
    with tiny_model.hooks(fwd_hooks=[(adapter.residual_hook(0), stop_hook)]):
        assert forward(tiny_model, TOKENS) is None
    assert forward(tiny_model, TOKENS).shape[:2] == TOKENS.shape

    def boom(x, hook):
        raise KeyError("not a stop")

    with tiny_model.hooks(fwd_hooks=[(adapter.residual_hook(0), boom)]), pytest.raises(KeyError):
        forward(tiny_model, TOKENS)
    assert issubclass(StopForward, Exception)
