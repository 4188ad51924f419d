"""Small any-shape networks for objective tests: each works on any latent shape ``[B, *S]``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AnyShapeNet(nn.Module):
    """Per-element MLP with time (and optional guidance) modulation; works on any latent shape ``[B, *S]``.
    Conditions are ignored unless given as a ``[B]`` float tensor, which shifts the output."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.time = nn.Linear(1, hidden)
        self.guidance = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x, t, cond=None, guidance=None):
        b = x.shape[0]
        t = t.reshape(b, -1)[:, :1] if t.ndim > 1 else t[:, None]
        h = self.inp(x.reshape(b, -1, 1)) + self.time(t.float())[:, None, :]
        if guidance is not None:
            h = h + self.guidance(guidance.reshape(b, 1).float())[:, None, :]
        out = self.out(torch.tanh(h)).reshape(x.shape)
        if isinstance(cond, torch.Tensor) and cond.dtype.is_floating_point:
            out = out + cond.reshape(b, *([1] * (x.ndim - 1)))
        return out

    def enable_guidance_conditioning(self):
        pass


class GaussianX0Net(nn.Module):
    """Exact x0-prediction for data ~ N(mean, c^2 I) on ``path``:
    E[x0 | x_t] = mean + a c^2 (x_t - a mean) / (a^2 c^2 + s^2)."""

    def __init__(self, path, c: float = 0.5, mean: float = 0.3) -> None:
        super().__init__()
        self.path, self.c, self.mean = path, c, mean

    def forward(self, x, t, cond=None):
        from unidistill.paths import expand_like

        a, s = expand_like(self.path.alpha(t), x), expand_like(self.path.sigma(t), x)
        return self.mean + a * self.c**2 * (x - a * self.mean) / (a**2 * self.c**2 + s**2)


def _fourier(v: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32, device=v.device) / half)
    ang = v.reshape(-1, 1).float() * 10.0 * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).to(v.dtype if v.is_floating_point() else torch.float32)


class TinyNet(nn.Module):
    """Per-element MLP ``(x_elem, emb(t, cond, guidance)) -> out_elem``; works on any latent shape ``[B, *S]``."""

    def __init__(self, hidden: int = 16, num_classes: int = 3, emb: int = 8) -> None:
        super().__init__()
        self.emb, self.num_classes = emb, num_classes
        self.t_proj = nn.Linear(emb, hidden)
        self.g_proj = nn.Linear(emb, hidden)
        self.c_emb = nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(1, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        t = t.reshape(t.shape[0], -1)[:, 0]  # per-sample time for the embedding
        e = self.t_proj(_fourier(t, self.emb))
        if guidance is not None:
            e = e + self.g_proj(_fourier(guidance, self.emb))
        if cond is not None:
            e = e + self.c_emb(torch.where(cond < 0, self.num_classes, cond).long())
        e = e.reshape(e.shape[0], *([1] * (x.ndim - 1)), e.shape[1])
        h = torch.nn.functional.silu(self.inp(x.unsqueeze(-1)) + e)
        h = torch.nn.functional.silu(self.mid(h)) + h
        return self.out(h).squeeze(-1)


SHAPES = [(8,), (3, 8, 8), (4, 2, 6, 6)]
