"""The super-resolution plugin's perceptual distance for the core's fidelity terms
(``unidistill.objectives.fidelity.FidelityLoss(perceptual=...)``): latents are decoded to images with the batch's
upsampled LR and compared by the frozen shift-tolerant LPIPS network, differentiably in the prediction."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from modalities.superres.stlpips import st_lpips_alex
from unidistill.objectives.fidelity import PerceptualDistance


class STLPIPSDistance(PerceptualDistance):
    """``st_lpips_alex(decode(pred), decode(target))`` per sample; ``latent`` as the modality's (``residual``: the
    image is ``latent + cond["up"]``; ``image``: the latent is the image)."""

    def __init__(self, latent: str = "residual") -> None:
        if latent not in ("residual", "image"):
            raise ValueError(f"latent must be 'residual' or 'image', got {latent!r}")
        self.latent = latent

    def __call__(self, pred: Tensor, target: Tensor, cond: Any) -> Tensor:
        net = st_lpips_alex().to(pred.device)
        if self.latent == "residual":
            up = cond["up"].to(pred)
            pred, target = pred + up, target + up
        return net(pred, target.clamp(-1, 1))
