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
