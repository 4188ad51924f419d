"""Consistency distillation in the latent-consistency style.

Song et al., 2023, "Consistency Models" (consistency distillation, boundary parameterization, multistep
sampling) and Luo et al., 2023, "Latent Consistency Models" (guidance-scale-conditioned student,
skipping-step teacher solver, EMA target). Per iteration:

1. draw a grid index ``n`` of the increasing grid ``path.time_grid(num_intervals)`` (uniform in ``t``; Karras on EDM)
   and set ``t_hi = grid[n]``, ``t_lo = grid[n - skip]``;
2. noise real data to ``x_hi``; take one guided teacher ODE step ``x_hi -> x_lo`` under ``no_grad``;
3. regress ``f_theta(x_hi, t_hi, w)`` on the EMA target ``f_theta-(x_lo, t_lo, w)``.

The consistency function is ``f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t)`` with LCM's
``c_skip = s_d^2 / ((k t)^2 + s_d^2)``, ``c_out = k t / sqrt((k t)^2 + s_d^2)``, so ``f(x, 0) = x`` exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unidistill.denoiser import GuidedDenoiser
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, check_choice, refuse_unused
from unidistill.objectives.losses import distance
from unidistill.paths import Path, Prediction, expand_like
from unidistill.solvers import ode_step


class ConsistencyFunction(nn.Module):
    """The boundary-parameterized view of a student denoiser; a denoiser-like object for samplers."""

    def __init__(self, student: nn.Module, boundary_scale: float = 10_000.0, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.student = student
        self.boundary_scale, self.sigma_data = boundary_scale, sigma_data

    @property
    def path(self) -> Any:
        return self.student.path

    nfe_per_call = 1

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Prediction:
        pred = self.student(x_t, t, cond, guidance)
        tau = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device) / self.path.t_max * self.boundary_scale
        sd2 = self.sigma_data**2
        c_skip = expand_like(sd2 / (tau**2 + sd2), x_t)
        c_out = expand_like(tau / torch.sqrt(tau**2 + sd2), x_t)
        x0 = c_skip * x_t + c_out * pred.x0
        a = expand_like(self.path.alpha(t), x_t)
        s = expand_like(self.path.sigma(t), x_t).clamp_min(1e-12)
        return Prediction(x0, (x_t - a * x0) / s)


class ConsistencyDistillation(Objective):
    """Latent-consistency distillation; see the module docstring.

    ``guidance_range`` = ``(w_min, w_max)`` samples the teacher's guidance scale per sample and feeds it to
    the student (w-conditioning); otherwise the fixed ``guidance_scale`` is used and the student gets none.
    Scales use ``u + w (c - u)``: LCM's script draws ``w ~ U[5, 15]`` in its ``c + w (c - u)`` form,
    i.e. ``U[6, 16]`` here.
    """

    @classmethod
    def tiny(cls, modality: Any) -> ConsistencyDistillation:
        return cls(num_intervals=8, target_decay=0.9)

    def __init__(
        self,
        num_intervals: int = 50,
        skip: int = 1,
        guidance_scale: float = 1.0,
        guidance_range: tuple[float, float] | None = None,
        distance: str = "l2",
        huber_c: float = 1e-3,
        target_decay: float = 0.95,
        teacher_solver: str = "ddim",
        boundary_scale: float = 10_000.0,
        student_steps_renoise: str = "sde",
    ) -> None:
        if num_intervals < 1 or not 1 <= skip <= num_intervals:
            raise ValueError(f"need num_intervals >= 1 and 1 <= skip <= num_intervals, got {num_intervals}, {skip}")
        check_choice(self.name, "distance", distance, ("l2", "pseudo_huber"))
        check_choice(self.name, "teacher_solver", teacher_solver, ("ddim", "heun"))
        check_choice(self.name, "student_steps_renoise", student_steps_renoise, ("sde", "ode"))
        if distance == "l2":
            refuse_unused(self.name, "huber_c", huber_c, 1e-3, "with distance='l2' (it is pseudo-Huber's constant)")
        if guidance_range is not None:
            refuse_unused(self.name, "guidance_scale", guidance_scale, 1.0,
                          f"with guidance_range={guidance_range} (the scale is drawn from the range per sample)")
        self.num_intervals, self.skip = num_intervals, skip
        self.guidance_scale, self.guidance_range = guidance_scale, guidance_range
        self.distance, self.huber_c = distance, huber_c
        self.target_decay = target_decay
        self.teacher_solver = teacher_solver
        self.boundary_scale = boundary_scale
        self.renoise = student_steps_renoise

    def sampling_model(self, student: nn.Module) -> nn.Module:
        return ConsistencyFunction(student, self.boundary_scale)

    @property
    def student_solver_kwargs(self) -> dict[str, Any]:
        return {"renoise": self.renoise} if self.student_solver == "consistency" else {}

    def draw_times(self, n: int, path: Path, ctx: Context) -> tuple[Tensor, Tensor]:
        """``t_hi`` on the training grid ``path.time_grid(num_intervals)`` (uniform in ``t``; Karras on EDM, so the
        smallest non-zero time is small, as in "Consistency Models") and ``t_lo``, ``skip`` grid points below it."""
        grid = path.time_grid(self.num_intervals, device=ctx.device).flip(0).to(ctx.dtype)
        idx = torch.randint(self.skip, self.num_intervals + 1, (n,), generator=ctx.generator).to(ctx.device)
        return grid[idx], grid[idx - self.skip]

    def draw_guidance(self, n: int, ctx: Context) -> tuple[Tensor, Tensor | None]:
        return ctx.guidance(n, self.guidance_scale, self.guidance_range)

    def teacher_step(self, ctx: Context, x_hi: Tensor, t_hi: Tensor, t_lo: Tensor, cond: Any, w: Tensor) -> Tensor:
        """One guided teacher ODE step (per-sample guidance) under ``no_grad``."""
        with torch.no_grad():
            return ode_step(
                GuidedDenoiser(ctx.teacher, w, ctx.null_condition), x_hi, t_hi, t_lo, cond, self.teacher_solver
            )

    def landing_time(self, path: Any, t_hi: Tensor) -> Tensor:
        """Where the consistency map lands from ``t_hi``: data (``t = 0``) here; a phase edge in phased CMs."""
        return torch.zeros_like(t_hi)

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError(f"{self.name} needs data (batch.x0) to noise; got a data-free batch")
        student, path = ctx.student, ctx.student.path
        t_hi, t_lo = self.draw_times(batch.size, path, ctx)
        w, w_in = self.draw_guidance(batch.size, ctx)
        x_hi = path.add_noise(batch.x0, ctx.randn(batch.x0.shape), t_hi)
        edge = self.landing_time(path, t_hi)
        t_lo = torch.maximum(t_lo, edge)  # never step across the landing time
        x_lo = self.teacher_step(ctx, x_hi, t_hi, t_lo, batch.cond, w)
        # DDIM-form jump to the landing time; at t = 0 it is exactly the x0 estimate.
        pred = path.add_noise(*ConsistencyFunction(student, self.boundary_scale)(x_hi, t_hi, batch.cond, w_in), edge)
        with torch.no_grad():
            target_f = ConsistencyFunction(ctx.roles["target"], self.boundary_scale)
            target = path.add_noise(*target_f(x_lo, t_lo, batch.cond, w_in), edge)
        per = distance(pred, target, self.distance, self.huber_c, batch.mask)
        return LossOutput(per.mean(), {"distance": per.mean().detach()})
