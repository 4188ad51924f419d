"""Continuous-time consistency distillation (sCM) in TrigFlow.

Lu & Song, 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models"
(docs/formulations.md §3.5). On the TrigFlow path ``x_t = cos t x0 + sin t z`` (``z = sigma_d eps``)
the consistency function is ``f(x_t, t) = cos t x_t - sin t sigma_d F(x_t, t)``. Both networks are seen
in TrigFlow coordinates exactly through ``OnPath(., TrigFlow(sigma_d))`` (SNR matching, shared
``(x0, eps)``): ``sigma_d F`` is the TrigFlow velocity of the student's prediction, so ``f`` *is* the
student's own x0 prediction and the student keeps its path, prediction type and initialisation.

Per iteration (sCD): ``sigma ~ lognormal(p_mean, p_std)``, ``t = atan(sigma / sigma_d)``; the teacher's
TrigFlow velocity ``dx/dt`` (guided, under ``no_grad``); the tangent

    g = -cos^2 t (sigma_d F- - dx/dt) - r cos t sin t (x_t + sigma_d dF-/dt),   r = min(1, iteration / warmup)

where ``cos t sin t dF-/dt`` is the total derivative along the teacher ODE, from ``torch.func.jvp`` through
the student with tangents ``(cos t sin t dx/dt, cos t sin t)`` under ``no_grad`` and the math SDPA kernel,
or (``tangent="finite_difference"``) a central difference along the same direction,
``[F(x + h dx/dt, t + h) - F(x - h dx/dt, t - h)] / 2h``. ``g <- g / (||g|| + c)`` per sample (plain L2
as in the paper, or ``"rms"`` as FastGen's default). Loss per sample: ``w(t) e^{-l(t)} mean((F - F- - g)^2)
+ l(t)`` with ``w = 1 / (sigma_d tan t)`` (prior weighting) and ``l`` a tiny learned log-variance head on
``t`` (``adaptive_weighting``), the separate trainable role ``logvar``, trained by the same loss in one joint update
(plan ``"student+logvar"``: one backward, both optimizers step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from unidistill.denoiser import GuidedDenoiser, OnPath
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, refuse_unused
from unidistill.objectives.losses import per_sample, squared_error
from unidistill.paths import TrigFlow, expand_like
from unidistill.timesteps import LogNormalSigmaTime


class LogVarHead(nn.Module):
    """``l(t)``: Fourier features of ``t`` -> small MLP -> scalar, zero-initialised output (``l = 0``)."""

    def __init__(self, features: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), features // 2)))
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: Tensor) -> Tensor:
        ang = t.reshape(-1, 1).float() * self.freqs[None]
        return self.mlp(torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)).reshape(-1).to(t.dtype)


class ContinuousConsistency(Objective):
    """sCD; see the module docstring."""

    student_solver = "consistency"

    @classmethod
    def tiny(cls, modality: Any) -> ContinuousConsistency:
        return cls(sigma_data=1.0, tangent_warmup=2)

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.0,
        p_std: float = 1.4,
        sigma_max: float = 80.0,
        guidance_scale: float = 1.0,
        tangent: str = "jvp",
        fd_step: float = 1e-3,
        tangent_warmup: int = 10_000,
        tangent_norm_c: float = 0.1,
        tangent_norm: str = "l2",
        adaptive_weighting: bool = True,
        prior_weighting: bool = True,
    ) -> None:
        if tangent not in ("jvp", "finite_difference"):
            raise ValueError(f"tangent must be 'jvp' or 'finite_difference', got {tangent!r}")
        if tangent_norm not in ("l2", "rms"):
            raise ValueError(f"tangent_norm must be 'l2' or 'rms', got {tangent_norm!r}")
        if tangent == "jvp":
            refuse_unused(self.name, "fd_step", fd_step, 1e-3,
                          "with tangent='jvp' (it is the finite difference's step)")
        self.trig = TrigFlow(sigma_data)
        self.sigma_data, self.guidance_scale = sigma_data, guidance_scale
        t_hi = math.atan(sigma_max / sigma_data) / self.trig.t_max
        self.time_sampler = LogNormalSigmaTime(p_mean, p_std, t_min=0.0, t_max=min(t_hi, 1.0))
        self.tangent, self.fd_step, self.tangent_warmup = tangent, fd_step, tangent_warmup
        self.tangent_norm_c, self.tangent_norm = tangent_norm_c, tangent_norm
        self.adaptive_weighting, self.prior_weighting = adaptive_weighting, prior_weighting
        self.trainable_roles = ("student", "logvar") if adaptive_weighting else ("student",)

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        return {"logvar": LogVarHead()} if self.adaptive_weighting else {}

    # --- TrigFlow views ----------------------------------------------------------------------
    def F(self, student: nn.Module, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The TrigFlow network output ``F = (TrigFlow velocity) / sigma_d`` of ``student``."""
        return OnPath(student, self.trig).velocity(x, t, cond) / self.sigma_data

    @torch.no_grad()
    def teacher_velocity(self, ctx: Context, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        return OnPath(GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition), self.trig).velocity(
            x, t, cond)

    @torch.no_grad()
    def tangent_term(self, student: nn.Module, x: Tensor, t: Tensor, cond: Any, dxdt: Tensor,
                     method: str | None = None) -> Tensor:
        """``cos t sin t dF/dt`` along the ODE direction ``dxdt``, by JVP or central finite difference."""
        cs = torch.cos(t) * torch.sin(t)
        if (method or self.tangent) == "jvp":
            def fn(x_: Tensor, t_: Tensor) -> Tensor:
                return self.F(student, x_, t_, cond)

            with sdpa_kernel(SDPBackend.MATH):
                return torch.func.jvp(fn, (x, t), (expand_like(cs, x) * dxdt, cs))[1]
        h = self.fd_step
        plus = self.F(student, x + h * dxdt, t + h, cond)
        minus = self.F(student, x - h * dxdt, t - h, cond)
        return expand_like(cs, x) * (plus - minus) / (2 * h)

    def normalise(self, g: Tensor, mask: Tensor | None) -> Tensor:
        norm = per_sample(g * g, mask, "sum" if self.tangent_norm == "l2" else "mean").sqrt()
        return g / expand_like(norm + self.tangent_norm_c, g)

    def plan(self, iteration: int) -> list[str]:
        """One update: with adaptive weighting, one joint loss steps the student and the log-variance head."""
        return ["student+logvar"] if self.adaptive_weighting else ["student"]

    def distance(self, batch: Batch, ctx: Context) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Per-sample ``w(t) ||F - F- - g||^2`` (the consistency distance with its prior weight), ``t`` and logs."""
        if batch.x0 is None:
            raise ValueError("ContinuousConsistency needs data (batch.x0) to noise; got a data-free batch")
        student = ctx.student
        t = self.time_sampler(self.trig, batch.size, ctx.generator).to(ctx.device, ctx.dtype)
        x_t = self.trig.add_noise(batch.x0, ctx.randn(batch.x0.shape), t)
        dxdt = self.teacher_velocity(ctx, x_t, t, batch.cond)
        F = self.F(student, x_t, t, batch.cond)
        F_minus = F.detach()
        dF = self.tangent_term(student, x_t, t, batch.cond, dxdt)
        r = 1.0 if self.tangent_warmup <= 0 else min(1.0, ctx.iteration / self.tangent_warmup)
        c, s = expand_like(torch.cos(t), x_t), expand_like(torch.sin(t), x_t)
        g = -c * c * (self.sigma_data * F_minus - dxdt) - r * c * s * x_t - r * self.sigma_data * dF
        g = self.normalise(g, batch.mask)
        per = squared_error(F, F_minus + g, batch.mask)
        w = 1.0 / (self.sigma_data * torch.tan(t)) if self.prior_weighting else torch.ones_like(t)
        return w * per, t, per, {"distance": per.mean().detach(), "tangent_warmup": torch.tensor(r)}

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        weighted, _, _, logs = self.distance(batch, ctx)
        return LossOutput(weighted.mean(), logs)

    def student_logvar_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        """``e^{-l(t)} w d + l(t)``: its gradient on the student is the weighted distance's, on the head the
        log-variance fit of the (detached) distance, so one backward gives both updates exactly."""
        weighted, t, _, logs = self.distance(batch, ctx)
        logvar = ctx.roles["logvar"](t)
        logs["logvar"] = logvar.mean().detach()
        return LossOutput((torch.exp(-logvar) * weighted + logvar).mean(), logs)
