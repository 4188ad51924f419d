"""Reflow and k-step distillation of a flow.

Liu et al., 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow"
and Liu et al., 2024, "InstaFlow: One Step is Enough for High-Quality Diffusion-Based Text-to-Image
Generation". A *coupling* is ``(z, x1 = ODE(z))``: unit noise ``z`` and the flow's ODE sample from it.

* **Reflow round** ``r`` (``rounds`` of them, ``round_length`` iterations each): the student is trained
  with flow matching on the interpolations of couplings, ``x_t = alpha(t) x1 + sigma(t) z`` (a straight
  line on the rectified-flow path), target in the student's own prediction type. Round 0's couplings
  come from the (guided) teacher, round ``r > 0``'s from the frozen student at the end of round ``r - 1``.
* **k-step distillation** (every iteration after the rounds): on the student grid ``path.time_grid(k)``
  a random grid time ``t_j`` is drawn, the student sees the coupling's interpolation ``x_{t_j}`` and its
  x0 prediction is regressed on ``x1`` (for ``k = 1``: one-step noise -> sample, as in InstaFlow). Its
  couplings come from the last reflowed model (the teacher if ``rounds = 0``).

Couplings are generated on the fly: coupling ``i`` of stage ``r`` has noise drawn from its own seed
``ctx.seed(coupling_seed, r, i)`` (``coupling_noise``), so it reproduces exactly; ``i`` is drawn from a fixed pool
of ``num_couplings`` ids (or is unique per iteration and data-parallel rank when ``num_couplings`` is
``None``). The condition is the batch's. Alternatively, the teacher's couplings come from a ``TeacherCache``
(``cache``). The frozen previous-round model is the auxiliary, non-trainable role ``phase_teacher`` (checkpointed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unidistill.cache import TeacherCache, solve_with_checkpoints
from unidistill.denoiser import GuidedDenoiser
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, check_choice, refuse_unused
from unidistill.objectives.losses import distance, squared_error
from unidistill.objectives.progressive import PhaseTeacher
from unidistill.paths import Prediction
from unidistill.timesteps import TimeSampler, UniformTime


class Reflow(Objective):
    student_solver = "ddim"

    @classmethod
    def tiny(cls, modality: Any) -> Reflow:
        # one reflow round of two iterations, then the distillation stage, within a fast-tier run
        return cls(rounds=1, round_length=2, coupling_steps=3)

    def __init__(
        self,
        rounds: int = 1,
        round_length: int = 1000,
        distill_steps: int = 1,
        coupling_steps: int = 32,
        coupling_solver: str = "heun",
        guidance_scale: float = 1.0,
        coupling_seed: int = 0,
        num_couplings: int | None = None,
        time_sampler: TimeSampler | None = None,
        distance: str = "l2",
        huber_c: float = 1e-3,
        cache: TeacherCache | None = None,
    ) -> None:
        if rounds < 0 or round_length < 1 or distill_steps < 1:
            raise ValueError(f"need rounds >= 0, round_length >= 1, distill_steps >= 1; got {rounds}, "
                             f"{round_length}, {distill_steps}")
        check_choice(self.name, "distance", distance, ("l2", "pseudo_huber"))
        if distance == "l2":
            refuse_unused(self.name, "huber_c", huber_c, 1e-3, "with distance='l2' (it is pseudo-Huber's constant)")
        if rounds == 0:
            refuse_unused(self.name, "time_sampler", time_sampler, None,
                          "with rounds=0 (it draws the reflow rounds' times; k-step distillation uses the grid)")
        if cache is not None:
            refuse_unused(self.name, "guidance_scale", guidance_scale, 1.0,
                          "with a cache (the teacher's couplings are the cached samples, whatever guidance made them)")
            if rounds == 0:
                why = "with a cache and rounds=0 (every coupling is a cached teacher sample)"
                refuse_unused(self.name, "coupling_steps", coupling_steps, 32, why)
                refuse_unused(self.name, "coupling_solver", coupling_solver, "heun", why)
                refuse_unused(self.name, "num_couplings", num_couplings, None, why)
        self.rounds, self.round_length, self.distill_steps = rounds, round_length, distill_steps
        self.coupling_steps, self.coupling_solver = coupling_steps, coupling_solver
        self.guidance_scale, self.coupling_seed, self.num_couplings = guidance_scale, coupling_seed, num_couplings
        self.time_sampler = time_sampler or UniformTime(t_min=1e-3)
        self.distance, self.huber_c = distance, huber_c
        self.cache = cache

    def stage(self, iteration: int) -> int:
        """Reflow round index, or ``rounds`` for the distillation stage."""
        return min(iteration // self.round_length, self.rounds)

    def check_teacher(self, teacher: nn.Module) -> None:
        if self.cache is not None:
            self.cache.check_teacher(teacher)

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        return {"phase_teacher": PhaseTeacher(student)}

    # --- couplings ---------------------------------------------------------------------------
    def coupling_ids(self, n: int, ctx: Context) -> Tensor:
        if self.num_couplings is None:
            # unique per iteration *and rank*: without the rank, every data-parallel rank drew the same ids,
            # hence the same coupling noise (only the conditions differed), so a DDP run of R ranks saw R
            # times fewer distinct couplings than its global batch. One process (rank 0 of 1) keeps the
            # ids it always had.
            return (ctx.iteration * ctx.world_size + ctx.rank) * n + torch.arange(n)
        return torch.randint(0, self.num_couplings, (n,), generator=ctx.generator)

    def coupling_noise(self, ids: Tensor, stage: int, shape: tuple[int, ...], ctx: Context) -> Tensor:
        """Unit noise of each coupling, from its own seed ``ctx.seed(coupling_seed, stage, id)``."""
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(ctx.seed(self.coupling_seed, stage, int(i))))
                for i in ids]
        return torch.stack(rows).to(ctx.device, ctx.dtype)

    def source(self, ctx: Context, stage: int) -> nn.Module:
        """The flow that generates stage ``stage``'s couplings."""
        if stage == 0:
            return GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition)
        pt = ctx.roles["phase_teacher"]
        pt.refresh(ctx.student, stage)
        return pt

    @torch.no_grad()
    def couplings(self, batch: Batch, ctx: Context, stage: int) -> tuple[Tensor, Tensor, Any]:
        """``(noise, endpoint, cond)`` for this batch."""
        if stage == 0 and self.cache is not None:
            self.cache.check_teacher(ctx.teacher)
            rec = self.cache.batch(torch.randint(0, len(self.cache), (batch.size,), generator=ctx.generator))
            return rec["noise"].to(ctx.device, ctx.dtype), rec["sample"].to(ctx.device, ctx.dtype), rec.get("cond")
        ids = self.coupling_ids(batch.size, ctx)
        # the generating flow's stage: the teacher or the last reflowed model
        noise = self.coupling_noise(ids, stage, tuple(ctx.latent_shape), ctx)
        x1, _, _ = solve_with_checkpoints(self.source(ctx, stage), noise, self.coupling_steps, batch.cond,
                                          self.coupling_solver)
        return noise, x1, batch.cond

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        student, path = ctx.student, ctx.student.path
        stage = self.stage(ctx.iteration)
        noise, x1, cond = self.couplings(batch, ctx, stage)
        if stage < self.rounds:  # reflow: flow matching on the coupling's interpolation
            t = self.time_sampler(path, batch.size, ctx.generator).to(ctx.device, ctx.dtype)
            x_t = path.add_noise(x1, noise, t)
            target = path.from_prediction(Prediction(x1, noise), t, student.prediction)
            per = squared_error(student.raw(x_t, t, cond), target, batch.mask)
            return LossOutput(per.mean(), {"reflow_mse": per.mean().detach()})
        grid = path.time_grid(self.distill_steps, device=ctx.device).to(ctx.dtype)
        j = torch.randint(0, self.distill_steps, (batch.size,), generator=ctx.generator).to(ctx.device)
        t = grid[j]
        x_t = path.add_noise(x1, noise, t)
        per = distance(student(x_t, t, cond).x0, x1, self.distance, self.huber_c, batch.mask)
        return LossOutput(per.mean(), {"distill_distance": per.mean().detach()})
