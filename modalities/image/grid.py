"""PNG grids of samples with their prompts, for people to look at."""

from __future__ import annotations

import math
from pathlib import Path as FilePath

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def to_pil(image: Tensor, scale: int = 1) -> Image.Image:
    """One ``[C, H, W]`` image in [-1, 1] as an 8-bit PIL image, enlarged ``scale`` times (nearest)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array[..., :3]))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def save_grid(images: Tensor, path: str | FilePath, captions: list[str] | None = None, columns: int | None = None,
              scale: int | None = None) -> FilePath:
    """Write ``images`` ``[N, C, H, W]`` as one PNG, each tile captioned (caption text wrapped to the tile)."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("save_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    scale = scale or max(1, 96 // images.shape[-1])
    tiles = [to_pil(img, scale) for img in images]
    tw, th = tiles[0].size
    cap_h = 24 if captions else 0
    canvas = Image.new("L" if tiles[0].mode == "L" else "RGB", (columns * tw, rows * (th + cap_h)), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        x, y = (i % columns) * tw, (i // columns) * (th + cap_h)
        canvas.paste(tile, (x, y + cap_h))
        if captions:
            text = captions[i]
            per_line = max(4, tw // 6)
            draw.text((x + 2, y + 1), text[:per_line], fill=0)
            draw.text((x + 2, y + 12), text[per_line:2 * per_line], fill=0)
    path = FilePath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
