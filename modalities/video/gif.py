"""Writing clips as animated GIFs (PIL) for people to look at."""

from __future__ import annotations

import math
from pathlib import Path as FilePath

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def tile(clips: Tensor, columns: int | None = None, pad: int = 1) -> Tensor:
    """``[N, T, C, H, W]`` in ``[0, 1]`` -> one clip ``[T, C, H', W']`` with the N clips in a grid."""
    n, t, c, h, w = clips.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = torch.zeros(t, c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, cols)
        out[:, :, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = clips[i]
    return out


def save_gif(clips: Tensor, path: str | FilePath, scale: int = 3, fps: int = 8) -> FilePath:
    """Save ``[N, T, C, H, W]`` (or one ``[T, C, H, W]``) clips in ``[0, 1]`` as a looping GIF grid."""
    clips = clips.detach().float().cpu()
    if clips.ndim == 4:
        clips = clips[None]
    grid = tile(clips.clamp(0, 1))
    frames = []
    for frame in grid:
        arr = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    path = FilePath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
