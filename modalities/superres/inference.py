"""Full-image super-resolution with a trained denoiser: any input size, tiles when the image is large, a progress
bar over network calls.

Inputs are checked and converted here: ``[H, W]`` or ``[1, H, W]`` grayscale is replicated to RGB (the networks are
RGB); RGBA is refused (alpha has no single right background; composite it first, e.g. Pillow's
``Image.convert("RGB")``); ``uint8`` arrays are scaled to ``[-1, 1]``. An upsampled size that the network does not
accept is reflect-padded to a multiple of its size multiple and cropped back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from modalities.superres.degradation import upsample
from modalities.superres.tiling import TiledDenoiser
from unidistill.solvers import SOLVERS, initial_latent


def as_rgb(image: Any) -> Tensor:
    """An image as ``[3, H, W]`` float in ``[-1, 1]``: a tensor in ``[-1, 1]`` (``[H, W]``, ``[C, H, W]``) or a
    ``uint8`` array (``[H, W]`` or ``[H, W, C]``, as Pillow and scikit-image give). Grayscale is replicated to RGB;
    RGBA and other channel counts are refused."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (0..255), got {image.dtype}; pass a tensor in [-1, 1] else")
        t = torch.from_numpy(image.astype(np.float32) / 127.5 - 1)
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1) if t.ndim == 3 else t
    elif isinstance(image, Tensor):
        t = image.float()
        t = t[None] if t.ndim == 2 else t
    else:
        raise TypeError(f"an image must be a torch tensor or a uint8 numpy array, got {type(image).__name__}")
    if t.ndim != 3:
        raise ValueError(f"an image must be [H, W] or [C, H, W] (or [H, W, C] uint8), got shape {tuple(t.shape)}")
    channels = t.shape[0]
    if channels == 1:
        return t.expand(3, -1, -1).contiguous()
    if channels == 4:
        raise ValueError("RGBA input is refused: the alpha channel has no single right background; composite it "
                         "onto one first (e.g. PIL.Image.open(f).convert('RGB'))")
    if channels != 3:
        raise ValueError(f"an image must have 1 (grayscale) or 3 (RGB) channels, got {channels}")
    return t


class _Counted(nn.Module):
    """Advances a progress bar by one per network evaluation."""

    def __init__(self, model: nn.Module, bar: Any) -> None:
        super().__init__()
        self.model, self.bar = model, bar

    @property
    def path(self) -> Any:
        return self.model.path

    @property
    def nfe_per_call(self) -> int:
        return self.model.nfe_per_call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        self.bar.update(1)
        return out


@torch.no_grad()
def upscale(modality: Any, model: nn.Module, lr: Any, steps: int, solver: str = "ddim", seed: int = 0,
            tile: int | None = None, overlap: int | None = None, progress: bool = True,
            batch: int = 16) -> Tensor:
    """Super-resolve one low-resolution image (see ``as_rgb`` for accepted inputs) with ``model`` (a teacher, a
    student's sampling model, a regression network) in ``steps`` steps of ``solver``; returns ``[3, sH, sW]`` in
    ``[-1, 1]``. Images whose output exceeds ``modality.max_pixels`` are tiled (``modality.tile`` /
    ``tile_overlap`` unless given); ``tile`` forces tiling at that size."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    lr = as_rgb(lr)
    s, m = modality.scale, modality.multiple
    up = upsample(lr[None], s)
    h, w = up.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        if ph >= h or pw >= w:
            up = F.pad(up, (0, pw, 0, ph), mode="replicate")
        else:
            up = F.pad(up, (0, pw, 0, ph), mode="reflect")
    cond = {"up": up}
    tiled = tile is not None or up.shape[-2] * up.shape[-1] > modality.max_pixels
    if tiled:
        model = TiledDenoiser(model, tile or modality.tile, modality.tile_overlap if overlap is None else overlap,
                              batch)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(up.shape, generator=g)
    grid = model.path.time_grid(steps)
    calls = steps * (2 if solver == "heun" else 1)
    with tqdm(total=calls, desc=f"super-resolving {h}x{w}", disable=not progress, leave=False) as bar:
        x = SOLVERS[solver](_Counted(model, bar), initial_latent(model.path, noise, float(grid[0])), grid, cond,
                            generator=g).x
    return modality.images(x, cond)[0, :, :h, :w]
