"""The digits task's own evaluation network: a small CNN classifier trained on the real digits.

Its penultimate features define ``fd_digits`` (a Fréchet distance in *this* network's feature space, not
FID) and its prediction defines ``prompt_accuracy``. Trained with random shifts and pixel noise so that it
reads slightly imperfect generated digits the way it reads real ones. Reproduce the shipped weights with
``python -m tasks.digits.train classifier``.
"""

from __future__ import annotations

from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalities.image.evaluation import ImageEvaluator

WEIGHTS = FilePath(__file__).parent / "weights" / "classifier.safetensors"


class DigitsClassifier(ImageEvaluator):
    """``[N, 1, S, S]`` images in [-1, 1] (any ``S``; resized to 16) -> 64 features / 10 logits."""

    name = "digits"
    num_features = 64

    def __init__(self, weights: str | None = str(WEIGHTS)) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 16, self.num_features), nn.SiLU(),
        )
        self.head = nn.Linear(self.num_features, 10)
        if weights is not None:
            from safetensors.torch import load_file

            path = FilePath(weights)
            if not path.is_file():
                raise FileNotFoundError(f"digits classifier weights not found at {weights!r}; "
                                        "train them with `python -m tasks.digits.train classifier`")
            self.load_state_dict(load_file(str(path)))
        self.eval().requires_grad_(False)

    @staticmethod
    def _prepare(images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"digits classifier takes [N, 1, H, W] images, got {tuple(images.shape)}")
        if images.shape[-1] != 16 or images.shape[-2] != 16:
            images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
        return images.float()

    def forward(self, images: Tensor) -> Tensor:
        return self.body(self._prepare(images))

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self(images))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        return self.logits(images).argmax(dim=1)
