"""Distilling a bidirectional video teacher into a block-causal, few-step streaming student.

Four ways to train the causal student, differing only in what the student sees as context (docs/formulations.md §9):

* ``CausVid`` — "From Slow Bidirectional to Fast Autoregressive Video Diffusion Models" (Yin et al., 2025):
  first ODE regression on teacher pairs (optionally from a ``TeacherCache``), each chunk at its own grid step
  under the block-causal mask; then DMD2 on the whole clip (bidirectional guided teacher as real score, a
  fake score trained on the student's clips), the student's input being clean clips noised per chunk
  (diffusion-forcing context: earlier chunks are noisy ground truth).
* ``SelfForcing`` — "Self Forcing: Bridging the Train-Test Gap in Autoregressive Video Diffusion" (Huang et al.,
  2025): the student rolls out chunk by chunk on its *own* outputs through the KV cache, as at inference; the
  gradient is kept at one exit step drawn from the shared generator (identical on every DDP rank), context
  is optionally noised, and the DMD loss is taken on the whole generated clip.
* ``TeacherForcing`` — the same DMD, but each chunk is denoised with clean ground-truth context in the cache.
* ``DiffusionForcing`` — "Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion" (Chen et
  al., 2024): many-step causal fine-tuning from data with an independent noise level per chunk; no distillation.

Teacher forcing and diffusion forcing train on ground-truth context the student never sees when it streams
(exposure bias); Self-Forcing closes that gap. All four reuse ``DMD2``'s updates (dm direction, fake-score
loss, plan); only ``generate`` differs. The DM time is one time for all frames (CausVid/Self-Forcing's
``uniform_timestep``). The fake score defaults to a bidirectional copy of the teacher, as in both papers'
released code: a block-causal fake score (``fake_score_causal=True``) cannot see later noisy frames, so it
does not match the bidirectional real score even when the student is perfect.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unidistill.cache import TeacherCache
from unidistill.causal import causal_network
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, refuse_unused
from unidistill.objectives.dmd import DMD2, FakeScoreOptions
from unidistill.objectives.losses import squared_error
from unidistill.objectives.rollout import ChunkRollout, rollout
from unidistill.objectives.trajectory import TrajectoryRegression
from unidistill.timesteps import TimeSampler, UniformTime


def _not_causal(name: str, causal: bool, latent_shape: tuple[int, ...]) -> str | None:
    if not causal:
        return (f"{name} trains a block-causal streaming student: it needs a causal modality (a CausalNetwork with "
                f"a frame axis), got a non-causal one with latent shape {latent_shape}")
    return None


def chunk_index(batch: int, frames: int, chunk: int, high: int, generator: torch.Generator,
                device: torch.device) -> Tensor:
    """``[B, T]`` integer draws in ``[0, high)``, one per chunk of ``chunk`` frames, repeated over its frames."""
    n_chunks = -(-frames // chunk)
    j = torch.randint(0, high, (batch, n_chunks), generator=generator, device=generator.device)
    return j.to(device).repeat_interleave(chunk, dim=1)[:, :frames]


class CausVid(DMD2):
    """CausVid: ODE-regression initialisation then DMD with per-chunk noised data as the student's input.

    Args:
        student_steps: denoising steps per chunk (grid ``path.time_grid(student_steps)``).
        regression_iterations: iterations of ODE regression before DMD starts (0: start with DMD).
        regression_teacher_steps, regression_solver: the teacher ODE for regression pairs made on the fly.
        cache: a ``TeacherCache`` of pairs whose trajectory times are the student grid (then no teacher solve).
        context_time: noise level of context frames written to the cache at sampling time (0 = clean).
        fake_score_causal: run the fake score block-causally (default bidirectional; see the module docstring).
        guidance_scale, fake_updates_per_student, dm_time, fake_score: as in ``DMD2``.
    """

    student_solver = "causal"

    @classmethod
    def tiny(cls, modality: Any) -> CausVid:
        return cls(student_steps=2, regression_iterations=1, regression_teacher_steps=2, fake_updates_per_student=1)

    def __init__(self, student_steps: int = 4, regression_iterations: int = 0, regression_teacher_steps: int = 16,
                 regression_solver: str = "heun", cache: TeacherCache | None = None, context_time: float = 0.0,
                 fake_score_causal: bool = False, guidance_scale: float = 1.0, fake_updates_per_student: int = 5,
                 dm_time: TimeSampler | None = None, fake_score: FakeScoreOptions | None = None) -> None:
        super().__init__(guidance_scale=guidance_scale, fake_updates_per_student=fake_updates_per_student,
                         dm_time=dm_time, fake_score=fake_score, student_steps=student_steps)
        if regression_iterations < 0 or not 0.0 <= context_time < 1.0:
            raise ValueError(f"need regression_iterations >= 0 and context_time in [0, 1), got "
                             f"{regression_iterations}, {context_time}")
        if regression_iterations == 0 or cache is not None:
            why = ("with regression_iterations=0 (no ODE-regression stage)" if regression_iterations == 0
                   else "with a cache (the regression pairs are read from it, not solved)")
            refuse_unused(self.name, "regression_teacher_steps", regression_teacher_steps, 16, why)
            refuse_unused(self.name, "regression_solver", regression_solver, "heun", why)
        if regression_iterations == 0:
            refuse_unused(self.name, "cache", cache, None,
                          "with regression_iterations=0 (it serves the ODE regression)")
        self.reg_iterations, self.context_time = regression_iterations, context_time
        self.fake_causal = fake_score_causal
        solve = {} if cache is not None else {"teacher_steps": regression_teacher_steps,
                                              "teacher_solver": regression_solver, "guidance_scale": guidance_scale}
        self.ode = TrajectoryRegression(student_steps, cache=cache, **solve)

    @property
    def student_solver_kwargs(self) -> dict[str, Any]:
        return {"context_time": self.context_time}

    @property
    def cache_trajectory_steps(self) -> int:
        return self.ode.cache_trajectory_steps if self.reg_iterations > 0 else 0

    def unsupported_reason(self, latent_shape: tuple[int, ...], causal: bool) -> str | None:
        return _not_causal(self.name, causal, latent_shape)

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        roles = super().build_roles(student, teacher)
        causal_network(roles["fake_score"]).causal = self.fake_causal
        return roles

    def plan(self, iteration: int) -> list[str]:
        if iteration < self.reg_iterations:
            return ["student"]
        return super().plan(iteration - self.reg_iterations)

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if ctx.iteration < self.reg_iterations:
            return self.ode_regression_loss(batch, ctx)
        return super().student_loss(batch, ctx)

    def grid(self, ctx: Context) -> list[float]:
        return ctx.student.path.time_grid(self.student_steps).tolist()

    def ode_regression_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        """CausVid's initialisation: every chunk at its own grid step of the same teacher trajectory, one
        block-causal call, its ``x0`` regressed on the trajectory's endpoint."""
        student = ctx.student
        grid = student.path.time_grid(self.student_steps, device=ctx.device)
        _, cond, states = self.ode.pairs(batch, ctx, grid)
        stacked = torch.stack(states[:-1], dim=1)  # [B, K, T, ...]
        b, _, frames = stacked.shape[:3]
        j = chunk_index(b, frames, causal_network(student).chunk_size, self.student_steps, ctx.generator, ctx.device)
        x_in = stacked[torch.arange(b, device=ctx.device)[:, None], j, torch.arange(frames, device=ctx.device)]
        t = grid.to(ctx.dtype)[j]
        per = squared_error(student(x_in, t, cond).x0, states[-1], batch.mask)
        return LossOutput(per.mean(), {"ode_regression": per.mean().detach()})

    def _data(self, batch: Batch) -> Tensor:
        if batch.x0 is None:
            raise ValueError(f"{self.name} noises ground-truth clips for the student's input; got a data-free batch")
        return batch.x0

    def generate(self, batch: Batch, ctx: Context, grad: bool) -> tuple[Tensor, Tensor]:
        """Clean clips noised at an independent grid step per chunk, denoised in one block-causal call."""
        x0 = self._data(batch)
        grid = torch.tensor(self.grid(ctx), device=ctx.device, dtype=ctx.dtype)
        j = chunk_index(batch.size, x0.shape[1], causal_network(ctx.student).chunk_size, self.student_steps,
                        ctx.generator, ctx.device)
        t = grid[j]
        x_t = ctx.student.path.add_noise(x0, ctx.randn(x0.shape), t)
        with torch.set_grad_enabled(grad):
            return ctx.student(x_t, t, batch.cond).x0, t[:, 0]


class SelfForcing(CausVid):
    """Self-Forcing: DMD on clips the student generates autoregressively through its own KV cache.

    Args (besides ``CausVid``'s): ``last_step_only`` keeps the gradient at the last step instead of a random
    exit step; ``context_time`` (context noise) applies in training and sampling alike.
    """

    @classmethod
    def tiny(cls, modality: Any) -> SelfForcing:
        return cls(student_steps=2, fake_updates_per_student=1)

    def __init__(self, student_steps: int = 4, last_step_only: bool = False, regression_iterations: int = 0,
                 regression_teacher_steps: int = 16, regression_solver: str = "heun",
                 cache: TeacherCache | None = None, context_time: float = 0.0, fake_score_causal: bool = False,
                 guidance_scale: float = 1.0, fake_updates_per_student: int = 5, dm_time: TimeSampler | None = None,
                 fake_score: FakeScoreOptions | None = None) -> None:
        super().__init__(student_steps=student_steps, regression_iterations=regression_iterations,
                         regression_teacher_steps=regression_teacher_steps, regression_solver=regression_solver,
                         cache=cache, context_time=context_time, fake_score_causal=fake_score_causal,
                         guidance_scale=guidance_scale, fake_updates_per_student=fake_updates_per_student,
                         dm_time=dm_time, fake_score=fake_score)
        self.last_step_only = last_step_only

    def exit_step(self, ctx: Context) -> int:
        """Drawn from the shared generator: it changes the graph, so every rank must pick the same."""
        if self.last_step_only:
            return self.student_steps - 1
        return int(torch.randint(0, self.student_steps, (1,), generator=ctx.shared_generator))

    def generate(self, batch: Batch, ctx: Context, grad: bool) -> tuple[Tensor, Tensor]:
        grid = self.grid(ctx)
        k = self.exit_step(ctx)
        x, _ = rollout(ctx.student, ctx.noise(batch), batch.cond, grid, ctx.randn, k, grad, self.context_time)
        return x, torch.full((batch.size,), grid[k], device=ctx.device, dtype=ctx.dtype)


class TeacherForcing(CausVid):
    """DMD with teacher forcing: chunk by chunk, each chunk noised at a random grid step and denoised while the
    cache holds the clean ground-truth earlier chunks (the exposure-bias baseline of Self-Forcing)."""

    @classmethod
    def tiny(cls, modality: Any) -> TeacherForcing:
        return cls(student_steps=2, fake_updates_per_student=1)

    def generate(self, batch: Batch, ctx: Context, grad: bool) -> tuple[Tensor, Tensor]:
        x0 = self._data(batch)
        grid = torch.tensor(self.grid(ctx), device=ctx.device, dtype=ctx.dtype)
        k = causal_network(ctx.student).chunk_size
        run = ChunkRollout(ctx.student, batch.cond, grid.tolist(), ctx.randn, self.context_time)
        outs = []
        try:
            for start in range(0, x0.shape[1], k):
                gt = x0[:, start:start + k]
                j = torch.randint(0, self.student_steps, (batch.size,), generator=ctx.generator).to(ctx.device)
                x_t = ctx.student.path.add_noise(gt, ctx.randn(gt.shape), grid[j])
                with torch.set_grad_enabled(grad):
                    outs.append(run.call(x_t, grid[j]))
                run.commit(gt)
        finally:
            run.close()
        return torch.cat(outs, dim=1), torch.full((batch.size,), float(grid[0]), device=ctx.device)


class DiffusionForcing(Objective):
    """Diffusion forcing: denoising on data with an independent time per chunk, block-causal, from the teacher's
    weights (the student is the modality's causal copy of the teacher). Sampled with the causal rollout."""

    student_solver = "causal"

    @classmethod
    def tiny(cls, modality: Any) -> DiffusionForcing:
        return cls()

    def __init__(self, time_sampler: TimeSampler | None = None, context_time: float = 0.0) -> None:
        self.time_sampler = time_sampler or UniformTime(t_min=1e-3)
        self.context_time = context_time

    @property
    def student_solver_kwargs(self) -> dict[str, Any]:
        return {"context_time": self.context_time}

    def unsupported_reason(self, latent_shape: tuple[int, ...], causal: bool) -> str | None:
        return _not_causal(self.name, causal, latent_shape)

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError("DiffusionForcing trains from data (batch.x0); got a data-free batch")
        net = ctx.student
        x0 = batch.x0
        k = causal_network(net).chunk_size
        n_chunks = -(-x0.shape[1] // k)
        t = self.time_sampler(net.path, batch.size * n_chunks, ctx.generator).to(x0)
        t = t.reshape(batch.size, n_chunks).repeat_interleave(k, dim=1)[:, : x0.shape[1]]
        eps = ctx.randn(x0.shape)
        target = net.path.from_prediction((x0, eps), t, net.prediction)
        per = squared_error(net.raw(net.path.add_noise(x0, eps, t), t, batch.cond), target, batch.mask)
        return LossOutput(per.mean(), {"mse": per.mean().detach()})
