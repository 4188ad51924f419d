"""Small any-shape networks for objective tests."""

import torch
from torch import nn


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


SHAPES = [(8,), (3, 8, 8), (4, 2, 6, 6)]


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
