"""Score identity Distillation (SiD).

Zhou et al., 2024, "Score identity Distillation: Exponentially Fast Distillation of Pretrained Diffusion
Models for One-Step Generation". Data-free: the generator loss per element (docs/formulations.md §4.8, as in
Self-Forcing's ``sid.py``) is::

    L = (mu_r - mu_f) . ((mu_r - x) - alpha (mu_r - mu_f)) / N,   N = sg(mean_elems |x - mu_r|) per sample

which equals SiD's ``(1 - alpha) ||mu_r - mu_f||^2 + (mu_r - mu_f)^T (mu_f - x)``, with ``alpha = 1.2``
(the paper's default). ``mu_r`` is the CFG teacher, ``mu_f`` the fake score, both at ``x_t = alpha_t x +
sigma_t eps``. Unlike DMD nothing is under ``no_grad``: **gradients flow through ``x_t`` into both the
teacher and the fake-score forward passes** (never into their parameters: the teacher is frozen and the
fake score's parameters are frozen for the duration of the student loss). Fake-score training, the update
plan, memory strategies and backward simulation are DMD2's (``DMD2`` options apply).
"""

from __future__ import annotations

from typing import Any

from unidistill.objectives.base import Batch, Context, LossOutput
from unidistill.objectives.dmd import DMD2, FakeScoreOptions, student_sample
from unidistill.objectives.fake_score import frozen_params
from unidistill.objectives.losses import mean_abs_normaliser, per_sample
from unidistill.timesteps import TimeSampler


class ScoreIdentityDistillation(DMD2):
    """SiD generator loss on top of DMD2's fake-score machinery; ``alpha`` is SiD's weighting (default 1.2).

    DMD2's generator-side terms (GAN, regression, decoupled guidance, f-divergence weights) do not apply to SiD's loss,
    so they are not arguments here: a config that sets one is refused by the parser instead of silently ignored.
    """

    @classmethod
    def tiny(cls, modality: Any) -> ScoreIdentityDistillation:
        return cls(fake_updates_per_student=1)

    def __init__(self, alpha: float = 1.2, guidance_scale: float = 1.0, fake_updates_per_student: int = 5,
                 student_steps: int = 1, dm_time: TimeSampler | None = None, fake_score: FakeScoreOptions | None = None,
                 teacher_offload: bool = False) -> None:
        super().__init__(guidance_scale=guidance_scale, fake_updates_per_student=fake_updates_per_student,
                         student_steps=student_steps, dm_time=dm_time, fake_score=fake_score,
                         teacher_offload=teacher_offload)
        self.alpha = alpha

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        fake = ctx.roles["fake_score"]
        path = ctx.teacher.path
        x, _ = student_sample(ctx.student, batch, ctx, self.student_steps, grad=True)
        t = self.dm_time(path, batch.size, ctx.generator).to(x)
        x_t = path.add_noise(x, ctx.randn(x.shape), t)  # keeps the graph to the student
        with frozen_params(fake):
            mu_f = fake(x_t, t, batch.cond).x0
        mu_r = ctx.guided_teacher(self.guidance_scale)(x_t, t, batch.cond).x0
        n = mean_abs_normaliser(x, mu_r, batch.mask)
        diff = mu_r - mu_f
        per = per_sample(diff * ((mu_r - x) - self.alpha * diff) / n, batch.mask)
        loss = per.mean()
        return LossOutput(loss, {"sid": loss.detach(), "score_gap": per_sample(diff.detach().abs(), batch.mask).mean()})
