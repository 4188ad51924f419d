"""A small MLP denoiser for vector latents with time, class and optional guidance-scale conditioning."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unidistill.denoiser import guidance_embedding


def time_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoids of ``scale * t`` at frequencies ``1 ... 1/1000``: ``scale = 1000`` is the DDPM-style embedding of
    ``t`` in ``[0, 1]``. Its time derivative grows with ``scale``, which matters to objectives that differentiate
    the network in time (sCM, flow maps: Lu & Song, 2024 find large-frequency embeddings unstable there)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.reshape(-1, 1).float() * scale * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


class MLPDenoiserNet(nn.Module):
    """Residual MLP over ``[B, dim]`` latents. Class label ``-1`` (or ``None``) is the null condition.

    With guidance conditioning enabled, a zero-initialised projection of the sinusoidal guidance
    embedding is added to the time embedding, so a copy of a teacher starts out identical to it.

    ``time_scale`` / ``guidance_scale`` multiply ``t`` / the guidance input before their sinusoidal embeddings
    (default 1000, the DDPM convention); smaller values give smooth, slowly varying embeddings, which the
    time-differentiating objectives (``ContinuousConsistency``, ``FlowMapDistillation``) need.
    """

    def __init__(self, dim: int = 8, hidden: int = 256, depth: int = 4, num_classes: int = 0,
                 time_dim: int = 64, guidance_dim: int = 0, time_scale: float = 1000.0,
                 guidance_scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.num_classes, self.time_dim = dim, num_classes, time_dim
        self.time_scale, self.guidance_scale = time_scale, guidance_scale
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden * 2), nn.SiLU(), nn.Linear(hidden * 2, hidden))
            for _ in range(depth)
        )
        self.cond_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        self.guidance_dim = 0
        self.guidance_proj: nn.Linear | None = None
        if guidance_dim:
            self.enable_guidance_conditioning(guidance_dim)

    def enable_guidance_conditioning(self, guidance_dim: int = 64) -> None:
        self.guidance_dim = guidance_dim
        self.guidance_proj = nn.Linear(guidance_dim, self.time_mlp[-1].out_features)
        nn.init.zeros_(self.guidance_proj.weight)
        nn.init.zeros_(self.guidance_proj.bias)
        self.guidance_proj.to(self.inp.weight.device)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiserNet expects latents [B, {self.dim}], got {tuple(x.shape)}")
        emb = self.time_mlp(time_embedding(t, self.time_dim, self.time_scale))
        if self.class_emb is not None:
            labels = torch.full((x.shape[0],), -1, device=x.device, dtype=torch.long) if cond is None else cond.long()
            emb = emb + self.class_emb(torch.where(labels < 0, self.num_classes, labels))
        if guidance is not None:
            if self.guidance_proj is None:
                raise ValueError("this network was built without guidance conditioning; enable it first")
            emb = emb + self.guidance_proj(guidance_embedding(guidance, self.guidance_dim, self.guidance_scale))
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.cond_proj, strict=True):
            h = h + block(h + proj(emb))
        return self.out(h)
