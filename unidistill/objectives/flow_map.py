"""Flow-map (average-velocity) distillation.

Geng et al., 2025, "Mean Flows for One-step Generative Modeling" and Sabour et al., 2025, "Align Your
Flow: Scaling Continuous-Time Flow Map Distillation". The student predicts the *average* velocity
``u(x_t, t, r)`` over ``[r, t]`` of the teacher's probability-flow ODE, so one evaluation jumps
``x_r = x_t - (t - r) u`` (the flow map). Differentiating ``(t - r) u = int_r^t v`` in ``t`` gives the
MeanFlow identity used as a regression target (docs/formulations.md §3.6):

    u_tgt = sg( v(x_t, t) - (t - r) (d/dt) u(x_t, t, r) ),   d/dt = v . grad_x + partial_t  (r held fixed)

with ``v`` the (guided) teacher velocity and the total derivative from one ``torch.func.jvp`` through the
student with tangents ``(v, 1, 0)`` on ``(x, t, r)`` under ``no_grad`` (math SDPA kernel). A share
``flow_ratio`` of each batch has ``r = t`` (plain velocity distillation, ``u = v``). Loss: MeanFlow's adaptively
weighted squared error ``sg(1 / (d + c)^p) d`` with ``d = ||u - u_tgt||^2`` summed over the sample's elements, as the
paper and FastGen take it (``c = 1e-3``, the paper's; FastGen's default is ``c = 0.1``). With ``p = 1`` the loss is
``d / (d + c)``, whose gradient is ``2 (u - u_tgt) / (d + c)``: the weight normalises the error's size, so ``c`` is
the squared error below which it stops doing so, for the whole sample (not per element).

Adapter convention for ``r``: the student is an ordinary guidance-conditioned ``Denoiser`` and receives
the interval length ``h = t - r`` through the ``guidance`` slot; ``u`` is the PF-ODE velocity read from
its output through its own path and prediction type (``student.velocity(x, t, cond, guidance=h)``).
At ``h = 0`` this is exactly the student's instantaneous velocity, so a student copied from the teacher
with a zero-initialised guidance projection (``MLPDenoiserNet.enable_guidance_conditioning``) starts as
the teacher's flow. ``student_takes_guidance`` is therefore always true (its values are ``h``, not a CFG
scale; the teacher's CFG scale is fixed by ``guidance_scale`` and baked in).

Sampling with any number of steps: ``sampling_model`` is a ``FlowMapModel`` and ``student_solver`` is
``"flow_map"`` (``unidistill.solvers.flow_map_sample``): ``x <- x - (t - s) u(x, t, s)`` between
consecutive grid times, one NFE per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from unidistill.denoiser import GuidedDenoiser
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, Unsupported, refuse_unused
from unidistill.objectives.losses import per_sample
from unidistill.paths import expand_like
from unidistill.timesteps import TimeSampler, UniformTime


def average_velocity(student: nn.Module, x: Tensor, t: Tensor, r: Tensor, cond: Any) -> Tensor:
    """``u(x, t, r)``: the student's velocity with the interval ``t - r`` in the guidance slot."""
    h = (t - r).reshape(t.shape[0], -1)[:, 0]
    return student.velocity(x, t, cond, guidance=h)


class FlowMapModel(nn.Module):
    """Denoiser-like view of a flow-map student: ``forward`` is the instantaneous prediction (``r = t``),
    ``average_velocity`` the jump velocity."""

    nfe_per_call = 1

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    @property
    def path(self) -> Any:
        return self.student.path

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Any:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self.student(x_t, t, cond, torch.zeros_like(t))

    def average_velocity(self, x: Tensor, t: Tensor, r: Tensor, cond: Any = None) -> Tensor:
        return average_velocity(self.student, x, t, r, cond)


class FlowMapDistillation(Objective):
    student_solver = "flow_map"

    @property
    def student_takes_guidance(self) -> bool:
        """The student's guidance slot carries the interval ``t - r`` (see the module docstring)."""
        return True

    @classmethod
    def tiny(cls, modality: Any) -> FlowMapDistillation:
        if not modality.guidance_input:
            raise Unsupported(f"the student needs a second scalar input for the jump length t - r; the "
                              f"{modality.name or type(modality).__name__} modality's network has none")
        return cls(flow_ratio=0.5, tangent_warmup=2)

    def __init__(self, guidance_scale: float = 1.0, flow_ratio: float = 0.5, time_sampler: TimeSampler | None = None,
                 adaptive_p: float = 1.0, adaptive_c: float = 1e-3, tangent_warmup: int = 0) -> None:
        if not 0.0 <= flow_ratio <= 1.0:
            raise ValueError(f"flow_ratio must be in [0, 1], got {flow_ratio}")
        if adaptive_p == 0:
            refuse_unused(self.name, "adaptive_c", adaptive_c, 1e-3, "with adaptive_p=0 (no adaptive weight)")
        self.guidance_scale, self.flow_ratio = guidance_scale, flow_ratio
        self.time_sampler = time_sampler or UniformTime(t_min=1e-3)
        self.adaptive_p, self.adaptive_c, self.tangent_warmup = adaptive_p, adaptive_c, tangent_warmup

    def sampling_model(self, student: nn.Module) -> nn.Module:
        return FlowMapModel(student)

    def draw_times(self, path: Any, n: int, ctx: Context) -> tuple[Tensor, Tensor]:
        a = self.time_sampler(path, n, ctx.generator).to(ctx.device, ctx.dtype)
        b = self.time_sampler(path, n, ctx.generator).to(ctx.device, ctx.dtype)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        same = ctx.rand((n,)) < self.flow_ratio
        return t, torch.where(same, t, r)

    @torch.no_grad()
    def target(self, student: nn.Module, x: Tensor, t: Tensor, r: Tensor, cond: Any, v: Tensor,
               warm: float = 1.0) -> Tensor:
        """``v - (t - r) du/dt`` with the total derivative along ``v`` from one JVP (``r`` held fixed)."""
        def fn(x_: Tensor, t_: Tensor, r_: Tensor) -> Tensor:
            return average_velocity(student, x_, t_, r_, cond)

        with sdpa_kernel(SDPBackend.MATH):
            _, dudt = torch.func.jvp(fn, (x, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
        return v - warm * expand_like(t - r, x) * dudt

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError("FlowMapDistillation needs data (batch.x0) to noise; got a data-free batch")
        student, path = ctx.student, ctx.student.path
        t, r = self.draw_times(path, batch.size, ctx)
        x_t = path.add_noise(batch.x0, ctx.randn(batch.x0.shape), t)
        with torch.no_grad():
            v = GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition).velocity(x_t, t, batch.cond)
        warm = 1.0 if self.tangent_warmup <= 0 else min(1.0, ctx.iteration / self.tangent_warmup)
        tgt = self.target(student, x_t, t, r, batch.cond, v, warm)
        sq = (average_velocity(student, x_t, t, r, batch.cond) - tgt) ** 2
        per = per_sample(sq, batch.mask, "sum")
        weight = (per.detach() + self.adaptive_c) ** -self.adaptive_p
        return LossOutput((weight * per).mean(), {"mse": per_sample(sq.detach(), batch.mask).mean()})
