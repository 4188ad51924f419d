"""A small video diffusion transformer that runs bidirectionally (the teacher) or block-causally with a KV cache.

Tokens are per-frame spatial patches; each block has spatial attention within a frame, temporal attention
across frames at the same patch position (the divided space-time attention of TimeSformer, cheap on a CPU),
and an MLP, each modulated per frame by adaLN from the frame's noise time plus the caption embedding (DiT).
Temporal attention uses rotary position embeddings at *absolute* frame indices, so keys cached at their own
positions stay valid as a stream runs past the training length (as in Self-Forcing's rolling cache).

Block-causal mode follows "From Slow Bidirectional to Fast Autoregressive Video Diffusion Models" (CausVid):
frames are grouped in chunks of ``chunk_size``; a frame attends to every frame of its own and earlier chunks.
The network implements ``unidistill.modality.CausalNetwork``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[..., None] * scale * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def rope(x: Tensor, pos: Tensor) -> Tensor:
    """Rotary embedding of ``x [..., L, d]`` at positions ``pos [L]`` (rotate-half form)."""
    d = x.shape[-1]
    freqs = 1.0 / (100.0 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = pos.float()[:, None] * freqs[None]
    cos, sin = ang.cos().repeat(1, 2).to(x.dtype), ang.sin().repeat(1, 2).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Plain softmax attention (differentiable in forward mode too, unlike the fused CPU kernel)."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class KVCache:
    """Per-layer temporal keys/values of committed chunks, oldest first; a rolling window of chunks."""

    def __init__(self, depth: int, window: int | None) -> None:
        self.window = window
        self.chunks: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(depth)]
        self.frames: list[int] = []  # frames per committed chunk (only the live ones)
        self.next_frame = 0

    def keys_values(self, layer: int) -> tuple[Tensor, Tensor] | None:
        if not self.chunks[layer]:
            return None
        ks, vs = zip(*self.chunks[layer], strict=True)
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.chunks[layer].append((k, v))

    def commit(self, frames: int) -> None:
        self.frames.append(frames)
        self.next_frame += frames
        if self.window is not None:
            while len(self.frames) > self.window:
                self.frames.pop(0)
                for layer in self.chunks:
                    layer.pop(0)

    def __len__(self) -> int:
        return sum(self.frames)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.chunks for kv in layer for t in kv)


class Modulation(nn.Module):
    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.proj = nn.Linear(dim, n * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: Tensor) -> list[Tensor]:
        return list(self.proj(F.silu(c)).chunk(self.n, dim=-1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.mod = Modulation(dim, 9)
        self.norm_s, self.norm_t, self.norm_m = (nn.LayerNorm(dim, elementwise_affine=False) for _ in range(3))
        self.qkv_s, self.out_s = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.qkv_t, self.out_t = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, length, three_d = x.shape
        q, k, v = x.reshape(n, length, 3, self.heads, three_d // (3 * self.heads)).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, h: Tensor, c: Tensor, pos: Tensor, mask: Tensor | None, cache: KVCache | None,
                layer: int, store: bool) -> Tensor:
        """Channel-first tokens ``h [B, D, T, P]`` (the layout of conv features, so feature hooks see channels
        on axis 1), per-frame conditioning ``c [B, T, D]``, frame positions ``pos [T]``."""
        h = h.permute(0, 2, 3, 1)
        b, t, p, d = h.shape
        mods = [m[:, :, None] for m in self.mod(c)]
        sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m = mods

        x = self.norm_s(h) * (1 + sc_s) + sh_s
        q, k, v = self._heads(self.qkv_s(x.reshape(b * t, p, d)))
        y = attend(q, k, v, None).transpose(1, 2).reshape(b, t, p, d)
        h = h + g_s * self.out_s(y)

        x = self.norm_t(h) * (1 + sc_t) + sh_t
        x = x.permute(0, 2, 1, 3).reshape(b * p, t, d)
        q, k, v = self._heads(self.qkv_t(x))
        q, k = rope(q, pos), rope(k, pos)
        if cache is not None:
            past = cache.keys_values(layer)
            if store:
                cache.append(layer, k, v)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)
        y = attend(q, k, v, mask).transpose(1, 2).reshape(b, p, t, d).permute(0, 2, 1, 3)
        h = h + g_t * self.out_t(y)

        x = self.norm_m(h) * (1 + sc_m) + sh_m
        return (h + g_m * self.mlp(x)).permute(0, 3, 1, 2)


class VideoDiT(nn.Module):
    """Video DiT on ``[B, T, C, H, W]`` with per-frame time ``[B, T]`` (or ``[B]``) and a caption embedding
    ``[B, cond_dim]`` (zeros = the null caption). Implements ``unidistill.modality.CausalNetwork``.

    Args:
        channels, size: frame channels and side; ``patch``: square patch side.
        dim, depth, heads, mlp_ratio: transformer width, blocks, heads and MLP expansion.
        cond_dim: caption embedding size (MiniLM: 384); ``0`` for an unconditional network.
        chunk_size: frames per chunk in block-causal mode; ``causal``: block-causal (student) or full (teacher).
        cache_window: chunks the rolling KV cache keeps while streaming (``None``: all).
    """

    def __init__(self, channels: int = 1, size: int = 32, patch: int = 4, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, cond_dim: int = 384, chunk_size: int = 4,
                 causal: bool = False, cache_window: int | None = 3) -> None:
        super().__init__()
        if size % patch:
            raise ValueError(f"frame size {size} is not a multiple of the patch size {patch}")
        if dim % (2 * heads):
            raise ValueError(f"dim {dim} must be a multiple of 2 * heads ({2 * heads})")
        if chunk_size < 1 or (cache_window is not None and cache_window < 1):
            raise ValueError(f"chunk_size and cache_window must be >= 1, got {chunk_size}, {cache_window}")
        self.channels, self.size, self.patch, self.dim, self.cond_dim = channels, size, patch, dim, cond_dim
        self.causal, self.chunk_size, self.cache_window = causal, chunk_size, cache_window
        self.grid = size // patch
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, 1, self.grid**2, dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text = nn.Linear(cond_dim, dim) if cond_dim else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_mod = Modulation(dim, 2)
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, patch * patch * channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.guidance: nn.Module | None = None
        self._cache: KVCache | None = None
        self._store = False

    # --- the CausalNetwork contract -------------------------------------------------------------------
    def reset_cache(self) -> None:
        self._cache = KVCache(len(self.blocks), self.cache_window)

    def clear_cache(self) -> None:
        self._cache = None

    @contextmanager
    def storing(self) -> Iterator[None]:
        if self._cache is None:
            raise RuntimeError("storing() needs a stream: call reset_cache() first")
        self._store = True
        try:
            yield
        finally:
            self._store = False

    def cached_frames(self) -> int:
        return 0 if self._cache is None else len(self._cache)

    def cache_nbytes(self) -> int:
        return 0 if self._cache is None else self._cache.nbytes()

    # --- forward --------------------------------------------------------------------------------------
    def block_mask(self, frames: int, device: torch.device) -> Tensor | None:
        """``[T, T]`` boolean mask: frame ``i`` sees frame ``j`` iff ``j``'s chunk is not after ``i``'s."""
        if not self.causal:
            return None
        chunk = torch.arange(frames, device=device) // self.chunk_size
        return chunk[None, :] <= chunk[:, None]

    def enable_guidance_conditioning(self) -> None:
        """Add a zero-initialised scalar input per sample (a guidance scale or a flow-map jump), embedded like time."""
        self.guidance = nn.Sequential(nn.Linear(self.dim, self.dim), nn.SiLU(), nn.Linear(self.dim, self.dim))
        nn.init.zeros_(self.guidance[-1].weight)
        nn.init.zeros_(self.guidance[-1].bias)
        self.guidance.to(self.pos.device)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Tensor:
        b, frames, ch, hgt, wid = x.shape
        if (ch, hgt, wid) != (self.channels, self.size, self.size):
            raise ValueError(f"frames of shape {(ch, hgt, wid)}, expected {(self.channels, self.size, self.size)}")
        t = t.expand(b) if t.ndim == 0 else t
        if t.ndim == 1:
            t = t[:, None].expand(b, frames)
        cache, store = self._cache, self._store
        if cache is not None and frames > self.chunk_size:
            raise ValueError(f"a streaming call takes one chunk of <= {self.chunk_size} frames, got {frames}")
        start = cache.next_frame if cache is not None else 0
        pos = torch.arange(start, start + frames, device=x.device)
        mask = None if cache is not None else self.block_mask(frames, x.device)

        tokens = self.embed(x.reshape(b * frames, ch, hgt, wid)).flatten(2).transpose(1, 2)
        h = tokens.reshape(b, frames, -1, self.dim) + self.pos
        c = self.time(sinusoidal(t, self.dim))
        if self.text is not None and cond is not None:
            c = c + self.text(cond.to(c.dtype))[:, None]
        if guidance is not None:
            if self.guidance is None:
                raise ValueError("this network takes no guidance input; call enable_guidance_conditioning() first")
            c = c + self.guidance(sinusoidal(guidance.reshape(b), self.dim))[:, None]
        h = h.permute(0, 3, 1, 2)
        for i, block in enumerate(self.blocks):
            h = block(h, c, pos, mask, cache, i, store)
        h = h.permute(0, 2, 3, 1)
        if cache is not None and store:
            cache.commit(frames)
        sh, sc = self.final_mod(c)
        h = self.final_norm(h) * (1 + sc[:, :, None]) + sh[:, :, None]
        out = self.head(h)  # [B, T, P, p*p*C]
        g, p = self.grid, self.patch
        out = out.reshape(b, frames, g, g, ch, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, frames, ch, hgt, wid)
