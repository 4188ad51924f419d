"""``Batch``: one training batch in latent space, the unit every objective, plugin and engine exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class Batch:
    """Data latents ``x0`` ``[B, *S]`` (``None`` for data-free objectives), an opaque condition, and an optional
    validity ``mask`` for ragged latents (1 = a real element; padded tokens of point sets or sparse voxels are 0
    and contribute nothing to any loss). ``size`` is ``B``; it must be given when ``x0`` is ``None``."""

    x0: Tensor | None
    cond: Any = None
    mask: Tensor | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if self.x0 is not None:
            self.size = self.x0.shape[0]
        if self.size <= 0:
            raise ValueError("a Batch needs x0 or a positive size")
        if self.mask is not None:
            if self.mask.shape[0] != self.size:
                raise ValueError(f"Batch mask has batch size {self.mask.shape[0]}, the batch has {self.size}")
            if self.x0 is not None and tuple(self.mask.shape) != tuple(self.x0.shape[: self.mask.ndim]):
                raise ValueError(f"Batch mask of shape {tuple(self.mask.shape)} must match the leading axes of "
                                 f"x0 {tuple(self.x0.shape)} (e.g. [B, N] for point sets [B, N, 3])")
