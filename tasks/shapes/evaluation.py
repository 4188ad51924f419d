"""The shapes task's evaluation protocol for point clouds ``[B, N, 3]`` (generated, or decoded from structured
latents and resampled to ``N`` points):

* ``1nna_cd``, ``cov_cd``, ``mmd_cd`` (and ``1nna_gap_cd`` = ``|1-NNA - 0.5|``) under the Chamfer distance
  (``modalities.shape.geometry.chamfer``) between generated and held-out reference clouds;
* the same under the exact EMD (``*_emd``) when ``emd_points > 0``: at that many points (farthest-point subsets)
  on at most ``emd_shapes`` shapes per set, since an exact assignment costs milliseconds a pair;
* ``fd_shapes``: the Fréchet distance between the task's PointNet features of generated and reference clouds;
* ``prompt_accuracy``: the share of clouds the PointNet reads as the concept their caption names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modalities.shape.geometry import farthest_point_sample, pairwise_chamfer, pairwise_emd
from modalities.shape.setmetrics import set_metrics
from tasks.shapes.classifier import WEIGHTS, PointNetClassifier, load_classifier
from unidistill.metrics import frechet_distance


class ShapesEvaluator:
    """Metrics of generated point clouds given their caption embeddings and reference clouds."""

    regression_metric = ("fd_shapes", True)

    def __init__(self, weights: str = str(WEIGHTS), emd_points: int = 0, emd_shapes: int = 128) -> None:
        self.weights, self.emd_points, self.emd_shapes = weights, emd_points, emd_shapes
        self._net: PointNetClassifier | None = None
        self._ref_key: tuple | None = None
        self._ref_d = torch.zeros(0)

    @property
    def net(self) -> PointNetClassifier:
        if self._net is None:
            self._net = load_classifier(self.weights)
        return self._net

    @torch.no_grad()
    def features(self, clouds: Tensor) -> Tensor:
        return self.net(clouds.float())

    @torch.no_grad()
    def metrics(self, clouds: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        if clouds.ndim != 3 or clouds.shape[-1] != 3:
            raise ValueError(f"the shapes evaluator takes clouds [B, N, 3], got {tuple(clouds.shape)}")
        clouds = clouds.float().cpu()
        out: dict[str, float] = {}
        if isinstance(cond, Tensor) and cond.ndim == 2 and cond.shape[-1] == 384:
            from tasks.shapes.text import concept_of

            predicted = self.net.logits(clouds).argmax(1)
            out["prompt_accuracy"] = float((predicted == concept_of(cond)).float().mean())
        if reference is None:
            return out
        reference = reference.float().cpu()
        out["fd_shapes"] = frechet_distance(self.features(clouds).double(), self.features(reference).double())
        out |= set_metrics(pairwise_chamfer(clouds), pairwise_chamfer(clouds, reference),
                           self._reference_distances(reference), "cd")
        if self.emd_points > 0:
            g, r = (self._emd_subset(c) for c in (clouds, reference))
            out |= set_metrics(pairwise_emd(g, g), pairwise_emd(g, r), pairwise_emd(r, r), "emd")
        return out

    def _reference_distances(self, reference: Tensor) -> Tensor:
        """Reference-reference Chamfer distances, kept for the last reference set (a benchmark scores many models
        against one reference)."""
        key = (reference.shape, float(reference.sum()), float(reference[:, :4].square().sum()))
        if self._ref_key != key:
            self._ref_key, self._ref_d = key, pairwise_chamfer(reference)
        return self._ref_d

    def _emd_subset(self, clouds: Tensor) -> Tensor:
        clouds = clouds[: self.emd_shapes]
        return torch.stack([c[farthest_point_sample(c, self.emd_points)] for c in clouds])
