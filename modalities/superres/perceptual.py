"""The super-resolution plugin's terms for the core's fidelity loss (``unidistill.objectives.fidelity.FidelityLoss``):
the perceptual distance (latents decoded to images with the batch's upsampled LR and compared by the frozen
shift-tolerant LPIPS network) and the LR-consistency measurement (decoded images downsampled x scale), both
differentiable in the prediction."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from modalities.superres.degradation import downsample
from modalities.superres.stlpips import st_lpips_alex
from unidistill.objectives.fidelity import Measurement, PerceptualDistance


def _check_latent(latent: str) -> str:
    if latent not in ("residual", "image"):
        raise ValueError(f"latent must be 'residual' or 'image', got {latent!r}")
    return latent


class STLPIPSDistance(PerceptualDistance):
    """``st_lpips_alex(decode(pred), decode(target))`` per sample; ``latent`` as the modality's (``residual``: the
    image is ``latent + cond["up"]``; ``image``: the latent is the image)."""

    def __init__(self, latent: str = "residual") -> None:
        self.latent = _check_latent(latent)

    def __call__(self, pred: Tensor, target: Tensor, cond: Any) -> Tensor:
        net = st_lpips_alex().to(pred.device)
        if self.latent == "residual":
            up = cond["up"].to(pred)
            pred, target = pred + up, target + up
        return net(pred, target.clamp(-1, 1))


class LRConsistency(Measurement):
    """``downsample(decode(latent), scale)``: the bicubic (antialiased) x scale operator that made the LR input,
    so ``FidelityLoss(measurement_weight=...)`` penalises an output whose downsampled image leaves the data's; the
    ``lr_psnr`` metric measures the same thing against the input."""

    def __init__(self, scale: int = 4, latent: str = "residual") -> None:
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale, self.latent = int(scale), _check_latent(latent)

    def __call__(self, latent: Tensor, cond: Any) -> Tensor:
        image = latent + cond["up"].to(latent) if self.latent == "residual" else latent
        return downsample(image, self.scale)
