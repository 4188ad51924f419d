"""Image quality metrics: in a task's own feature space, and (from local weights) real FID and CLIP score.

``fd_<name>`` is torchmetrics' ``FrechetInceptionDistance`` with the task's feature network in place of
Inception (so it is *not* FID and is never called that); precision and recall are the k-nearest-neighbour
manifold estimates of Kynkäänniemi et al., 2019, "Improved Precision and Recall Metric for Assessing
Generative Models", in the same features (no maintained library computes them on a custom feature network,
so they are written out here); ``prompt_accuracy`` is the share of samples the task's classifier reads as
the label their prompt asked for. ``fid`` (real Inception FID from a local weights file) and ``clip_score``
(a local CLIP folder) are in ``modalities.image.pretrained_metrics``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from modalities.image.pretrained_metrics import check_inception_weights, clip_score, inception_fid


class ImageEvaluator(nn.Module, ABC):
    """A task's evaluation network: ``forward(images in [-1, 1]) -> [N, num_features]`` features and
    ``predict(images) -> [N]`` labels. Subclasses set ``name`` (metrics are called ``fd_<name>``) and
    ``num_features``."""

    name: str = "features"
    num_features: int = 0

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """``[N, num_features]`` features of images in [-1, 1]."""

    @abstractmethod
    def predict(self, images: Tensor) -> Tensor:
        """``[N]`` labels the task's prompts ask for."""


@torch.no_grad()
def frechet_distance_features(evaluator: ImageEvaluator, fake: Tensor, real: Tensor, batch: int = 512) -> float:
    """Fréchet distance between the feature Gaussians of ``fake`` and ``real`` images (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if fake.shape[0] < 2 or real.shape[0] < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per side, got {fake.shape[0]} "
                         f"and {real.shape[0]}")
    fd = FrechetInceptionDistance(feature=evaluator.eval(), reset_real_features=True)
    for chunk in real.float().cpu().split(batch):
        fd.update(chunk, real=True)
    for chunk in fake.float().cpu().split(batch):
        fd.update(chunk, real=False)
    return float(fd.compute())


def knn_precision_recall(fake: Tensor, real: Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: share of fake features inside the real k-NN manifold; recall: the reverse."""

    def radii(x: Tensor) -> Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(min(k + 1, x.shape[0]), dim=1).values  # k+1: the point itself is at distance 0

    fake, real = fake.double(), real.double()
    r_real, r_fake = radii(real), radii(fake)
    precision = (torch.cdist(fake, real) <= r_real[None, :]).any(dim=1).double().mean()
    recall = (torch.cdist(real, fake) <= r_fake[None, :]).any(dim=1).double().mean()
    return float(precision), float(recall)


@torch.no_grad()
def image_metrics(images: Tensor, reference: Tensor | None, labels: Tensor | None,
                  evaluator: ImageEvaluator | None, clip_model: str | None = None,
                  prompts: list[str] | None = None, inception_weights: str | None = None) -> dict[str, float]:
    """All metrics that the given pieces allow; images and reference are in [-1, 1].

    ``fid`` needs ``reference`` and ``inception_weights`` (the local FID Inception weights file);
    ``clip_score`` needs ``clip_model`` (a local CLIP folder) and one prompt per image.
    """
    images = images.float().cpu()
    reference = reference.float().cpu() if reference is not None else None
    out: dict[str, float] = {"pixel_mean": float(images.mean()), "pixel_std": float(images.std())}
    enough = reference is not None and images.shape[0] >= 2 and reference.shape[0] >= 2
    if evaluator is not None:
        evaluator = evaluator.eval().cpu()
        if enough:
            out[f"fd_{evaluator.name}"] = frechet_distance_features(evaluator, images, reference)
            f_fake, f_real = evaluator(images), evaluator(reference)
            out[f"precision_{evaluator.name}"], out[f"recall_{evaluator.name}"] = knn_precision_recall(f_fake, f_real)
        if labels is not None and bool((labels >= 0).any()):
            keep = labels.cpu() >= 0
            pred = evaluator.predict(images[keep])
            out["prompt_accuracy"] = float((pred == labels.cpu()[keep]).double().mean())
    if inception_weights is not None:
        check_inception_weights(inception_weights)
        if enough:
            out["fid"] = inception_fid(images, reference, inception_weights)
    if clip_model is not None and prompts is not None:
        out["clip_score"] = clip_score(images, prompts, clip_model)
    return out
