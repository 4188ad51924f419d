"""Trajectory regression on teacher ODE pairs (knowledge distillation of the sampler).

Luhman & Luhman, 2021, "Knowledge Distillation in Iterative Generative Models for Improved Sampling
Speed", and the ODE-pair initialisation of Yin et al., 2024, "One-step Diffusion with Distribution
Matching Distillation" and "From Slow Bidirectional to Fast Autoregressive Video Diffusion Models"
(CausVid): for the same noise, the student's k-step output is regressed on the teacher's ODE solution.

Two modes (docs/formulations.md §8):

* ``trajectory`` (default; FastGen KD / CausVid): the teacher trajectory is recorded at the student's
  grid times ``path.time_grid(k)``; each sample takes a random grid index ``j`` and the student's x0
  prediction at the teacher's state ``x_{t_j}`` is regressed on the teacher's endpoint. Cheap (one
  student call), and for ``k = 1`` it is exactly one-step noise -> sample regression.
* ``rollout``: the student runs its full k-step DDIM chain from the same starting latent *with* gradient
  through every step, and the final output is regressed on the endpoint.

Pairs come from the (guided) teacher on the fly (noise from the context generator, conditions from the
batch) or from a ``TeacherCache`` (``unidistill.cache``) generated with ``trajectory_times`` equal to the
student grid (endpoint-only caches suffice for ``k = 1`` and for ``rollout``). Either way the student starts as
the teacher (``init_from_teacher``, as Luhman & Luhman and SinSR do); with a cache the teacher is loaded for that
alone, and the cache is refused if another teacher made it.

``fidelity`` (a ``FidelityLoss``) adds data-fidelity terms on the student's prediction against the paired data
``batch.x0``; it needs pairs made on the fly for the batch's conditions (not a cache).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unidistill.cache import TeacherCache, solve_with_checkpoints
from unidistill.denoiser import GuidedDenoiser
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, check_choice, refuse_unused
from unidistill.objectives.fidelity import FidelityLoss
from unidistill.objectives.losses import distance
from unidistill.solvers import initial_latent, ode_step


class TrajectoryRegression(Objective):
    student_solver = "ddim"

    @classmethod
    def tiny(cls, modality: Any) -> TrajectoryRegression:
        return cls(student_steps=2, teacher_steps=4)

    def __init__(
        self,
        student_steps: int = 1,
        teacher_steps: int = 32,
        teacher_solver: str = "heun",
        guidance_scale: float = 1.0,
        mode: str = "trajectory",
        distance: str = "l2",
        huber_c: float = 1e-3,
        cache: TeacherCache | None = None,
        fidelity: FidelityLoss | None = None,
        init_from_teacher: bool = True,
    ) -> None:
        if mode not in ("trajectory", "rollout"):
            raise ValueError(f"mode must be 'trajectory' or 'rollout', got {mode!r}")
        if student_steps < 1 or teacher_steps < 1:
            raise ValueError(f"need student_steps >= 1 and teacher_steps >= 1, got {student_steps}, {teacher_steps}")
        check_choice(self.name, "distance", distance, ("l2", "pseudo_huber"))
        if distance == "l2":
            refuse_unused(self.name, "huber_c", huber_c, 1e-3, "with distance='l2' (it is pseudo-Huber's constant)")
        if cache is not None:
            why = "with a cache (the teacher's pairs are read from it, not solved)"
            refuse_unused(self.name, "teacher_steps", teacher_steps, 32, why)
            refuse_unused(self.name, "teacher_solver", teacher_solver, "heun", why)
            refuse_unused(self.name, "guidance_scale", guidance_scale, 1.0, why)
        self.student_steps, self.teacher_steps, self.teacher_solver = student_steps, teacher_steps, teacher_solver
        self.guidance_scale, self.mode = guidance_scale, mode
        self.distance, self.huber_c = distance, huber_c
        self.cache, self.fidelity = cache, fidelity
        if fidelity is not None and cache is not None:
            raise ValueError("fidelity compares the student with the batch's own data, but a cache pairs it with "
                             "cached conditions; use pairs made on the fly (cache: null) with fidelity")
        if cache is not None:
            self.needs_teacher = False  # the pairs are read, not solved; the teacher is loaded only to start from
        self.init_from_teacher = init_from_teacher

    def check_teacher(self, teacher: nn.Module) -> None:
        if self.cache is not None:
            self.cache.check_teacher(teacher)

    @property
    def cache_trajectory_steps(self) -> int:
        return self.student_steps if self.mode == "trajectory" and self.student_steps > 1 else 0

    def pairs(self, batch: Batch, ctx: Context, grid: Tensor) -> tuple[Tensor, Any, list[Tensor]]:
        """Starting unit noise, conditions, and teacher states at every grid time (last = sample)."""
        times = grid.tolist()
        if self.cache is not None:
            if "teacher" in ctx.roles:  # a cached run loads no teacher (needs_teacher is False)
                self.cache.check_teacher(ctx.teacher)
            ids = torch.randint(0, len(self.cache), (batch.size,), generator=ctx.generator)
            rec = self.cache.batch(ids)
            noise, cond = rec["noise"].to(ctx.device, ctx.dtype), rec.get("cond")
            mids: list[Tensor] = []
            if self.mode == "trajectory" and len(times) > 2:
                cached = self.cache.trajectory_times or []
                for t in times[1:-1]:
                    match = [k for k, c in enumerate(cached) if abs(c - t) < 1e-9]
                    if not match:
                        raise ValueError(f"the teacher cache has trajectory times {cached}; trajectory "
                                         f"regression on {self.student_steps} steps needs {times[1:-1]}")
                    mids.append(rec["trajectory"][:, match[0]].to(ctx.device, ctx.dtype))
            states = [initial_latent(ctx.student.path, noise, times[0]), *mids]
            return noise, cond, [*states, rec["sample"].to(ctx.device, ctx.dtype)]
        noise = ctx.noise(batch)
        teacher = GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition)
        x, traj, _ = solve_with_checkpoints(teacher, noise, self.teacher_steps, batch.cond, self.teacher_solver,
                                            times[:-1])
        return noise, batch.cond, [*traj, x]

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        student = ctx.student
        path = student.path
        grid = path.time_grid(self.student_steps, device=ctx.device)
        _, cond, states = self.pairs(batch, ctx, grid)
        target = states[-1]
        if self.mode == "rollout":
            x = states[0]
            for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
                tt = torch.full((batch.size,), t, device=ctx.device, dtype=ctx.dtype)
                x = ode_step(student, x, tt, torch.full_like(tt, s), cond, "ddim")
            pred = x
        else:
            j = torch.randint(0, self.student_steps, (batch.size,), generator=ctx.generator).to(ctx.device)
            stacked = torch.stack(states[:-1], dim=1)  # [B, k, *S]
            x_in = stacked[torch.arange(batch.size, device=ctx.device), j]
            t = grid.to(ctx.dtype)[j]
            pred = student(x_in, t, cond).x0
        per = distance(pred, target, self.distance, self.huber_c, batch.mask)
        loss, logs = per.mean(), {"distance": per.mean().detach()}
        if self.fidelity is not None:
            fid, fid_logs = self.fidelity(pred, batch)
            loss, logs = loss + fid, logs | fid_logs
        return LossOutput(loss, logs)
