"""Adversarial distillation with discriminator heads on a frozen teacher's features.

Sauer et al., 2023, "Adversarial Diffusion Distillation" (ADD: a one/few-step student from noised inputs,
hinge GAN with frozen-backbone features and trainable heads, plus a score-distillation term weighted by
``c(t) = alpha_t``, ``lambda = 2.5``); Sauer et al., 2024, "Fast High-Resolution Image Synthesis with Latent
Adversarial Diffusion Distillation" (LADD: the backbone is the *teacher itself* on re-noised latents, noise
levels from a logit-normal biased toward high noise, hinge loss, no distillation term).

Per update, both the student sample ``x`` and real data are re-noised at the same ``t`` with the same noise
(FastGen LADD), passed through the **frozen** teacher, and features are taken by forward hooks at
``feature_layers`` (names relative to the teacher network, e.g. ``down_blocks.2``, ``mid_block``). Each layer
gets a trainable ``FeatureHead`` (by default a logit at every position of the feature map, averaged, as ADD's
per-token heads); the logit is their mean. Hinge losses: discriminator
``relu(1 - D(real)) + relu(1 + D(fake))``, student ``-D(fake)``. **The student's gradient flows through the
frozen teacher's features** (autograd on the input ``x_t``; the teacher's parameters never get gradients, and
the heads are frozen during the student update). Without data, "real" samples are teacher ODE samples
(LADD trains on teacher-synthetic data).

The student may start from an already distilled one-step model rather than the teacher (Lin et al., 2025,
"Diffusion Adversarial Post-Training for One-Step Video Generation", APT): a one-step copy of the teacher
outputs the posterior mean from pure noise, and a weak discriminator cannot pull it away from there (see
``configs/digits/adversarial.yaml``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.objectives.base import Batch, Context, LossOutput, Objective, Unsupported, check_choice, refuse_unused
from unidistill.objectives.dmd import student_sample
from unidistill.objectives.fake_score import (
    FeatureHead,
    capture_features,
    default_feature_layer,
    frozen_params,
    has_parameters,
    infer_channels,
    network_of,
    on_device,
)
from unidistill.objectives.losses import hinge_discriminator, hinge_generator, per_sample
from unidistill.paths import expand_like
from unidistill.solvers import sample
from unidistill.timesteps import LogitNormalTime, TimeSampler, UniformTime


class Discriminator(nn.Module):
    """One ``FeatureHead`` per hooked teacher layer; owns no backbone (the frozen teacher is shared)."""

    def __init__(self, teacher: nn.Module, layers: list[str], channels: list[int] | None, hidden: int,
                 channel_axis: int, pooling: str) -> None:
        super().__init__()
        net = network_of(teacher)
        channels = channels or [infer_channels(net, name) for name in layers]
        self.layers = list(layers)
        self.heads = nn.ModuleDict(
            {_key(n): FeatureHead(c, hidden, channel_axis, pooling) for n, c in zip(layers, channels, strict=True)}
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return torch.stack([self.heads[_key(n)](features[n]) for n in self.layers]).mean(0)


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name)


class AdversarialDistillation(Objective):
    """ADD/LADD-style adversarial distillation; see the module docstring.

    * ``feature_layers`` — teacher submodules to hook (required; e.g. LADD on Wan uses blocks 15, 22, 29 of 30).
    * ``head_pooling`` — ``"logits"`` (default, ADD's per-token heads: a logit at every position of a feature
      map, averaged) or ``"features"`` (pool the map, then one logit); see ``FeatureHead``.
    * ``gan_time`` — re-noising level for the discriminator (default LADD's logit-normal, mean 1, std 1).
    * ``student_steps`` — student step grid; with data the student input is real data noised at a step drawn
      (same on every rank) from the grid (ADD), without data it is a backward simulation (DMD2).
    * ``distill_weight`` — ADD's score-distillation term ``alpha_t ||x - sg(mu_T^cfg(x_t))||^2`` (ADD: 2.5;
      LADD: 0), per-sample mean, at ``distill_time``, with the teacher's CFG ``guidance_scale``.
    * ``discriminator_updates_per_student`` — plan as DMD2's (ARC/LADD alternate 1:1).
    """

    trainable_roles = ("student", "discriminator")
    student_solver = "consistency"

    @classmethod
    def tiny(cls, modality: Any) -> AdversarialDistillation:
        teacher = modality.load_teacher()
        if not has_parameters(teacher):
            raise Unsupported("hooks features of the teacher network; this modality's tiny teacher has no "
                              "parameters (an analytic teacher)")
        return cls(feature_layers=[default_feature_layer(network_of(teacher))], head_hidden=16, distill_weight=2.5,
                   synthetic_steps=4)

    def __init__(
        self,
        feature_layers: list[str],
        feature_channels: list[int] | None = None,
        feature_channel_axis: int = 1,
        head_hidden: int = 256,
        head_pooling: str = "logits",
        gan_time: TimeSampler | None = None,
        student_steps: int = 1,
        distill_weight: float = 0.0,
        distill_time: TimeSampler | None = None,
        guidance_scale: float = 1.0,
        discriminator_updates_per_student: int = 1,
        synthetic_steps: int = 16,
        synthetic_solver: str = "heun",
        teacher_offload: bool = False,
    ) -> None:
        if not feature_layers:
            raise ValueError("AdversarialDistillation needs at least one teacher feature layer name")
        if discriminator_updates_per_student < 1 or student_steps < 1:
            raise ValueError("discriminator_updates_per_student and student_steps must be >= 1")
        check_choice(self.name, "head_pooling", head_pooling, FeatureHead.POOLINGS)
        if feature_channels is not None and len(feature_channels) != len(feature_layers):
            raise ValueError(f"{self.name}: feature_channels {feature_channels} must give one channel count per "
                             f"feature layer {feature_layers}")
        if distill_weight == 0:
            refuse_unused(self.name, "distill_time", distill_time, None,
                          "with distill_weight=0 (it draws the score-distillation term's time)")
        self.feature_layers, self.feature_channels = list(feature_layers), feature_channels
        self.channel_axis, self.head_hidden, self.head_pooling = feature_channel_axis, head_hidden, head_pooling
        self.gan_time = gan_time or LogitNormalTime(mean=1.0, std=1.0, t_min=1e-3)
        self.student_steps, self.distill_weight = student_steps, distill_weight
        self.distill_time = distill_time or UniformTime(0.02, 0.98)
        self.guidance_scale, self.n_disc = guidance_scale, discriminator_updates_per_student
        self.synthetic_steps, self.synthetic_solver = synthetic_steps, synthetic_solver
        self.teacher_offload = teacher_offload

    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        if not has_parameters(teacher):
            raise ValueError("AdversarialDistillation hooks features of a teacher network; this teacher has none")
        return {"discriminator": Discriminator(teacher, self.feature_layers, self.feature_channels,
                                               self.head_hidden, self.channel_axis, self.head_pooling)}

    def plan(self, iteration: int) -> list[str]:
        return ["discriminator", "student"] if iteration % self.n_disc == 0 else ["discriminator"]

    def logits(self, x_t: Tensor, t: Tensor, cond: Any, ctx: Context) -> tuple[Tensor, Tensor]:
        """Discriminator logits ``[B]`` and the teacher's x0 from one (conditional) teacher pass."""
        with capture_features(network_of(ctx.teacher), self.feature_layers) as feats:
            x0 = ctx.teacher(x_t, t, cond).x0
        return ctx.roles["discriminator"](feats), x0

    def student_input(self, batch: Batch, ctx: Context, grad: bool) -> Tensor:
        if batch.x0 is None:
            return student_sample(ctx.student, batch, ctx, self.student_steps, grad)[0]
        path = ctx.student.path
        times = path.time_grid(self.student_steps)
        k = int(torch.randint(0, self.student_steps, (1,), generator=ctx.shared_generator))
        t = torch.full((batch.size,), float(times[k]), dtype=batch.x0.dtype, device=batch.x0.device)
        x_s = path.add_noise(batch.x0, ctx.randn(batch.x0.shape), t)
        with torch.set_grad_enabled(grad):
            return ctx.student(x_s, t, batch.cond).x0

    def real_samples(self, batch: Batch, ctx: Context) -> Tensor:
        if batch.x0 is not None:
            return batch.x0
        with torch.no_grad():
            teacher = ctx.guided_teacher(self.guidance_scale)
            return sample(teacher, ctx.noise(batch), self.synthetic_steps, batch.cond, self.synthetic_solver).x

    def loss(self, update: str, batch: Batch, ctx: Context) -> LossOutput:
        with on_device(ctx.teacher, ctx.device, self.teacher_offload):
            return super().loss(update, batch, ctx)

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        path = ctx.teacher.path
        x = self.student_input(batch, ctx, grad=True)
        t = self.gan_time(path, batch.size, ctx.generator).to(x)
        x_t = path.add_noise(x, ctx.randn(x.shape), t)  # graph to the student kept: gradient via teacher features
        with frozen_params(ctx.roles["discriminator"]):
            logits, _ = self.logits(x_t, t, batch.cond, ctx)
        adv = hinge_generator(logits)
        loss, logs = adv, {"adversarial": adv.detach()}
        if self.distill_weight > 0:
            td = self.distill_time(path, batch.size, ctx.generator).to(x)
            with torch.no_grad():
                x_td = path.add_noise(x.detach(), ctx.randn(x.shape), td)
                target = ctx.guided_teacher(self.guidance_scale)(x_td, td, batch.cond).x0
            c = expand_like(path.alpha(td), x)
            distill = per_sample(c * (x - target) ** 2, batch.mask).mean()
            loss = loss + self.distill_weight * distill
            logs["distill"] = distill.detach()
        return LossOutput(loss, logs)

    def discriminator_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        path = ctx.teacher.path
        with torch.no_grad():
            fake = self.student_input(batch, ctx, grad=False)
            real = self.real_samples(batch, ctx)
        t = self.gan_time(path, batch.size, ctx.generator).to(fake)
        eps = ctx.randn(fake.shape)
        with torch.no_grad(), capture_features(network_of(ctx.teacher), self.feature_layers) as feats:
            ctx.teacher(path.add_noise(fake, eps, t), t, batch.cond)
            f_fake = {k: v.detach() for k, v in feats.items()}
            ctx.teacher(path.add_noise(real, eps, t), t, batch.cond)
            f_real = {k: v.detach() for k, v in feats.items()}
        disc = ctx.roles["discriminator"]
        l_fake, l_real = disc(f_fake), disc(f_real)
        loss = hinge_discriminator(l_real, l_fake)
        return LossOutput(loss, {"hinge": loss.detach(), "logit_gap": (l_real.mean() - l_fake.mean()).detach()})
