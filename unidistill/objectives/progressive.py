"""Progressive distillation, plain and guided.

Salimans & Ho, 2022, "Progressive Distillation for Fast Sampling of Diffusion Models": one student DDIM
step ``t -> t''`` must land where two teacher DDIM steps ``t -> t' -> t''`` land. The closed-form x0
target that achieves this (docs/formulations.md §6) is

    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t),   x~ = z_t'' at t'' = 0,

regressed with the truncated-SNR weight ``max(SNR, 1)`` on the x0 error. Phases halve the student's step
count (``teacher_steps / 2, / 4, ...`` down to ``final_steps``), each ``phase_length`` iterations long; the
student of phase ``k`` becomes the teacher of phase ``k + 1``.

Meng et al., 2023, "On Distillation of Guided Diffusion Models": with ``guidance_range`` the student takes
the guidance scale ``w`` as an input (the ``guidance`` slot) and phase 0's teacher is the guided teacher
``u + w (c - u)`` at that ``w``; optional ``guidance_distill_iterations`` first run the paper's stage 1,
regressing the student's x0 on the guided teacher's x0 at the same ``(x_t, t, w)``.

Checkpointing: the frozen teacher of the current phase is an auxiliary, non-trainable role
``phase_teacher`` (``build_roles``), a ``PhaseTeacher`` module holding a copy of the student and a
``phase`` buffer, so both live in the run's state dict and a resumed run continues in the right phase.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.denoiser import GuidedDenoiser
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, refuse_unused
from unidistill.objectives.losses import squared_error
from unidistill.paths import Path, expand_like
from unidistill.solvers import ode_step


class PhaseTeacher(nn.Module):
    """A frozen copy of the student that serves as the next phase's (or reflow round's) teacher.

    ``phase`` (a buffer, so it is checkpointed with the weights) records which phase the copy was made
    for; ``-1`` means "never filled" (phase 0 uses the real teacher)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.denoiser = copy.deepcopy(student)
        self.denoiser.requires_grad_(False)
        self.denoiser.eval()
        self.register_buffer("phase", torch.tensor(-1, dtype=torch.long))

    def train(self, mode: bool = True) -> PhaseTeacher:  # always evaluated in eval mode
        super().train(mode)
        self.denoiser.eval()
        return self

    @property
    def path(self) -> Path:
        return self.denoiser.path

    @property
    def nfe_per_call(self) -> int:
        return 1

    @torch.no_grad()
    def refresh(self, student: nn.Module, phase: int) -> bool:
        """Copy the student's weights in when ``phase`` changes; returns whether it did."""
        if int(self.phase) == phase:
            return False
        self.denoiser.load_state_dict(student.state_dict())
        self.phase.fill_(phase)
        return True

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, guidance: Tensor | None = None) -> Any:
        return self.denoiser(x_t, t, cond, guidance)


def two_step_target(path: Path, z_t: Tensor, t: Tensor, z_tpp: Tensor, t_pp: Tensor) -> Tensor:
    """The x0 that makes one DDIM step ``(z_t, t) -> t''`` land on ``z_t''`` (``x~ = z_t''`` where ``t'' = 0``)."""
    a, s = expand_like(path.alpha(t), z_t), expand_like(path.sigma(t), z_t)
    a2, s2 = expand_like(path.alpha(t_pp), z_t), expand_like(path.sigma(t_pp), z_t)
    ratio = s2 / s.clamp_min(1e-12)
    return (z_tpp - ratio * z_t) / (a2 - ratio * a).clamp_min(1e-12)


class ProgressiveDistillation(Objective):
    """See the module docstring. ``phase_length`` iterations per phase; ``teacher_steps`` is phase 0's
    teacher step count (the student samples with half of it); halving stops at ``final_steps``;
    ``phase_lr_decay`` anneals the learning rate linearly to zero within each phase."""

    student_solver = "ddim"

    @classmethod
    def tiny(cls, modality: Any) -> ProgressiveDistillation:
        # phases of two iterations, so a fast-tier run crosses a phase switch (the previous student becomes
        # the phase teacher)
        return cls(teacher_steps=4, final_steps=1, phase_length=2)

    def __init__(
        self,
        teacher_steps: int = 64,
        final_steps: int = 1,
        phase_length: int = 1000,
        guidance_scale: float = 1.0,
        guidance_range: tuple[float, float] | None = None,
        guidance_distill_iterations: int = 0,
        weighting: str = "truncated_snr",
        phase_lr_decay: bool = False,
    ) -> None:
        if teacher_steps < 2 or teacher_steps & (teacher_steps - 1):
            raise ValueError(f"teacher_steps must be a power of two >= 2, got {teacher_steps}")
        if not 1 <= final_steps <= teacher_steps // 2:
            raise ValueError(f"final_steps must be in [1, teacher_steps/2], got {final_steps}")
        if phase_length < 1:
            raise ValueError(f"phase_length must be >= 1, got {phase_length}")
        if weighting not in ("truncated_snr", "snr_plus_one", "none"):
            raise ValueError(f"unknown weighting {weighting!r}; valid: 'truncated_snr', 'snr_plus_one', 'none'")
        if guidance_range is not None:
            refuse_unused(self.name, "guidance_scale", guidance_scale, 1.0,
                          f"with guidance_range={guidance_range} (the scale is drawn from the range per sample)")
        elif guidance_scale == 1.0:
            refuse_unused(self.name, "guidance_distill_iterations", guidance_distill_iterations, 0,
                          "without guidance (guidance_scale=1, no guidance_range): stage 1 distils classifier-free "
                          "guidance into the student")
        self.teacher_steps, self.final_steps, self.phase_length = teacher_steps, final_steps, phase_length
        self.guidance_scale, self.guidance_range = guidance_scale, guidance_range
        self.guidance_distill_iterations = guidance_distill_iterations
        self.weighting = weighting
        self.phase_lr_decay = phase_lr_decay

    # --- schedule ----------------------------------------------------------------------------
    def phase(self, iteration: int) -> int:
        """Phase index at ``iteration`` (``-1`` during guided stage 1)."""
        it = iteration - self.guidance_distill_iterations
        if it < 0:
            return -1
        last = (self.teacher_steps // 2 // self.final_steps).bit_length() - 1
        return min(it // self.phase_length, last)

    def lr_factor(self, iteration: int) -> float:
        """With ``phase_lr_decay`` the learning rate falls linearly to zero within each phase (and stays there
        after the last one), so the student copied as the next phase's teacher has converged instead of being
        an iterate at full learning rate."""
        phase = self.phase(iteration)
        if not self.phase_lr_decay or phase < 0:
            return 1.0
        into = iteration - self.guidance_distill_iterations - phase * self.phase_length
        return max(0.0, 1.0 - into / self.phase_length)

    def student_steps(self, iteration: int) -> int:
        """The student's step count at ``iteration`` (what it should be sampled with)."""
        return self.teacher_steps // 2 ** (max(self.phase(iteration), 0) + 1)

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        return {"phase_teacher": PhaseTeacher(student)}

    def draw_guidance(self, n: int, ctx: Context) -> tuple[Tensor, Tensor | None]:
        return ctx.guidance(n, self.guidance_scale, self.guidance_range)

    def phase_model(self, ctx: Context, phase: int, w: Tensor) -> nn.Module:
        """The teacher of ``phase``: the guided real teacher in phase 0, else the frozen previous student."""
        if phase <= 0:
            return GuidedDenoiser(ctx.teacher, w, ctx.null_condition)
        pt = ctx.roles["phase_teacher"]
        pt.refresh(ctx.student, phase)
        return pt

    def grid_times(self, path: Path, steps: int, n: int, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """Random student intervals ``t -> t''`` of ``steps`` steps and the teacher's point ``t'`` between them, all
        on the teacher's own grid ``path.time_grid(2 steps)`` (``t, t', t'' = grid[2j], grid[2j + 1], grid[2j + 2]``).
        Path grids are nested, so ``t`` and ``t''`` are the points of ``path.time_grid(steps)`` the student samples
        with; on EDM's Karras grid ``t'`` is not the midpoint ``(t + t'')/2``."""
        grid = path.time_grid(2 * steps, device=ctx.device).to(ctx.dtype)
        j = torch.randint(0, steps, (n,), generator=ctx.generator).to(ctx.device)
        return grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]

    @torch.no_grad()
    def target(self, teacher: nn.Module, z_t: Tensor, t: Tensor, t_mid: Tensor, t_pp: Tensor, cond: Any,
               w_in: Tensor | None) -> Tensor:
        """Two teacher DDIM steps ``t -> t' -> t''`` and the student's x0 target that reproduces them."""
        z_mid = ode_step(teacher, z_t, t, t_mid, cond, "ddim", w_in)
        z_pp = ode_step(teacher, z_mid, t_mid, t_pp, cond, "ddim", w_in)
        return two_step_target(teacher.path, z_t, t, z_pp, t_pp)

    def weight(self, path: Path, t: Tensor) -> Tensor:
        if self.weighting == "none":
            return torch.ones_like(t)
        snr = (path.alpha(t) / path.sigma(t).clamp_min(1e-12)) ** 2
        return snr.clamp(1.0, 1e4) if self.weighting == "truncated_snr" else (snr + 1).clamp_max(1e4)

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        if batch.x0 is None:
            raise ValueError("ProgressiveDistillation needs data (batch.x0) to noise; got a data-free batch")
        student, path = ctx.student, ctx.student.path
        phase = self.phase(ctx.iteration)
        steps = self.student_steps(ctx.iteration)
        w, w_in = self.draw_guidance(batch.size, ctx)
        if phase < 0:  # guided stage 1: match the guided teacher's x0 at the same point
            t = self.grid_times(path, self.teacher_steps, batch.size, ctx)[0]
            z_t = path.add_noise(batch.x0, ctx.randn(batch.x0.shape), t)
            with torch.no_grad():
                tgt = GuidedDenoiser(ctx.teacher, w, ctx.null_condition)(z_t, t, batch.cond).x0
        else:
            t, t_mid, t_pp = self.grid_times(path, steps, batch.size, ctx)
            z_t = path.add_noise(batch.x0, ctx.randn(batch.x0.shape), t)
            teacher = self.phase_model(ctx, phase, w)
            tgt = self.target(teacher, z_t, t, t_mid, t_pp, batch.cond, None if phase <= 0 else w_in)
        pred = student(z_t, t, batch.cond, w_in).x0
        per = squared_error(pred, tgt, batch.mask)
        wt = self.weight(path, t.reshape(t.shape[0], -1)[:, 0])
        return LossOutput((wt * per).mean(), {"x0_mse": per.mean().detach(), "steps": torch.tensor(float(steps))})
