"""PNG artefacts: rows of images side by side (LR shown with nearest-neighbour upsampling), each labelled, with an
optional zoomed crop of every image beside it so fine detail can be compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor


def _uint8(x: Tensor) -> np.ndarray:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def _to_hr(x: Tensor, size: tuple[int, int]) -> Tensor:
    """An image shown at the HR size: LR images (smaller) are upsampled with nearest neighbours."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x[None].float(), size=size, mode="nearest")[0]


def save_rows(rows: dict[str, Tensor], scale: int, path: str | Path, limit: int = 8,
              zoom: tuple[int, int, int] | None = None) -> Path:
    """One column per label, one row per image (up to ``limit``). ``zoom = (top, left, side)`` adds, below each
    image, its ``side``-pixel crop at that HR position enlarged to the image width."""
    from PIL import Image, ImageDraw

    labels = list(rows)
    n = min(limit, next(iter(rows.values())).shape[0])
    hr_size = max((tuple(v.shape[-2:]) for v in rows.values()), key=lambda s: s[0] * s[1])
    h, w = hr_size
    zh = 0
    if zoom is not None:
        top, left, side = zoom
        zh = w
    label_h = 14
    canvas = Image.new("RGB", (w * len(labels), label_h + n * (h + zh)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        draw.text((j * w + 2, 1), label[: max(4, w // 6)], fill="black")
        for i in range(n):
            img = _to_hr(rows[label][i], hr_size)
            y = label_h + i * (h + zh)
            canvas.paste(Image.fromarray(_uint8(img)), (j * w, y))
            if zoom is not None:
                crop = img[:, top:top + side, left:left + side]
                big = F.interpolate(crop[None].float(), size=(zh, w), mode="nearest")[0]
                canvas.paste(Image.fromarray(_uint8(big)), (j * w, y + h))
                draw.rectangle([j * w + left, y + top, j * w + left + side - 1, y + top + side - 1], outline="red")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


