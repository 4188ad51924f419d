"""Transformer pieces shared by the shape networks: embeddings of time and coordinates, and an adaLN-zero block
("Scalable Diffusion Models with Transformers", Peebles & Xie, 2023) whose attention can ignore padded tokens.

Blocks take and return channel-first tokens ``[B, D, L]`` (the layout of convolution features), so the core's
feature hooks (adversarial heads, DMD2's GAN head) see channels on axis 1 as for every other network. With a
token ``mask`` ``[B, L]`` (True = real), a padded token is never a key or value of another token's attention, and
its own hidden state is set to exactly zero after every block: nothing a padded token holds reaches a real one,
and a hooked feature at a padded position is the same constant whatever the padded input was.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal(x: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """``[B]`` scalars (core time in ``[0, 1]``, a guidance scale) to ``[B, dim]`` sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.reshape(-1, 1).float() * scale * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def fourier_features(coords: Tensor, num_frequencies: int) -> Tensor:
    """Coordinates ``[..., 3]`` in ``[-1, 1]`` to ``[..., 3 + 6 * num_frequencies]``: the coordinates and their
    sines and cosines at octave frequencies ``pi * 2^k`` (NeRF's positional encoding)."""
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=coords.device, dtype=coords.dtype)
    angles = (coords[..., None] * freqs).flatten(-2)
    return torch.cat([coords, angles.sin(), angles.cos()], dim=-1)


def check_text_layers(text_layers: int) -> int:
    """``text_layers`` is 1 (a linear caption embedding) or 2 (an MLP); anything else is refused when configured."""
    if text_layers not in (1, 2):
        raise ValueError(f"text_layers must be 1 (linear) or 2 (an MLP), got {text_layers}")
    return text_layers


class Conditioning(nn.Module):
    """The per-sample conditioning vector ``c [B, D]``: time, an optional caption embedding and, once
    ``enable_guidance`` is called, a zero-initialised second scalar (an LCM guidance scale, a flow-map jump).

    ``text_layers`` 1 projects the caption linearly; 2 embeds it through a two-layer MLP, as DiT-style and Point-E
    models embed their condition: sentence vectors of captions that differ by one word ("a tall thin cylinder",
    "a tall thin box") are close, and a nonlinear embedding separates them faster than a linear one learns to."""

    def __init__(self, dim: int, cond_dim: int, text_layers: int = 1) -> None:
        super().__init__()
        check_text_layers(text_layers)
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text: nn.Module | None = None
        if cond_dim:
            self.text = (nn.Linear(cond_dim, dim) if text_layers == 1 else
                         nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim)))
        self.guidance: nn.Module | None = None

    def enable_guidance(self) -> None:
        self.guidance = nn.Sequential(nn.Linear(self.dim, self.dim), nn.SiLU(), nn.Linear(self.dim, self.dim))
        nn.init.zeros_(self.guidance[-1].weight)
        nn.init.zeros_(self.guidance[-1].bias)
        self.guidance.to(self.time[0].weight.device)

    def forward(self, t: Tensor, text: Tensor | None, guidance: Tensor | None) -> Tensor:
        c = self.time(sinusoidal(t, self.dim))
        if self.text is not None and text is not None:
            c = c + self.text(text.float())
        if guidance is not None:
            if self.guidance is None:
                raise ValueError("this network takes no guidance input; call enable_guidance_conditioning() first")
            c = c + self.guidance(sinusoidal(guidance, self.dim))
        return c


def attention_mask(mask: Tensor) -> Tensor:
    """``[B, L]`` token mask to the ``[B, 1, L, L]`` attention mask: a query sees the real keys and itself (a
    padded query then never has an empty row, so a shape with no real token gives zeros, not NaN)."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return (mask[:, None, :] | eye)[:, None]


class Block(nn.Module):
    """Pre-norm self-attention and MLP, each shifted, scaled and gated by ``c`` (adaLN-zero: gates start at 0)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, h: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        """``h [B, D, L]`` channel-first tokens, ``c [B, D]`` conditioning, ``mask [B, L]`` (True = real)."""
        x = h.transpose(1, 2)
        b, length, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.mod(F.silu(c))[:, None].chunk(6, dim=-1)
        y = self.norm1(x) * (1 + sc1) + sh1
        q, k, v = self.qkv(y).reshape(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else attention_mask(mask))
        x = x + g1 * self.out(y.transpose(1, 2).reshape(b, length, d))
        x = x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        return x.transpose(1, 2)


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a zero-initialised projection from tokens ``[B, D, L]`` to ``[B, L, out]``."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out)
        for layer in (self.mod, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.mod(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.proj(self.norm(h.transpose(1, 2)) * (1 + scale) + shift)
