"""Captioned log-mel spectrograms as one PNG (the image plugin's grid writer, low frequencies at the bottom)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from modalities.image.grid import save_grid


def save_spectrograms(log_mel: Tensor, path: str | Path, captions: list[str] | None = None,
                      columns: int | None = None, scale: int = 3) -> Path:
    """Write ``[N, n_mels, frames]`` log-mel spectrograms as a grid; one brightness scale for the whole figure
    (silence black, the figure's loudest bin white), so rows and columns compare."""
    x = log_mel.detach().float().cpu()
    low, high = float(x.min()), float(x.max())
    images = ((x - low) / max(high - low, 1e-6) * 2 - 1).flip(1)[:, None]
    return save_grid(images, path, captions, columns=columns or min(8, x.shape[0]), scale=scale)
