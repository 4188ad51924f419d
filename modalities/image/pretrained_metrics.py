"""Image metrics in pretrained networks whose weights the user supplies as local files: real FID and CLIP score.

``fid`` is torchmetrics' ``FrechetInceptionDistance(feature=2048)``: the 2048-D pool features of torch-fidelity's
``FeatureExtractorInceptionV3`` (the TensorFlow FID network) loaded from a local weights file, with the
TensorFlow-1-compatible bilinear resize to 299x299 (``antialias=False``) that torch-fidelity and the original
TensorFlow FID use, so the numbers are comparable with theirs. ``clip_score`` is torchmetrics' ``CLIPScore``
(``max(100 * mean cosine(image, prompt), 0)``) on a local transformers CLIP folder: torchmetrics 1.9 only loads
the hub names it lists (any other string is a ``ValueError``) and expects tensors from ``get_image_features`` /
``get_text_features``, which transformers 5 returns as output objects, so we load the folder ourselves and hand
torchmetrics a callable returning a thin adapter. Both take images in [-1, 1], rounded to uint8 RGB.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 [0, 255] (rounded), 1-channel images repeated to 3 channels."""
    pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.repeat(1, 3, 1, 1) if pixels.shape[1] == 1 else pixels


def check_inception_weights(path: str | Path) -> str:
    """``path`` as a string if it is a file, else a ``FileNotFoundError`` that says which file is expected."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"inception_weights={str(path)!r} is not a file: give the local path of torch-fidelity's FID "
            f"InceptionV3 weights, {INCEPTION_WEIGHTS_FILE} (pytorch-fid ships the same network as "
            f"{PYTORCH_FID_WEIGHTS_FILE})")
    return str(path)


def check_clip_folder(folder: str | Path) -> str:
    """``folder`` as a string if it holds a saved CLIP model, else a ``FileNotFoundError`` naming it."""
    if not (Path(folder) / "config.json").is_file():
        what = "has no config.json" if Path(folder).is_dir() else "does not exist"
        raise FileNotFoundError(
            f"CLIP folder {str(folder)!r} {what}: give a local folder holding a transformers CLIPModel and "
            "CLIPProcessor (both saved there with save_pretrained)")
    return str(folder)


@lru_cache(maxsize=1)
def _fid_metric(path: str) -> nn.Module:
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path, normalize=False,
                                        antialias=False)
    except RuntimeError as e:  # a state dict with other keys or shapes
        raise ValueError(f"{path!r} does not hold the FID InceptionV3 weights ({INCEPTION_WEIGHTS_FILE}): {e}") from e


@torch.no_grad()
def inception_fid(fake: Tensor, real: Tensor, weights: str | Path, batch: int = 32) -> float:
    """FID between ``fake`` and ``real`` images in [-1, 1] (any size; 1 or 3 channels)."""
    if fake.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {fake.shape[0]} and {real.shape[0]}")
    metric = _fid_metric(check_inception_weights(weights))
    metric.reset()
    for chunk in to_uint8_rgb(real).split(batch):
        metric.update(chunk, real=True)
    for chunk in to_uint8_rgb(fake).split(batch):
        metric.update(chunk, real=False)
    return float(metric.compute())


def _projected(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output  # transformers 5: the projected features


class ClipFeatures(nn.Module):
    """A ``CLIPModel`` whose ``get_image_features`` / ``get_text_features`` return tensors, as torchmetrics needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return _projected(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return _projected(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


@lru_cache(maxsize=1)
def load_clip(folder: str) -> tuple[ClipFeatures, object]:
    """The adapted model and the processor of a local CLIP folder (cached: validation calls this repeatedly)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)
    return ClipFeatures(model), CLIPProcessor.from_pretrained(folder, local_files_only=True)


@torch.no_grad()
def clip_score(images: Tensor, prompts: list[str], folder: str | Path, batch: int = 64) -> float:
    """torchmetrics' CLIP score of images in [-1, 1] against their prompts, with a local CLIP folder."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    path = check_clip_folder(folder)
    metric = CLIPScore(model_name_or_path=lambda: load_clip(path))
    pixels = to_uint8_rgb(images)
    for start in range(0, len(prompts), batch):
        metric.update(pixels[start:start + batch], list(prompts[start:start + batch]))
    return float(metric.compute())
