"""Super-resolution: a LR-conditioned diffusers UNet, ResShift's residual-shifting path, tiled full-image inference,
PSNR/SSIM (Y), LR consistency, shift-tolerant LPIPS and NIQE that run offline."""

from modalities.superres.plugin import SuperResModality
from modalities.superres.tiling import TiledDenoiser

__all__ = ["SuperResModality", "TiledDenoiser"]
