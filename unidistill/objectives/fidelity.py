"""Data-fidelity terms on a student's output against the paired ground truth: an L2 term, a perceptual term and a
measurement-consistency term.

Conditional distillation (super-resolution, restoration, any task whose condition determines a ground truth) can
anchor the student's one-step output ``x = G(z; c)`` to the data ``x0`` paired with ``c``, on top of the
distillation loss, as OSEDiff does (Wu et al., 2024, "One-Step Effective Diffusion Network for Real-World Image
Super-Resolution": ``L = lambda_l2 MSE(x, x0) + lambda_lpips LPIPS(x, x0) + lambda_vsd VSD``, with 1, 2 and 1).

The objective knows nothing of the data: the perceptual distance is a ``PerceptualDistance`` subclass that the
modality (or a task) supplies, ``perceptual(pred, target, cond) -> [B]`` on latents, differentiable in ``pred``
(e.g. the super-resolution plugin's ``STLPIPSDistance`` decodes residual latents to images and runs a frozen
shift-tolerant LPIPS network on them).
The measurement term compares what a degradation operator ``A`` (a ``Measurement`` the modality supplies) makes of
the output and of the data, ``MSE(A(x), A(x0))``: for super-resolution ``A`` is the x4 downsampling, so the term is
the LR-consistency loss that keeps a one-step student faithful to its input (the data-consistency idea of
"Denoising Diffusion Restoration Models", Kawar et al., 2022, used here as a training loss).
Reductions follow DESIGN.md: per sample (mean over elements, masked where a mask exists), then over the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor

from unidistill.batch import Batch
from unidistill.objectives.losses import squared_error


class PerceptualDistance(ABC):
    """Base class of a modality's perceptual distance: per sample ``[B]`` between two latent batches, given their
    condition, differentiable in ``pred`` (a class, so a YAML file can name a subclass by ``class_path``)."""

    @abstractmethod
    def __call__(self, pred: Tensor, target: Tensor, cond: Any) -> Tensor: ...


class Measurement(ABC):
    """Base class of a modality's degradation operator ``A(latent, cond)`` (e.g. decode, then downsample), applied
    to both the student's output and the data by ``FidelityLoss``; differentiable in the latent."""

    @abstractmethod
    def __call__(self, latent: Tensor, cond: Any) -> Tensor: ...


class FidelityLoss:
    """``l2_weight * MSE(pred, x0) + perceptual_weight * perceptual(pred, x0, cond)
    + measurement_weight * MSE(A(pred, cond), A(x0, cond))``, per sample then batch mean.

    Args:
        l2_weight: weight of the per-sample mean squared error in latent space (OSEDiff: 1).
        perceptual_weight: weight of the perceptual distance (OSEDiff: 2 with LPIPS); needs ``perceptual``.
        perceptual: the distance (a modality's ``PerceptualDistance``); frozen networks inside it are its business.
        measurement_weight: weight of the measurement-consistency MSE (0: off); needs ``measurement``.
        measurement: the degradation operator ``A`` (a modality's ``Measurement``, e.g. the SR plugin's
            ``LRConsistency``); the data's side ``A(x0)`` carries no gradient.
    """

    def __init__(self, l2_weight: float = 1.0, perceptual_weight: float = 0.0,
                 perceptual: PerceptualDistance | None = None, measurement_weight: float = 0.0,
                 measurement: Measurement | None = None) -> None:
        if l2_weight < 0 or perceptual_weight < 0 or measurement_weight < 0:
            raise ValueError(f"fidelity weights must be >= 0, got l2_weight={l2_weight}, "
                             f"perceptual_weight={perceptual_weight}, measurement_weight={measurement_weight}")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual distance (perceptual=...), e.g. the "
                             "modality's PerceptualDistance class")
        if measurement_weight > 0 and measurement is None:
            raise ValueError("measurement_weight > 0 needs a degradation operator (measurement=...), e.g. the "
                             "modality's Measurement class")
        self.l2_weight, self.perceptual_weight, self.perceptual = float(l2_weight), float(perceptual_weight), perceptual
        self.measurement_weight, self.measurement = float(measurement_weight), measurement

    def __call__(self, pred: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted loss (scalar) and its parts (detached) for the student output ``pred`` paired with
        ``batch.x0``."""
        if batch.x0 is None:
            raise ValueError("the fidelity terms compare the student's output with paired data (batch.x0); "
                             "got a data-free batch")
        if pred.shape != batch.x0.shape:
            raise ValueError(f"fidelity: student output {tuple(pred.shape)} and data {tuple(batch.x0.shape)} differ")
        loss = pred.new_zeros(())
        logs: dict[str, Tensor] = {}
        if self.l2_weight > 0:
            l2 = squared_error(pred, batch.x0, batch.mask).mean()
            loss = loss + self.l2_weight * l2
            logs["fidelity_l2"] = l2.detach()
        if self.perceptual_weight > 0:
            per = self.perceptual(pred, batch.x0, batch.cond)
            if per.shape != (pred.shape[0],):
                raise ValueError(f"the perceptual distance must return one value per sample [{pred.shape[0]}], got "
                                 f"{tuple(per.shape)}")
            loss = loss + self.perceptual_weight * per.mean()
            logs["fidelity_perceptual"] = per.mean().detach()
        if self.measurement_weight > 0:
            a_pred, a_data = self.measurement(pred, batch.cond), self.measurement(batch.x0, batch.cond).detach()
            if a_pred.shape != a_data.shape or a_pred.shape[0] != pred.shape[0]:
                raise ValueError(f"the measurement must map each sample alike, got {tuple(a_pred.shape)} for the "
                                 f"output and {tuple(a_data.shape)} for the data")
            meas = squared_error(a_pred, a_data).mean()
            loss = loss + self.measurement_weight * meas
            logs["fidelity_measurement"] = meas.detach()
        return loss, logs


