"""Teacher training: denoising score matching / flow matching on any path and prediction type.

The network regresses its own prediction type's target at ``x_t = alpha x0 + sigma eps``
(Ho et al., 2020, "Denoising Diffusion Probabilistic Models"; Lipman et al., 2023, "Flow Matching for
Generative Modeling"). With ``cond_dropout > 0`` the condition is replaced by the null condition for
that share of samples, which trains the unconditional branch classifier-free guidance needs
(Ho & Salimans, 2022). The trained network is the "student" role here: there is no teacher yet.

``loss_space`` separates what the network predicts from where the loss is measured, as in Li & He, 2025,
"Back to Basics: Let Denoising Generative Models Denoise" (JiT): a pixel-space transformer with large patches
cannot carry per-pixel noise through its patch bottleneck, so it should predict ``x0`` (clean data lies near a
low-dimensional manifold, noise does not), while the loss is best taken on the velocity. Prediction and target
are both converted at ``max(t, loss_time_floor)``; the conversions are affine in the output with the same
``x_t``, which cancels, so for x0 prediction on rectified flow the velocity loss is exactly JiT's
``|x0_pred - x0|^2 / max(t, floor)^2``.
"""

from __future__ import annotations

from typing import Any

import torch

from unidistill.objectives.base import Batch, Context, LossOutput, Objective, refuse_unused
from unidistill.objectives.losses import squared_error
from unidistill.paths import check_prediction_type
from unidistill.timesteps import TimeSampler, UniformTime


def drop_condition(cond: Any, null: Any, keep: torch.Tensor) -> Any:
    """Per-sample mix of a condition and its null counterpart (tensors, or dicts/tuples of tensors)."""
    if isinstance(cond, torch.Tensor):
        k = keep.reshape(-1, *([1] * (cond.ndim - 1)))
        return torch.where(k, cond, null)
    if isinstance(cond, dict):
        return {key: drop_condition(cond[key], null[key], keep) for key in cond}
    if isinstance(cond, (tuple, list)):
        return type(cond)(drop_condition(c, n, keep) for c, n in zip(cond, null, strict=True))
    if cond is None:
        return None
    raise TypeError(f"cannot drop a condition of type {type(cond).__name__}; use tensors, dicts or tuples of them")


class DenoisingObjective(Objective):
    """Train a denoiser from data. The loss is the per-sample mean squared error in the network's own
    prediction space, or in ``loss_space`` (``x0``, ``eps``, ``v`` or ``flow``; see the module docstring)."""

    needs_teacher = False
    init_from_teacher = False  # it trains the teacher
    student_solver = "heun"

    @classmethod
    def tiny(cls, modality: Any) -> DenoisingObjective:
        return cls(cond_dropout=0.25)

    def __init__(self, time_sampler: TimeSampler | None = None, cond_dropout: float = 0.1,
                 loss_space: str | None = None, loss_time_floor: float = 0.05) -> None:
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        if not 0.0 < loss_time_floor < 1.0:
            raise ValueError(f"loss_time_floor must be in (0, 1), got {loss_time_floor}")
        self.time_sampler = time_sampler or UniformTime(t_min=1e-3)
        self.cond_dropout = cond_dropout
        self.loss_space = None if loss_space is None else check_prediction_type(loss_space)
        if self.loss_space is None:
            refuse_unused(self.name, "loss_time_floor", loss_time_floor, 0.05,
                          "without loss_space (the loss is taken in the network's own prediction space)")
        self.loss_time_floor = loss_time_floor

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError("DenoisingObjective needs data (batch.x0), got a data-free batch")
        net = ctx.student
        x0 = batch.x0
        t = self.time_sampler(net.path, batch.size, ctx.generator).to(x0.device, x0.dtype)
        eps = ctx.randn(x0.shape)
        x_t = net.path.add_noise(x0, eps, t)
        cond = batch.cond
        if self.cond_dropout > 0 and cond is not None:
            keep = ctx.rand((batch.size,)) >= self.cond_dropout
            cond = drop_condition(cond, ctx.null_condition(cond), keep)
        target = net.path.from_prediction((x0, eps), t, net.prediction)
        raw = net.raw(x_t, t, cond)
        if self.loss_space is not None and self.loss_space != net.prediction:
            tc = t.clamp_min(self.loss_time_floor)

            def convert(output: torch.Tensor) -> torch.Tensor:
                return net.path.from_prediction(net.path.to_prediction(output, x_t, tc, net.prediction), tc,
                                                self.loss_space)

            raw, target = convert(raw), convert(target)
        per = squared_error(raw, target, batch.mask)
        return LossOutput(per.mean(), {"mse": per.mean().detach()})
