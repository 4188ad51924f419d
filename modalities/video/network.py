"""A small video diffusion transformer that runs bidirectionally (the teacher) or block-causally with a KV cache.

Tokens are per-frame spatial patches; each block has spatial attention within a frame, temporal attention
across frames at the same patch position (the divided space-time attention of TimeSformer, cheap on a CPU),
and an MLP, each modulated per frame by adaLN from the frame's noise time plus the caption embedding (DiT).
Temporal attention uses rotary position embeddings at *absolute* frame indices, so keys cached at their own
positions stay valid as a stream runs past the training length (as in Self-Forcing's rolling cache).

Block-causal mode follows "From Slow Bidirectional to Fast Autoregressive Video Diffusion Models" (CausVid):
frames are grouped in chunks of ``chunk_size``; a frame attends to every frame of its own and earlier chunks.
The network implements ``unidistill.causal.CausalNetwork``.

At this size a call is a few hundred small kernels, so its fixed cost, not its FLOPs, sets the speed of a
4-frame chunk call (``benchmarks/profile_video.py``). Hence: per-call constants (masks, rotary tables, time
frequencies) are built once and kept, the KV cache is a preallocated buffer written in place, and small ops are
fused (``addcmul``, one copy per attention). Teacher and student run this same code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _no_autograd_state() -> Any:
    """Constant tables are built outside inference mode, so they stay usable by later grad-enabled calls."""
    return torch.inference_mode(False)


@functools.lru_cache(maxsize=32)
def _sinusoidal_freqs(half: int, device: torch.device) -> Tensor:
    with _no_autograd_state(), torch.no_grad():
        return torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)


def sinusoidal(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    ang = t.float()[..., None] * scale * _sinusoidal_freqs(dim // 2, t.device)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def rope_tables(pos: Tensor, d: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos, sin [L, d]`` of the rotate-half rotary embedding at positions ``pos [L]``; the sign of the
    rotated half is folded into ``sin`` (``-x2 * s == x2 * -s`` exactly), so applying it takes no negation."""
    with _no_autograd_state(), torch.no_grad():
        freqs = 1.0 / (100.0 ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d))
        ang = pos.float()[:, None] * freqs[None]
        sin = ang.sin()
        return ang.cos().repeat(1, 2).to(dtype), torch.cat([-sin, sin], dim=-1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x [..., L, d]`` with the tables of ``rope_tables`` (the same values as the
    textbook ``x * cos + cat(-x2, x1) * sin``)."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat([x[..., half:], x[..., :half]], dim=-1), sin)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Plain softmax attention (differentiable in forward mode too, unlike the fused CPU kernel, which is no
    faster at these sizes either)."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class KVCache:
    """Per-layer temporal keys/values of the committed chunks, oldest first, for a rolling window of chunks.

    Each layer keeps one preallocated buffer laid out ``[live frames | the call's frames | spare]``: a chunk
    call writes its keys/values right after the live frames and attends to that contiguous prefix, so no call
    concatenates (or reallocates) the cache, and a cache write (``commit``) only advances the live length.
    Evicting the oldest chunk shifts the buffer left once per commit, keeping the frames in order, so
    attention sums over keys in the same order as a concatenation of the chunks would. With ``window``
    chunks the buffer holds ``window + 2`` chunks (the live window plus a call of up to two chunks: a cache
    write fused with the next chunk's first step, see ``write_mask``); without a window it doubles when full.

    Grad-enabled calls (training rollouts) read the cache functionally instead (a concatenation), because
    writing into a buffer that an earlier call's graph saved would invalidate that graph; their cache writes
    are detached (context never carries gradients).
    """

    def __init__(self, depth: int, window: int | None, chunk_size: int = 1) -> None:
        self.window, self.chunk_size = window, chunk_size
        self.keys: list[Tensor | None] = [None] * depth
        self.values: list[Tensor | None] = [None] * depth
        self.frames: list[int] = []  # frames per committed chunk (only the live ones)
        self.length = 0  # live frames, the prefix of every buffer
        self.next_frame = 0
        self._mask_key: tuple | None = None
        self._mask: Tensor | None = None

    def _buffers(self, layer: int, k: Tensor, need: int) -> tuple[Tensor, Tensor]:
        buf = self.keys[layer]
        shape = (*k.shape[:-2], k.shape[-1])
        if buf is not None and (buf.shape[:-2], buf.shape[-1], buf.dtype, buf.device) != (
                k.shape[:-2], k.shape[-1], k.dtype, k.device):
            raise ValueError(f"a stream's calls must keep their batch, dtype and device: cache of keys "
                             f"{tuple(buf.shape)} {buf.dtype}, new keys {tuple(k.shape)} {k.dtype}")
        if buf is None or buf.shape[-2] < need:
            size = max(need, (self.window + 2) * self.chunk_size if self.window else 2 * need)
            with _no_autograd_state(), torch.no_grad():
                grown = [k.new_empty(*shape[:-1], size, shape[-1]) for _ in range(2)]  # read only once written
                if buf is not None:
                    grown[0][..., : self.length, :] = buf[..., : self.length, :]
                    grown[1][..., : self.length, :] = self.values[layer][..., : self.length, :]
            self.keys[layer], self.values[layer] = grown
        return self.keys[layer], self.values[layer]

    def extend(self, layer: int, k: Tensor, v: Tensor, store: bool) -> tuple[Tensor, Tensor]:
        """The keys/values a chunk with keys/values ``k, v [N, H, T, d]`` attends to: the live cache, then its
        own. With ``store`` they are kept for ``commit``."""
        n, end = self.length, self.length + k.shape[-2]
        if n == 0 and not store:  # nothing to attend to but itself (a stream's first chunk)
            return k, v
        kb, vb = self._buffers(layer, k, end)
        if k.requires_grad or v.requires_grad:
            if store:
                kb[..., n:end, :], vb[..., n:end, :] = k.detach(), v.detach()
            return torch.cat([kb[..., :n, :], k], dim=-2), torch.cat([vb[..., :n, :], v], dim=-2)
        kb[..., n:end, :], vb[..., n:end, :] = k, v
        return kb[..., :end, :], vb[..., :end, :]

    def evicted(self, frames: int) -> int:
        """Frames of the oldest chunks that committing a chunk of ``frames`` frames evicts."""
        if self.window is None:
            return 0
        live = [*self.frames, frames]
        return sum(live[: max(0, len(live) - self.window)])

    def write_mask(self, stored: int, frames: int, device: torch.device) -> Tensor:
        """``[frames, live + frames]`` mask of a call whose first ``stored`` frames are a cache write and whose
        other frames are the next chunk: the written frames see the cache and themselves, as their own write
        call would; the next chunk sees the cache as it is after the write (without the frames it evicts) and
        every frame of the call, as its own first call after the write would. Kept for the next call with the
        same layout (every steady-state chunk of a stream)."""
        key = (self.length, self.evicted(stored), stored, frames, device)
        if key != self._mask_key:
            n, drop = self.length, key[1]
            with _no_autograd_state(), torch.no_grad():
                mask = torch.ones(frames, n + frames, dtype=torch.bool, device=device)
                mask[:stored, n + stored:] = False
                mask[stored:, :drop] = False
            self._mask_key, self._mask = key, mask
        return self._mask  # type: ignore[return-value]

    def commit(self, frames: int) -> None:
        """Make the last stored chunk live; evict the oldest chunks beyond the window."""
        self.frames.append(frames)
        self.next_frame += frames
        self.length += frames
        drop = 0
        while self.window is not None and len(self.frames) > self.window:
            drop += self.frames.pop(0)
        if drop:
            keep = self.length - drop
            with _no_autograd_state(), torch.no_grad():
                for buf in (*self.keys, *self.values):
                    if buf is not None:  # clone: source and destination overlap
                        buf[..., :keep, :] = buf[..., drop:self.length, :].clone()
            self.length = keep

    def __len__(self) -> int:
        return self.length

    def nbytes(self) -> int:
        """Bytes allocated for keys and values (the buffers, including the working chunk's slot)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)


class Modulation(nn.Module):
    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.proj = nn.Linear(dim, n * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, c: Tensor) -> list[Tensor]:
        return self.split(F.silu(c))

    def split(self, c_act: Tensor) -> list[Tensor]:
        """The ``n`` modulations from an already activated ``silu(c)`` (shared by every block of a call)."""
        return list(self.proj(c_act).chunk(self.n, dim=-1))


class PatchEmbed(nn.Conv2d):
    """The patch embedding: a convolution whose stride is its kernel, computed as one matrix product over the
    flattened patches (the same numbers; a small strided convolution costs several times more on a CPU).
    Returns the convolution's ``[N, D, g, g]`` so hooks and the parameters are those of ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        n, ch, hgt, wid = x.shape
        p, gh, gw = self.kernel_size[0], hgt // self.kernel_size[0], wid // self.kernel_size[1]
        patches = x.reshape(n, ch, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, ch * p * p)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return out.transpose(1, 2).reshape(n, self.out_channels, gh, gw)


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

    def _heads(self, x: Tensor) -> Tensor:
        """``[N, L, 3D]`` projections to ``[3, N, heads, L, D / heads]`` (q, k, v), a view."""
        n, length, three_d = x.shape
        return x.reshape(n, length, 3, self.heads, three_d // (3 * self.heads)).permute(2, 0, 3, 1, 4)

    def forward(self, h: Tensor, c_act: Tensor, rope_cs: tuple[Tensor, Tensor], mask: Tensor | None,
                cache: KVCache | None, layer: int, store: bool) -> Tensor:
        """Channel-first tokens ``h [B, D, T, P]`` (the layout of conv features, so feature hooks see channels
        on axis 1), activated per-frame conditioning ``c_act = silu(c) [B, T, D]``, the rotary tables of the
        call's frame positions."""
        h = h.permute(0, 2, 3, 1)
        b, t, p, d = h.shape
        mods = self.mod.proj(c_act).view(b, t, 1, 3, 3, d)  # (spatial, temporal, MLP) x (shift, scale, gate)
        mods[..., 1, :] += 1  # every scale multiplies as 1 + scale: one op for all three
        (sh_s, sc_s, g_s), (sh_t, sc_t, g_t), (sh_m, sc_m, g_m) = (m.unbind(-2) for m in mods.unbind(-3))

        x = torch.addcmul(sh_s, self.norm_s(h), sc_s)
        q, k, v = self._heads(self.qkv_s(x.reshape(b * t, p, d))).contiguous()  # one copy, not one per matmul
        y = attend(q, k, v, None).transpose(1, 2).reshape(b, t, p, d)
        h = torch.addcmul(h, g_s, self.out_s(y))

        x = torch.addcmul(sh_t, self.norm_t(h), sc_t)
        qkv = self._heads(self.qkv_t(x.permute(0, 2, 1, 3).reshape(b * p, t, d)))
        q, k = apply_rope(qkv[:2], *rope_cs)  # q and k in one go
        v = qkv[2]
        if cache is not None:
            k, v = cache.extend(layer, k, v, store)
        y = attend(q, k, v, mask).reshape(b, p, self.heads, t, -1).permute(0, 3, 1, 2, 4).reshape(b, t, p, d)
        h = torch.addcmul(h, g_t, self.out_t(y))

        x = torch.addcmul(sh_m, self.norm_m(h), sc_m)
        return torch.addcmul(h, g_m, self.mlp(x)).permute(0, 3, 1, 2)


class VideoDiT(nn.Module):
    """Video DiT on ``[B, T, C, H, W]`` with per-frame time ``[B, T]`` (or ``[B]``) and a caption embedding
    ``[B, cond_dim]`` (zeros = the null caption). Implements ``unidistill.causal.CausalNetwork``.

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
        self.grid, self.head_dim = size // patch, dim // heads
        self.embed = PatchEmbed(channels, dim, patch, patch)
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
        self._store_frames: int | None = None  # storing(frames=n): only the call's first n frames
        self._masks: dict[tuple, Tensor] = {}  # per-shape constants, built once (see _block_mask, _rope)
        self._rope_key: tuple | None = None
        self._rope_cs: tuple[Tensor, Tensor] | None = None

    # --- the CausalNetwork contract -------------------------------------------------------------------
    def reset_cache(self) -> None:
        self._cache = KVCache(len(self.blocks), self.cache_window, self.chunk_size)

    def clear_cache(self) -> None:
        self._cache = None

    #: ``storing(frames=n)`` is supported (see ``unidistill.objectives.rollout.stream``)
    fuses_cache_writes = True

    @contextmanager
    def storing(self, frames: int | None = None) -> Iterator[None]:
        """Calls inside write their keys/values into the cache. With ``frames``, only a call's first ``frames``
        frames (a whole chunk) are written, and its other frames are the *next* chunk, which attends to the
        cache as it is after the write: a cache write and the next chunk's first denoising step in one call,
        whose outputs equal those of the two calls (to float rounding)."""
        if self._cache is None:
            raise RuntimeError("storing() needs a stream: call reset_cache() first")
        self._store, self._store_frames = True, frames
        try:
            yield
        finally:
            self._store, self._store_frames = False, None

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

    def _block_mask(self, frames: int, device: torch.device) -> Tensor | None:
        """``block_mask``, built once per (frames, chunk_size, causal, device): every training and whole-clip
        call of a run asks for the same few."""
        key = (frames, self.chunk_size, self.causal, device)
        if key not in self._masks:
            if len(self._masks) > 16:
                self._masks.clear()
            with _no_autograd_state():
                self._masks[key] = self.block_mask(frames, device)
        return self._masks[key]

    def _rope(self, start: int, frames: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Rotary tables of frames ``start .. start + frames``, shared by every block of a call and kept for the
        next call at the same positions (the denoising steps and the cache write of a chunk; every call of the
        teacher). One entry only, so an endless stream keeps no table per position."""
        key = (start, frames, device, dtype, self.head_dim)
        if key != self._rope_key:
            pos = torch.arange(start, start + frames, device=device)
            self._rope_key, self._rope_cs = key, rope_tables(pos, key[-1], dtype)
        return self._rope_cs  # type: ignore[return-value]

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
        stored = frames if self._store_frames is None else self._store_frames
        if cache is not None and (max(stored, frames - stored) > self.chunk_size or stored > frames):
            raise ValueError(f"a streaming call takes one chunk of <= {self.chunk_size} frames (or, storing a "
                             f"chunk, that chunk then the next one), got {frames} frames storing {stored}")
        start = cache.next_frame if cache is not None else 0
        if cache is None:
            mask = self._block_mask(frames, x.device)
        else:
            mask = cache.write_mask(stored, frames, x.device) if store and stored < frames else None

        tokens = self.embed(x.reshape(b * frames, ch, hgt, wid)).flatten(2).transpose(1, 2)
        h = tokens.reshape(b, frames, -1, self.dim) + self.pos
        rope_cs = self._rope(start, frames, x.device, h.dtype)
        c = self.time(sinusoidal(t, self.dim))
        if self.text is not None and cond is not None:
            c = c + self.text(cond.to(c.dtype))[:, None]
        if guidance is not None:
            if self.guidance is None:
                raise ValueError("this network takes no guidance input; call enable_guidance_conditioning() first")
            c = c + self.guidance(sinusoidal(guidance.reshape(b), self.dim))[:, None]
        c_act = F.silu(c)
        h = h.permute(0, 3, 1, 2)
        for i, block in enumerate(self.blocks):
            h = block(h, c_act, rope_cs, mask, cache, i, store)
        h = h.permute(0, 2, 3, 1)
        if cache is not None and store:
            cache.commit(stored)
        sh, sc = self.final_mod.split(c_act)
        h = torch.addcmul(sh[:, :, None], self.final_norm(h), 1 + sc[:, :, None])
        out = self.head(h)  # [B, T, P, p*p*C]
        g, p = self.grid, self.patch
        out = out.reshape(b, frames, g, g, ch, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, frames, ch, hgt, wid)
