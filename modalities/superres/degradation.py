"""Low-resolution inputs from high-resolution images: bicubic downsampling with antialiasing, and a "real-world"
degradation (blur, downsampling, noise, JPEG) in the spirit of the synthetic pipelines OSEDiff and SinSR train and
evaluate on (Wang et al., 2021, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic
Data", first order only).

Images are ``[B, C, H, W]`` in ``[-1, 1]``; every random draw comes from a ``numpy`` generator the caller seeds, so
an example is a pure function of its seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEGRADATIONS = ("bicubic", "realistic")


def downsample(x: Tensor, scale: int) -> Tensor:
    """Bicubic downsampling by ``scale`` with antialiasing (the kernel widened by the scale, as MATLAB's
    ``imresize`` does); sides must be multiples of ``scale``."""
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image sides {h}x{w} must be multiples of the scale factor {scale}")
    return F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)


def upsample(x: Tensor, scale: int) -> Tensor:
    """Bicubic upsampling by ``scale`` (the bicubic baseline and the network's conditioning image)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Isotropic Gaussian blur (reflect padding, radius 3 sigma)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def jpeg(x: Tensor, quality: int) -> Tensor:
    """JPEG compression round trip through Pillow at ``quality`` (one image ``[C, H, W]`` in ``[-1, 1]``)."""
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(out).permute(2, 0, 1) / 127.5 - 1


@dataclass
class Degradation:
    """``kind="bicubic"``: bicubic x``scale`` with antialiasing. ``kind="realistic"``: Gaussian blur with
    ``sigma ~ U[blur]``, bicubic downsampling, Gaussian noise of std ``~ U[noise]`` (in 8-bit levels), then JPEG at
    quality ``~ U{jpeg}``, each drawn per image."""

    kind: str = "bicubic"
    scale: int = 4
    blur: tuple[float, float] = (0.2, 1.5)
    noise: tuple[float, float] = (1.0, 10.0)
    jpeg: tuple[int, int] = (60, 95)

    def __post_init__(self) -> None:
        if self.kind not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {self.kind!r}; valid: {', '.join(DEGRADATIONS)}")
        if int(self.scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")

    def __call__(self, hr: Tensor, rng: np.random.Generator) -> Tensor:
        """The LR images of ``hr`` ``[B, C, H, W]`` (``B`` draws from ``rng``, in order)."""
        if self.kind == "bicubic":
            return downsample(hr, self.scale)
        out = []
        for img in hr:
            x = gaussian_blur(img[None], float(rng.uniform(*self.blur)))
            x = downsample(x, self.scale)[0]
            noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
            x = x + noise * float(rng.uniform(*self.noise)) / 127.5
            out.append(jpeg(x, int(rng.integers(self.jpeg[0], self.jpeg[1] + 1))))
        return torch.stack(out)
