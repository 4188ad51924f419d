"""Full-reference super-resolution metrics, on images ``[B, 3, H, W]`` in ``[-1, 1]``.

PSNR and SSIM are computed on the luminance Y of ITU-R BT.601 (the super-resolution literature's convention) by
torchmetrics, with ``shave`` border pixels removed (the scale factor, as is customary). LR consistency is the PSNR
between the output downsampled by the degradation's bicubic kernel and the input it was given (Lugmayr et al.,
2020, "SRFlow": a faithful output explains its input). ``st_lpips_alex`` is the shift-tolerant perceptual distance
(``modalities.superres.stlpips``). Diversity is the per-pixel standard deviation across seeds.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from modalities.superres.degradation import downsample
from modalities.superres.stlpips import st_lpips_alex


def to_unit(x: Tensor) -> Tensor:
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def luma(x: Tensor) -> Tensor:
    """BT.601 Y in ``[0, 1]`` (16..235 on the 8-bit scale) of images in ``[-1, 1]``, as ``[B, 1, H, W]``."""
    u = to_unit(x)
    return ((16.0 + 65.481 * u[:, 0] + 128.553 * u[:, 1] + 24.966 * u[:, 2]) / 255.0)[:, None]


def _shaved(x: Tensor, shave: int) -> Tensor:
    return x[..., shave:-shave, shave:-shave] if shave > 0 else x


def psnr_y(sr: Tensor, hr: Tensor, shave: int = 4) -> float:
    """Mean over images of the PSNR (dB) of Y."""
    a, b = _shaved(luma(sr), shave), _shaved(luma(hr), shave)
    return float(peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())


def ssim_y(sr: Tensor, hr: Tensor, shave: int = 4) -> float:
    """Mean SSIM of Y (Gaussian window 11, sigma 1.5)."""
    return float(structural_similarity_index_measure(_shaved(luma(sr), shave), _shaved(luma(hr), shave),
                                                     data_range=1.0))


def lr_psnr(sr: Tensor, lr: Tensor, scale: int) -> float:
    """Mean PSNR (dB, RGB in ``[0, 1]``) between ``downsample(sr)`` and the low-resolution input."""
    down = downsample(sr.detach().float().cpu().clamp(-1, 1), scale)
    return float(peak_signal_noise_ratio(to_unit(down), to_unit(lr), data_range=1.0, reduction="none",
                                         dim=(1, 2, 3)).mean())


@torch.no_grad()
def st_lpips(sr: Tensor, hr: Tensor, batch: int = 32) -> float:
    """Mean ``st_lpips_alex`` distance to the ground truth."""
    net = st_lpips_alex()
    a, b = sr.detach().float().cpu().clamp(-1, 1), hr.detach().float().cpu()
    return float(torch.cat([net(a[i:i + batch], b[i:i + batch]) for i in range(0, a.shape[0], batch)]).mean())


def diversity(samples: list[Tensor]) -> float:
    """Mean per-pixel standard deviation (in ``[0, 1]`` units) across outputs for several seeds."""
    stack = torch.stack([to_unit(s) for s in samples])
    return float(stack.std(0, unbiased=True).mean())


def sr_metrics(sr: Tensor, hr: Tensor, lr: Tensor, scale: int) -> dict[str, float]:
    """The full-reference set, perceptual metric first."""
    return {"st_lpips_alex": st_lpips(sr, hr), "psnr_y": psnr_y(sr, hr, scale), "ssim_y": ssim_y(sr, hr, scale),
            "lr_psnr": lr_psnr(sr, lr, scale)}
