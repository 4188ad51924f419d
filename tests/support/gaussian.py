"""Closed forms for Gaussian data, for tests that pin an objective's formula exactly.

Data ``x0 ~ N(m + cond, c^2 I)`` (``cond`` a per-sample float shift, ``None`` or 0 for the null condition) on any
path ``x_t = alpha x0 + sigma eps``. The posterior mean is linear in the data mean, so classifier-free guidance
``u + w (c - u)`` of this teacher is the same teacher with mean ``m + w cond``: the guided teacher, its PF-ODE flow
map, consistency function and average velocity are all closed forms. Everything works in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from unidistill.paths import Path, Prediction, expand_like


def _mean(m: float, cond: Tensor | None, x: Tensor) -> Tensor | float:
    if cond is None:
        return m
    return m + expand_like(cond.to(x.dtype), x)


def posterior_x0(path: Path, x: Tensor, t: Tensor, mean: Tensor | float, c: float) -> Tensor:
    """``E[x0 | x_t]``."""
    a, s = expand_like(path.alpha(t), x), expand_like(path.sigma(t), x)
    return mean + a * c**2 * (x - a * mean) / (a**2 * c**2 + s**2)


def flow_map(path: Path, x: Tensor, t: Tensor, s: Tensor, mean: Tensor | float, c: float) -> Tensor:
    """The exact PF-ODE solution from ``(x, t)`` to time ``s``; it keeps ``(x - alpha m) / sqrt(alpha^2 c^2 + s^2)``."""
    a_t, s_t = expand_like(path.alpha(t), x), expand_like(path.sigma(t), x)
    a_s, s_s = expand_like(path.alpha(s), x), expand_like(path.sigma(s), x)
    return a_s * mean + torch.sqrt(a_s**2 * c**2 + s_s**2) * (x - a_t * mean) / torch.sqrt(a_t**2 * c**2 + s_t**2)


def velocity(path: Path, x: Tensor, t: Tensor, mean: Tensor | float, c: float) -> Tensor:
    """The PF-ODE drift ``alpha' x0_hat + sigma' eps_hat``."""
    x0 = posterior_x0(path, x, t, mean, c)
    eps = (x - expand_like(path.alpha(t), x) * x0) / expand_like(path.sigma(t), x)
    return path.velocity(x0, eps, t)


def guided(m: float, cond: Tensor, w: float) -> tuple[float, Tensor]:
    """The guided teacher's data mean is ``m + w cond``: return ``(m, w cond)`` to pass as ``(m, cond)``."""
    return m, w * cond


class GaussianTeacherNet(nn.Module):
    """x0-prediction network of the exact teacher."""

    def __init__(self, path: Path, m: float = 0.3, c: float = 0.5) -> None:
        super().__init__()
        self.path, self.m, self.c = path, m, c

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        return posterior_x0(self.path, x, t, _mean(self.m, cond, x), self.c)


def bump(x: Tensor, t: Tensor, h: Tensor | None = None) -> Tensor:
    """A smooth perturbation that depends on ``x``, ``t`` (and a jump length ``h``)."""
    tt = expand_like(t, x)
    out = torch.sin(3 * x) * (0.5 + tt)
    return out if h is None else out * (1 + expand_like(h, x))


class ConsistencyNet(nn.Module):
    """x0-prediction network whose output is the exact consistency function ``flow_map(x, t -> 0)`` of the teacher
    with data mean ``m + w cond``, plus ``delta * bump``."""

    def __init__(self, path: Path, m: float = 0.3, c: float = 0.5, w: float = 1.0, delta: float = 0.0) -> None:
        super().__init__()
        self.path, self.m, self.c, self.w, self.delta = path, m, c, w, delta

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        mean = _mean(self.m, None if cond is None else self.w * cond, x)
        return flow_map(self.path, x, t, torch.zeros_like(t), mean, self.c) + self.delta * bump(x, t)


class AverageVelocityNet(nn.Module):
    """flow-prediction network whose output, with the jump length ``h = t - r`` as guidance input, is the exact
    average velocity ``(x - flow_map(x, t -> r)) / h`` (the instantaneous velocity at ``h = 0``), plus
    ``delta * bump``."""

    def __init__(self, path: Path, m: float = 0.3, c: float = 0.5, w: float = 1.0, delta: float = 0.0) -> None:
        super().__init__()
        self.path, self.m, self.c, self.w, self.delta = path, m, c, w, delta

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        mean = _mean(self.m, None if cond is None else self.w * cond, x)
        h = torch.zeros_like(t) if guidance is None else guidance.to(x.dtype)
        safe = torch.where(h > 0, h, torch.ones_like(h))
        jump = (x - flow_map(self.path, x, t, t - safe, mean, self.c)) / expand_like(safe, x)
        u = torch.where(expand_like(h > 0, x).bool(), jump, velocity(self.path, x, t, mean, self.c))
        return u + self.delta * bump(x, t, h)


class Recorder(nn.Module):
    """A denoiser-like wrapper that records every call's ``(x, t, cond, guidance)`` and its prediction."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[Tensor, Tensor, object, object, Prediction]] = []

    @property
    def path(self) -> Path:
        return self.inner.path

    @property
    def prediction(self) -> str:
        return self.inner.prediction

    @property
    def network(self) -> nn.Module:
        """The wrapped network (feature hooks and the causal contract are found there)."""
        return getattr(self.inner, "network", self.inner)

    nfe_per_call = 1

    def raw(self, x: Tensor, t: Tensor, cond: object = None, guidance: Tensor | None = None) -> Tensor:
        out = self.inner.raw(x, t, cond, guidance)
        self.calls.append((x.detach().clone(), t.detach().clone(), cond, guidance, out.detach().clone()))
        return out

    def forward(self, x: Tensor, t: Tensor, cond: object = None, guidance: Tensor | None = None) -> Prediction:
        out = self.inner(x, t, cond, guidance)
        self.calls.append(
            (x.detach().clone(), t.detach().clone(), cond, guidance, Prediction(*(o.detach() for o in out)))
        )
        return out

    def velocity(self, x: Tensor, t: Tensor, cond: object = None, guidance: Tensor | None = None) -> Tensor:
        return self.path.velocity(*self(x, t, cond, guidance), t)


class CausalGaussianNet(GaussianTeacherNet):
    """The exact teacher frame by frame (frames are independent Gaussians) behind the ``CausalNetwork`` contract of
    ``unidistill.causal``; it records what a ``storing()`` call writes as context (it never reads the cache)."""

    def __init__(self, path: Path, m: float = 0.3, c: float = 0.5, chunk_size: int = 2) -> None:
        super().__init__(path, m, c)
        self.causal, self.chunk_size, self.cache_window = True, chunk_size, None
        self.stored: list[Tensor] = []
        self._store = False

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        if self._store:
            self.stored.append(x.detach().clone())
        return super().forward(x, t, cond, guidance)

    def reset_cache(self) -> None:
        self.stored.clear()

    def clear_cache(self) -> None:
        pass

    @contextmanager
    def storing(self, frames: int | None = None) -> Iterator[None]:
        self._store = True
        try:
            yield
        finally:
            self._store = False

    def cached_frames(self) -> int:
        return sum(s.shape[1] for s in self.stored)
