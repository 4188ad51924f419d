"""Denoiser: a network, the adapter that calls it, the path it was trained on and its prediction type.

Every objective and solver talks to networks only through ``Denoiser.forward(x_t, t, cond) -> Prediction``
(the canonical ``(x0, eps)`` pair), so they never care whether the network predicts eps, x0, v or flow,
what time units it embeds, or what shape the latent has. Classifier-free guidance (Ho & Salimans, 2022)
lives here too, in diffusers' convention ``u + w (c - u)`` (``w = 1`` is no guidance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.paths import Path, Prediction, check_prediction_type, expand_like


class Adapter:
    """Maps the core's ``(x_t, t, cond, guidance)`` to a network's own call signature.

    The default passes ``network(x_t, time_scale * t, cond)``, plus ``guidance=`` when the student is
    guidance-conditioned. Plugins subclass this for e.g. diffusers UNets (``sample, timestep,
    encoder_hidden_states``).
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale

    def __call__(self, network: nn.Module, x_t: Tensor, t: Tensor, cond: Any, guidance: Tensor | None) -> Tensor:
        kwargs = {} if guidance is None else {"guidance": guidance}
        return network(x_t, t * self.time_scale, cond, **kwargs)


class Denoiser(nn.Module):
    """A network plus what it takes to read its output as ``(x0, eps)`` on ``path``."""

    nfe_per_call = 1

    def __init__(self, network: nn.Module, path: Path, prediction: str, adapter: Adapter | None = None) -> None:
        super().__init__()
        self.network = network
        self.path = path
        self.prediction = check_prediction_type(prediction)
        self.adapter = adapter or Adapter()

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Tensor:
        t = _as_time(t, x_t)
        return self.adapter(self.network, x_t, t, cond, guidance)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        t = _as_time(t, x_t)
        return self.path.to_prediction(self.raw(x_t, t, cond, guidance), x_t, t, self.prediction)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Tensor:
        """The probability-flow ODE drift ``dx_t/dt`` at ``(x_t, t)``."""
        t = _as_time(t, x_t)
        return self.path.velocity(*self(x_t, t, cond, guidance), t)


def _as_time(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    expand_like(t, x)  # validates the shape
    return t


def freeze(module: nn.Module) -> nn.Module:
    """Put a network in the teacher's state: eval mode and no parameter gradients."""
    module.eval()
    module.requires_grad_(False)
    return module


def combine_guidance(cond: Prediction, uncond: Prediction, scale: float | Tensor) -> Prediction:
    """``u + w (c - u)`` on both halves of the prediction (guidance commutes with the affine conversions)."""
    w = torch.as_tensor(scale, dtype=cond.x0.dtype, device=cond.x0.device)
    if w.ndim == 1:
        w = expand_like(w, cond.x0)
    return Prediction(uncond.x0 + w * (cond.x0 - uncond.x0), uncond.eps + w * (cond.eps - uncond.eps))


class GuidedDenoiser(nn.Module):
    """Classifier-free guidance around a denoiser: two evaluations (conditional and null) per call.

    ``null_condition`` maps a batch's condition to its null counterpart (the modality supplies it).
    ``scale = 1`` is the conditional model (one evaluation), ``scale = 0`` the unconditional one.
    """

    def __init__(self, denoiser: nn.Module, scale: float | Tensor, null_condition: Callable[[Any], Any]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.scale = scale if isinstance(scale, Tensor) else float(scale)
        self.null_condition = null_condition

    @property
    def _unguided(self) -> bool:
        return bool(torch.all(torch.as_tensor(self.scale) == 1.0))

    @property
    def path(self) -> Path:
        return self.denoiser.path

    @property
    def nfe_per_call(self) -> int:
        return 1 if self._unguided else 2

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        c = self.denoiser(x_t, t, cond, guidance)
        if self._unguided:
            return c
        u = self.denoiser(x_t, t, self.null_condition(cond), guidance)
        return combine_guidance(c, u, self.scale)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Tensor:
        t = _as_time(t, x_t)
        return self.path.velocity(*self(x_t, t, cond, guidance), t)


class OnPath(nn.Module):
    """Evaluate a denoiser trained on one path at points of another path, exactly.

    A point ``x_b = alpha_b x0 + sigma_b eps`` of path B at time ``t_b`` is the point
    ``x_a = (alpha_a / alpha_b) x_b`` of path A at the time ``t_a`` with the same noise ratio
    ``sigma/alpha``; ``(x0, eps)`` are shared, so the prediction carries over unchanged.
    Used e.g. to run a rectified-flow teacher in TrigFlow time for continuous-time consistency.
    """

    def __init__(self, denoiser: nn.Module, path: Path) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.path = path

    @property
    def nfe_per_call(self) -> int:
        return self.denoiser.nfe_per_call

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        t = _as_time(t, x_t)
        src = self.denoiser.path
        t_a = src.t_from_noise_ratio(self.path.noise_ratio(t))
        # alpha_a / alpha_b = sigma_a / sigma_b = (alpha_a + sigma_a) / (alpha_b + sigma_b); the last form stays
        # well conditioned at t_max, where alpha_b is 0 (or, in float32, a tiny negative number).
        scale = expand_like((src.alpha(t_a) + src.sigma(t_a)) / (self.path.alpha(t) + self.path.sigma(t)), x_t)
        return self.denoiser(scale * x_t, t_a, cond, guidance)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Tensor:
        t = _as_time(t, x_t)
        return self.path.velocity(*self(x_t, t, cond, guidance), t)


def guidance_embedding(w: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of the guidance scale, as latent consistency models condition on ``w``
    (Luo et al., 2023, "Latent Consistency Models"). Returns ``[B, dim]``."""
    if dim % 2:
        raise ValueError(f"guidance embedding dim must be even, got {dim}")
    w = w.reshape(-1).float() * scale
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=w.device, dtype=torch.float32) / max(half - 1, 1))
    angles = w[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
