"""Training-time distributions over the path's time axis.

Each sampler draws ``n`` times for a given path from a caller-owned ``torch.Generator`` (so draws are
reproducible and checkpointable). A draw is a fraction ``u`` of the path's range, placed by ``path.time_at(u)``:
linear in ``t`` on most paths, the Karras rho-schedule position on EDM, so ``UniformTime(0.02, 0.98)`` is DMD2's
``U[2%, 98%]`` Karras index there rather than uniform in sigma (docs/formulations.md §1.5). Distributions stated in
sigma/SNR terms (EDM log-normal) are mapped onto any path through ``path.t_from_noise_ratio``, so the same config
works for every path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unidistill.paths import Path


def _device(generator: torch.Generator | None) -> torch.device | None:
    """Draw on the generator's device (a CUDA generator cannot fill a CPU tensor)."""
    return None if generator is None else generator.device


class TimeSampler:
    """Base: draw ``n`` times in ``[t_min, t_max]`` of ``path`` (fractions of the path's range)."""

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1 (fractions of the path's range), got {t_min}, {t_max}")
        self.t_min, self.t_max = t_min, t_max

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def unit(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Draws in ``[0, 1]`` before rescaling to the path's range."""
        return torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))

    def __call__(self, path: Path, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = self.unit(n, generator)
        return path.time_at(self.t_min + (self.t_max - self.t_min) * u).float()


class UniformTime(TimeSampler):
    """``t ~ U[t_min, t_max]``."""


class LogitNormalTime(TimeSampler):
    """``t = sigmoid(m + s n)`` rescaled affinely into the range
    (Esser et al., 2024, "Scaling Rectified Flow Transformers")."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        super().__init__(t_min, t_max)
        self.mean, self.std = mean, std

    def unit(self, n: int, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(n, generator=generator, dtype=torch.float64, device=_device(generator))
        return torch.sigmoid(self.mean + self.std * noise)


class ShiftedTime(TimeSampler):
    """Uniform time warped by ``t' = s t / (1 + (s - 1) t)``, moving mass to high noise (SD3, Wan; shift ``s``)."""

    def __init__(self, shift: float = 3.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        super().__init__(t_min, t_max)
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = shift

    def unit(self, n: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))
        return self.shift * u / (1 + (self.shift - 1) * u)


class LogNormalSigmaTime(TimeSampler):
    """EDM's ``ln(sigma/alpha) ~ N(P_mean, P_std^2)`` (Karras et al., 2022), mapped onto any path by SNR.

    Draws are truncated to the path's ``[t_min, t_max]`` fraction by inverse-CDF sampling.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, t_min: float = 0.0, t_max: float = 1.0) -> None:
        super().__init__(t_min, t_max)
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, path: Path, n: int, generator: torch.Generator | None = None) -> Tensor:
        lo_t = path.time_at(torch.tensor(self.t_min, dtype=torch.float64)).clamp_min(1e-6)
        hi_t = path.time_at(torch.tensor(self.t_max, dtype=torch.float64)) * (1 - 1e-6)
        lo, hi = (torch.log(path.noise_ratio(x)) for x in (lo_t, hi_t))
        normal = torch.distributions.Normal(self.p_mean, self.p_std)
        c_lo, c_hi = normal.cdf(lo), normal.cdf(hi)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))
        p = (c_lo + u * (c_hi - c_lo)).clamp(1e-12, 1 - 1e-12)
        log_ratio = self.p_mean + self.p_std * math.sqrt(2) * torch.erfinv(2 * p - 1)
        return path.t_from_noise_ratio(torch.exp(log_ratio)).float()
