"""The mean-regression baseline: the same network trained by plain MSE from observations to action chunks.

It predicts ``E[actions | observations]``, so where demonstrations are multimodal (left or right around an
obstacle) it averages the modes; this is the failure diffusion policies were introduced to fix (Chi et al., 2023,
"Diffusion Policy: Visuomotor Policy Learning via Action Diffusion"). Its input latent is the same unit noise at
``t_max`` a one-step student sees, so it samples through the one-step ``ddim`` solver like any student.
"""

from __future__ import annotations

import torch

from unidistill.objectives.base import Batch, Context, LossOutput, Objective
from unidistill.objectives.losses import squared_error
from unidistill.solvers import initial_latent


class MeanRegression(Objective):
    """Per-sample MSE between the network's x0 output at ``t_max`` and the demonstrated chunk."""

    needs_teacher = False
    init_from_teacher = False  # a baseline trained from data alone
    student_solver = "ddim"

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError("MeanRegression needs demonstrated actions (batch.x0)")
        net = ctx.student
        x = initial_latent(net.path, ctx.randn(batch.x0.shape))
        t = torch.full((batch.size,), float(net.path.t_max), device=x.device, dtype=x.dtype)
        per = squared_error(net(x, t, batch.cond).x0, batch.x0, batch.mask)
        return LossOutput(per.mean(), {"mse": per.mean().detach()})
