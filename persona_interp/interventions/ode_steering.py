"""ODE steering (after ODESteer, arXiv 2602.17560): follow the gradient of a barrier function.

A barrier ``h(x) ≈ log p⁺(x) / p⁻(x)`` is fitted by logistic regression on residual-stream
activations of the two poles' calibration answers at one layer — on the (standardised)
activations themselves (linear barrier) or on random Fourier features of them (non-linear). At
run time, every position's residual is moved by integrating ``dx/dt = ∇h(x) / ‖∇h(x)‖`` for
``steps`` Euler steps of size ``|α|·step_size`` (toward the seek pole for ``α > 0``, the reject
pole for ``α < 0``). With a linear barrier ``∇h`` is constant, so the flow is activation addition
along the barrier's normal: one step is a steering vector (see the tests).

Examples:
    >>> ode = ode_steerings(model, fit, [1], features=64)[1]
    >>> with ode.apply(model, multiplier=4.0):
    ...     scores = score_ab(model, test, progress=False)
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from persona_interp.data.personas import SIDES, PersonaDataset, PersonaItem
from persona_interp.interventions.steering import answer_residual_means
from persona_interp.model.adapter import get_adapter


@dataclass
class Barrier:
    """``h(x) = w · φ((x − mean) / scale) + c`` with ``φ`` the identity or random Fourier features
    ``sqrt(2/F) · cos(Ω z + b)``."""

    weight: Float[Tensor, " features"]
    bias: float
    mean: Float[Tensor, " d_model"]
    scale: Float[Tensor, " d_model"]
    omega: Float[Tensor, "features d_model"] | None = None
    phase: Float[Tensor, " features"] | None = None

    def to(self, device: torch.device | str) -> "Barrier":
        """The same barrier with its tensors on ``device`` (a no-op where they already are)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Barrier(self.weight.to(device), self.bias, self.mean.to(device), self.scale.to(device), move(self.omega), move(self.phase))

    def _z(self, x: Tensor) -> Tensor:
        return (x.double() - self.mean) / self.scale

    def features(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... features"]:
        z = self._z(x)
        if self.omega is None:
            return z
        assert self.phase is not None   # random Fourier features have both
        return math.sqrt(2.0 / len(self.phase)) * torch.cos(z @ self.omega.T + self.phase)

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """``h(x)``: positive on the seek side."""
        return self.features(x) @ self.weight + self.bias

    def gradient(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """``∇ₓ h(x)`` (closed form)."""
        if self.omega is None:
            return (self.weight / self.scale).expand(*x.shape[:-1], -1)
        assert self.phase is not None   # random Fourier features have both
        z = self._z(x)
        inner = -math.sqrt(2.0 / len(self.phase)) * torch.sin(z @ self.omega.T + self.phase) * self.weight
        return (inner @ self.omega) / self.scale


def fit_barrier(seek: Float[Tensor, "n d_model"], reject: Float[Tensor, "m d_model"], *, features: int | None = None,
                bandwidth: float | None = None, l2: float = 1e-3, seed: int = 0, iterations: int = 200) -> Barrier:
    """Logistic regression (seek = 1, reject = 0) with an L2 penalty, on standardised activations
    (``features=None``) or on ``features`` random Fourier features with kernel ``bandwidth``
    (default √d, the median-heuristic scale of standardised data).

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> seek_acts, reject_acts = torch.randn(20, 8, generator=generator) + 1, torch.randn(20, 8, generator=generator) - 1
        >>> barrier = fit_barrier(seek_acts, reject_acts, features=64)
        >>> float((barrier(seek_acts) > 0).double().mean())      # training accuracy of the barrier on the seek side
        1.0
    """
    if len(seek) == 0 or len(reject) == 0:
        raise ValueError("fit_barrier needs activations of both poles")
    x = torch.cat([seek, reject]).double()
    y = torch.cat([torch.ones(len(seek)), torch.zeros(len(reject))]).double()
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    d = x.shape[1]
    omega = phase = None
    if features:
        generator = torch.Generator().manual_seed(seed)
        omega = torch.randn(features, d, generator=generator, dtype=torch.float64) / (bandwidth or math.sqrt(d))
        phase = 2 * math.pi * torch.rand(features, generator=generator, dtype=torch.float64)
    barrier = Barrier(torch.zeros(features or d, dtype=torch.float64), 0.0, mean, scale, omega, phase)
    phi = barrier.features(x)
    params = torch.zeros(phi.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimiser.zero_grad()
        logits = phi @ params[:-1] + params[-1]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * params[:-1].square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    barrier.weight, barrier.bias = params[:-1].detach().clone(), float(params[-1].detach())
    return barrier


@dataclass
class ODESteering:
    """Barrier-gradient flow at ``blocks.{layer}.hook_resid_pre``: ``steps`` normalised Euler steps of
    size ``|multiplier| · step_size``, uphill (seek) for a positive multiplier, downhill for a negative one."""

    layer: int
    barrier: Barrier
    steps: int = 4
    step_size: float = 1.0
    multiplier: float = 1.0
    meta: dict = field(default_factory=dict)
    _placed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def flow(self, x: Float[Tensor, "... d_model"], multiplier: float | None = None) -> Float[Tensor, "... d_model"]:
        """Integrate the flow from ``x`` (what the hook does to every position)."""
        alpha = self.multiplier if multiplier is None else multiplier
        step = math.copysign(abs(alpha) * self.step_size, alpha)
        y = x.double()
        barrier = self._barrier_on(y.device)
        for _ in range(self.steps):
            g = barrier.gradient(y)
            y = y + step * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return y.to(x.dtype)

    def _barrier_on(self, device: torch.device) -> Barrier:
        """The barrier on the residual's device (copied once per device)."""
        if device not in self._placed:
            self._placed[device] = self.barrier.to(device)
        return self._placed[device]

    def fwd_hooks(self, model: Any, multiplier: float | None = None) -> list[tuple[str, Callable]]:
        """``(hook name, hook)`` pairs for ``run_with_hooks``."""
        adapter = get_adapter(model)
        if self.barrier.mean.shape != (adapter.d_model,):
            raise ValueError(f"barrier fitted on d_model {tuple(self.barrier.mean.shape)}, the model's is {adapter.d_model}")

        def hook(resid: Tensor, hook: Any) -> Tensor:
            return self.flow(resid, multiplier)

        return [(adapter.residual_hook(self.layer), hook)]

    @contextlib.contextmanager
    def apply(self, model: Any, multiplier: float | None = None) -> Iterator[Any]:
        """Context manager: the flow is applied inside, the hook removed on exit."""
        with model.hooks(fwd_hooks=self.fwd_hooks(model, multiplier)):
            yield model


def ode_steerings(model: Any, data: PersonaDataset | Sequence[PersonaItem], layers: Sequence[int], *,
                  features: int | None = None, steps: int = 4, means: dict[str, Tensor] | None = None,
                  batch_size: int = 8, max_tokens: int = 256, seed: int = 0) -> dict[int, ODESteering]:
    """One [`ODESteering`][persona_interp.interventions.ode_steering.ODESteering] per layer, barriers fitted on each
    item's answer-mean residuals of the two poles. ``step_size`` is set so that ``steps`` steps cover the norm of the
    mean difference, making the multiplier comparable to a mean-difference vector's. ``means``
    (``{"seek": [n, layers, d], "reject": ...}``, from
    [`answer_residual_means`][persona_interp.interventions.steering.answer_residual_means]) skips the forward
    passes."""
    if means is None:
        means = {side: answer_residual_means(model, data, layers, side=side, batch_size=batch_size, max_tokens=max_tokens)
                 for side in SIDES}
    out = {}
    for i, layer in enumerate(layers):
        seek, reject = means["seek"][:, i], means["reject"][:, i]
        barrier = fit_barrier(seek, reject, features=features, seed=seed)
        size = float((seek.mean(0) - reject.mean(0)).norm()) / steps
        out[layer] = ODESteering(layer, barrier, steps=steps, step_size=size,
                                 meta={"method": "ode", "features": features, "n": len(seek)})
    return out
