"""Tiled evaluation of a super-resolution denoiser, so a full photograph of any size is processed in pieces that
fit in memory.

``TiledDenoiser`` wraps a denoiser: each call cuts the latent and the spatial tensors of the condition into
overlapping tiles, runs the wrapped denoiser on batches of tiles, and blends the predictions with a weight that is
1 inside a tile and falls off linearly over the ``overlap`` band (a separable "feathered" window; where tiles
overlap the weights are renormalised to sum to 1 at every pixel). Because the sampler's state stays the whole image
and only the network calls are tiled, every core solver runs unchanged on a tiled model, and the noise of a tile is
the image's own noise at those pixels. With ``overlap = 0`` tiles abut and the result equals running each tile
alone; with a pointwise network it equals whole-image evaluation exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from unidistill.paths import Prediction


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``[0, length)`` with at least ``overlap`` shared pixels
    (the last tile is aligned to the end)."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(start: int, tile: int, overlap: int, total: int) -> Tensor:
    """1-D blending weight of one tile: linear ramps of ``overlap`` pixels on sides shared with a neighbour."""
    w = torch.ones(tile, dtype=torch.float64)
    if overlap > 0:
        edge = (torch.arange(overlap, dtype=torch.float64) + 1) / (overlap + 1)
        if start > 0:
            w[:overlap] = torch.minimum(w[:overlap], edge)
        if start + tile < total:
            w[-overlap:] = torch.minimum(w[-overlap:], edge.flip(0))
    return w


def _spatial(value: Any, h: int, w: int) -> bool:
    return isinstance(value, Tensor) and value.ndim == 4 and tuple(value.shape[-2:]) == (h, w)


class TiledDenoiser(nn.Module):
    """A denoiser-like view of ``denoiser`` evaluated tile by tile (see the module docstring).

    Condition entries with the latent's spatial size (e.g. the upsampled LR image) are tiled with it; entries at
    another size are tiled at their own scale when the ratio is an integer (e.g. the LR image itself at 1/scale).
    ``tile`` must be a multiple of the network's size multiple; ``batch`` tiles go through the network at once.
    """

    def __init__(self, denoiser: nn.Module, tile: int = 128, overlap: int = 16, batch: int = 16,
                 progress: bool = False) -> None:
        super().__init__()
        self.denoiser, self.tile, self.overlap, self.batch = denoiser, int(tile), int(overlap), int(batch)
        self.progress = progress
        tile_starts(self.tile + 1, self.tile, self.overlap)  # validates tile > overlap

    @property
    def path(self) -> Any:
        return self.denoiser.path

    @property
    def nfe_per_call(self) -> int:
        return self.denoiser.nfe_per_call

    def tiles(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """``(top, left, height, width)`` of every tile of an ``h x w`` latent."""
        th, tw = min(self.tile, h), min(self.tile, w)
        return [(r, c, th, tw) for r in tile_starts(h, th, self.overlap) for c in tile_starts(w, tw, self.overlap)]

    def _cond_tile(self, cond: Any, h: int, w: int, box: tuple[int, int, int, int]) -> Any:
        r, c, th, tw = box
        if isinstance(cond, dict):
            return {k: self._cond_tile(v, h, w, box) for k, v in cond.items()}
        if isinstance(cond, Tensor) and cond.ndim == 4:
            ch, cw = cond.shape[-2:]
            if (ch, cw) == (h, w):
                return cond[..., r:r + th, c:c + tw]
            if h % ch == 0 and w % cw == 0 and h // ch == w // cw and all(v % (h // ch) == 0 for v in box):
                f = h // ch
                return cond[..., r // f:(r + th) // f, c // f:(c + tw) // f]
        return cond

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        b, _, h, w = x_t.shape
        boxes = self.tiles(h, w)
        x0 = torch.zeros_like(x_t, dtype=torch.float64)
        eps = torch.zeros_like(x_t, dtype=torch.float64)
        weight = torch.zeros((1, 1, h, w), dtype=torch.float64, device=x_t.device)
        chunks = [boxes[i:i + max(1, self.batch // b)] for i in range(0, len(boxes), max(1, self.batch // b))]
        for chunk in tqdm(chunks, desc="tiles", disable=not self.progress, leave=False):
            xs = torch.cat([x_t[..., r:r + th, c:c + tw] for r, c, th, tw in chunk])
            ts = torch.cat([t] * len(chunk))
            cs = _cat([self._cond_tile(cond, h, w, box) for box in chunk])
            gs = None if guidance is None else torch.cat([guidance] * len(chunk))
            pred = self.denoiser(xs, ts, cs, gs)
            for k, (r, c, th, tw) in enumerate(chunk):
                wt = (ramp(r, th, self.overlap, h)[:, None] * ramp(c, tw, self.overlap, w)[None, :]).to(x_t.device)
                part = slice(k * b, (k + 1) * b)
                x0[..., r:r + th, c:c + tw] += wt * pred.x0[part].double()
                eps[..., r:r + th, c:c + tw] += wt * pred.eps[part].double()
                weight[..., r:r + th, c:c + tw] += wt
        return Prediction((x0 / weight).to(x_t.dtype), (eps / weight).to(x_t.dtype))


def _cat(conds: list[Any]) -> Any:
    if isinstance(conds[0], dict):
        return {k: _cat([c[k] for c in conds]) for k in conds[0]}
    if isinstance(conds[0], Tensor):
        return torch.cat(conds)
    return conds[0]
