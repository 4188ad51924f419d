"""Distribution matching distillation: DMD2, decoupled DMD and f-divergence weighting.

Papers: Yin et al., 2024a, "One-step Diffusion with Distribution Matching Distillation" (DMD: the
KL gradient ``s_fake - s_real``, the regression term on teacher ODE pairs); Yin et al., 2024b, "Improved
Distribution Matching Distillation for Fast Image Synthesis" (DMD2: two time-scale update rule, GAN head on
the fake score, backward simulation for multi-step students); Liu et al., 2025, "Decoupled DMD: CFG
Augmentation as the Spear, Distribution Matching as the Shield" (decoupled guidance terms); Xu et al., 2025,
"One-step Diffusion Models with f-Divergence Distribution Matching" (f-distill density-ratio weights).

Generator gradient (FORMULATIONS 4.1), all under ``no_grad`` except the surrogate::

    x = G(z);  x_t = alpha_t x + sigma_t eps;  g = (mu_fake(x_t) - mu_real^cfg(x_t)) / N,
    N = mean_elems |x - mu_real^cfg| (per sample);   L = 0.5 * mean_b mean_elems (x - sg(x - g))^2

so ``dL/dx = g / (B D)``: the sample moves toward the teacher's denoising and away from the fake score's.
The real score uses CFG ``u + w (c - u)`` (``w = 1``: none; DMD2 SD1.5 1.75, SDXL 8); the fake score is
unguided. The fake score is trained by denoising on detached student samples. With ``n =
fake_updates_per_student`` the plan is ``[fake_score, student]`` every ``n``-th iteration and
``[fake_score]`` otherwise, so exactly ``n`` fake-score steps separate two student steps (DMD2: 5 on
ImageNet/SDXL, 10 on SD1.5).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unidistill.denoiser import combine_guidance
from unidistill.objectives.base import Batch, Context, LossOutput, Objective
from unidistill.objectives.fake_score import FakeScore, build_fake_score, frozen_params, on_device
from unidistill.objectives.fidelity import FidelityLoss
from unidistill.objectives.losses import per_sample, squared_error
from unidistill.paths import Prediction, expand_like
from unidistill.solvers import initial_latent, sample
from unidistill.timesteps import TimeSampler, UniformTime

#: f-distill weights ``h(r) = f''(r) r^2`` per divergence (Xu et al., 2025; FORMULATIONS 4.7)
F_DIVERGENCES = {
    "reverse_kl": lambda r: torch.ones_like(r),
    "forward_kl": lambda r: r,
    "kl": lambda r: r,
    "js": lambda r: r / (1 + r),
    "sf": lambda r: 1 / (1 + r),
    "neyman": lambda r: 1 / r,
    "hellinger": lambda r: r.sqrt(),
    "jeffreys": lambda r: 1 + r,
}


def f_divergence_weight(logits: Tensor, kind: str) -> Tensor:
    """Per-sample ``h(r)`` from discriminator logits (``log p_real/p_fake`` under the logistic loss),
    ``r = exp(clamp(logit, -10, 10))`` clamped to ``[0.1, 20]``, normalised by the batch mean."""
    if kind not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {kind!r}; valid: {', '.join(F_DIVERGENCES)}")
    r = torch.exp(logits.detach().float().clamp(-10, 10)).clamp(0.1, 20.0)
    h = F_DIVERGENCES[kind](r)
    return h / (h.mean() + 1e-6)


def normaliser(x: Tensor, mu: Tensor, mask: Tensor | None, eps: float = 1e-6) -> Tensor:
    """DMD's per-sample ``N = mean_elems |x - mu|`` broadcast against ``x`` (detached)."""
    return expand_like(per_sample((x - mu).abs().detach(), mask) + eps, x)


def surrogate(x: Tensor, g: Tensor, mask: Tensor | None) -> Tensor:
    """``0.5 * mean_b mean_elems (x - sg(x - g))^2``, whose gradient on ``x`` is ``g / (B D)``."""
    target = (x - g).detach()
    return 0.5 * per_sample((x - target) ** 2, mask, "mean").mean()


def student_sample(student: nn.Module, batch: Batch, ctx: Context, steps: int, grad: bool) -> tuple[Tensor, Tensor]:
    """The student's clean prediction ``x`` and the time of the step that made it.

    One-step students map pure noise at ``t_max``. A ``steps``-step student uses backward simulation (DMD2):
    draw ``k`` from ``ctx.shared_generator`` (same on every rank: it changes the graph), run the student
    ``k`` steps from noise under ``no_grad``, re-noising each x0-prediction with fresh noise to the next grid
    time (the ``consistency`` sampler's ``sde`` rule used at inference), then take the grad-enabled step ``k``.
    """
    path = student.path
    times = path.time_grid(steps).tolist()
    x = initial_latent(path, ctx.noise(batch), times[0]).to(ctx.dtype)
    k = 0 if steps == 1 else int(torch.randint(0, steps, (1,), generator=ctx.shared_generator))
    with torch.no_grad():
        for j in range(k):
            x0 = student(x, _full(times[j], x), batch.cond).x0
            x = path.add_noise(x0, ctx.randn(x.shape), _full(times[j + 1], x))
    t = _full(times[k], x)
    with torch.set_grad_enabled(grad):
        return student(x, t, batch.cond).x0, t


def _full(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


class DMD2(Objective):
    """DMD2 (see the module docstring). Options, with the papers' defaults:

    * ``guidance_scale`` — real-score CFG ``w`` (``u + w(c - u)``).
    * ``fake_updates_per_student`` — two time-scale update rule ``n`` (default 5).
    * ``fake_score_init`` ``auto|teacher|student``; ``fake_score_memory`` ``full|lora``; ``teacher_offload``.
    * ``gan_generator_weight`` (DMD2: 3e-3 ImageNet-64, 1e-3 SD1.5, 5e-3 SDXL; 0 = off) and
      ``gan_discriminator_weight`` (1e-2): non-saturating softplus GAN with a head on the fake score's
      features at ``feature_layer`` (default: ``mid_block`` / middle block), both sides noised at
      ``gan_time`` (DMD2's diffusion GAN). Needs real data ``batch.x0`` for the discriminator.
    * ``regression_weight`` (DMD: 0.25 with LPIPS; here the per-sample MSE) on (noise, teacher ODE sample)
      pairs computed on the fly with ``regression_solver``/``regression_steps``, deterministic from
      ``regression_seed``, the iteration and the rank; applied to the student's one-step map from pure noise.
    * ``student_steps`` — multi-step student trained with backward simulation.
    * ``decoupled`` — Decoupled DMD: ``g = dm_weight g_DM + ca_weight g_CA`` with
      ``g_DM = (mu_c^fake - mu_c^real)(x_t) / N_DM`` (conditional, unguided teacher; ``N_DM`` from ``mu_c^real``) and
      ``g_CA = (w - 1)(mu_u^real - mu_c^real)(x_tau) / N_CA`` (``N_CA`` from the guided ``mu^cfg(x_tau)``),
      where ``tau`` is drawn by ``ca_time`` as a fraction of the student's input time (cleaner than it).
    * ``f_divergence`` — f-distill weight ``h(r)`` (``reverse_kl`` = plain DMD, ``forward_kl``, ``js``, ...);
      anything but ``reverse_kl`` needs the head (trained by the discriminator loss).
    * ``fake_prediction`` — space of the fake-score denoising loss: ``native`` (the network's own output
      type; e.g. flow-MSE for a flow network as CausVid/Self-Forcing) or ``x0``/``eps``/``flow``/``v``.
    * ``fidelity`` — data-fidelity terms (``FidelityLoss``: L2 and a modality's perceptual distance) on the
      student's output against the paired data ``batch.x0``, added to the student loss (OSEDiff's
      ``L2 + LPIPS + VSD``, with a LoRA fake score: ``fake_score_memory: lora``).
    """

    trainable_roles = ("student", "fake_score")
    student_solver = "consistency"

    @classmethod
    def tiny(cls, modality: Any) -> DMD2:
        return cls(fake_updates_per_student=2, head_hidden=16, regression_steps=4)

    @classmethod
    def tiny_variants(cls, modality: Any) -> dict[str, DMD2]:
        if cls is not DMD2:
            return super().tiny_variants(modality)
        return {
            "DMD2": cls.tiny(modality),
            "DMD2[decoupled]": cls(decoupled=True, guidance_scale=1.5, fake_updates_per_student=2),
            "DMD2[js+gan+regression]": cls(f_divergence="js", gan_generator_weight=3e-3, regression_weight=0.25,
                                           regression_steps=4, fake_updates_per_student=2, head_hidden=16),
        }

    def __init__(
        self,
        guidance_scale: float = 1.0,
        fake_updates_per_student: int = 5,
        fake_score_init: str = "auto",
        fake_score_memory: str = "full",
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_targets: list[str] | str | None = None,
        teacher_offload: bool = False,
        dm_time: TimeSampler | None = None,
        fake_time: TimeSampler | None = None,
        fake_prediction: str = "native",
        student_steps: int = 1,
        gan_generator_weight: float = 0.0,
        gan_discriminator_weight: float = 1e-2,
        gan_time: TimeSampler | None = None,
        feature_layer: str | None = None,
        feature_channels: int | None = None,
        feature_channel_axis: int = 1,
        head_hidden: int = 256,
        regression_weight: float = 0.0,
        regression_solver: str = "heun",
        regression_steps: int = 32,
        regression_seed: int = 0,
        decoupled: bool = False,
        dm_weight: float = 1.0,
        ca_weight: float = 1.0,
        ca_time: TimeSampler | None = None,
        f_divergence: str = "reverse_kl",
        fidelity: FidelityLoss | None = None,
    ) -> None:
        if fake_updates_per_student < 1 or student_steps < 1:
            raise ValueError("fake_updates_per_student and student_steps must be >= 1, got "
                             f"{fake_updates_per_student}, {student_steps}")
        if f_divergence not in F_DIVERGENCES:
            raise ValueError(f"unknown f_divergence {f_divergence!r}; valid: {', '.join(F_DIVERGENCES)}")
        self.guidance_scale, self.n_fake = guidance_scale, fake_updates_per_student
        self.fake_score_init, self.fake_score_memory = fake_score_init, fake_score_memory
        self.teacher_offload = teacher_offload
        self.lora = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_targets": lora_targets}
        self.dm_time = dm_time or UniformTime(0.02, 0.98)
        self.fake_time = fake_time or UniformTime(1e-3, 1.0)
        self.fake_prediction, self.student_steps = fake_prediction, student_steps
        self.gan_g, self.gan_d = gan_generator_weight, gan_discriminator_weight
        self.gan_time = gan_time or UniformTime(1e-3, 1.0)
        self.feature = {"feature_layer": feature_layer, "feature_channels": feature_channels,
                        "channel_axis": feature_channel_axis, "head_hidden": head_hidden}
        self.reg_weight, self.reg_solver, self.reg_steps, self.reg_seed = (
            regression_weight, regression_solver, regression_steps, regression_seed)
        self.decoupled, self.dm_weight, self.ca_weight = decoupled, dm_weight, ca_weight
        self.ca_time = ca_time or UniformTime(0.02, 1.0)
        self.f_divergence = f_divergence
        self.use_head = gan_generator_weight > 0 or f_divergence != "reverse_kl"
        self.fidelity = fidelity

    # --- roles and plan ----------------------------------------------------------------------
    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        fake = build_fake_score(student, teacher, self.fake_score_init, self.fake_score_memory, **self.lora,
                                with_head=self.use_head, **self.feature)
        return {"fake_score": fake}

    def plan(self, iteration: int) -> list[str]:
        return ["fake_score", "student"] if iteration % self.n_fake == 0 else ["fake_score"]

    def loss(self, role: str, batch: Batch, ctx: Context) -> LossOutput:
        with on_device(ctx.teacher, ctx.device, self.teacher_offload):
            if role == "student":
                return self.student_loss(batch, ctx)
            if role == "fake_score":
                return self.fake_score_loss(batch, ctx)
        raise ValueError(f"{self.name} has no role {role!r}; roles: {self.trainable_roles}")

    # --- the two updates -------------------------------------------------------------------
    def generate(self, batch: Batch, ctx: Context, grad: bool) -> tuple[Tensor, Tensor]:
        """The student samples both updates see, and the time of the call that made them; subclasses change
        how the student is run (e.g. the causal rollouts of ``unidistill.objectives.causal``)."""
        return student_sample(ctx.student, batch, ctx, self.student_steps, grad)

    def dm_direction(self, x: Tensor, x_t: Tensor, t: Tensor, t_in: Tensor, batch: Batch, ctx: Context,
                     fake: FakeScore) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-element DMD direction ``g`` (no_grad), plain, decoupled and/or f-divergence weighted."""
        logs: dict[str, Tensor] = {}
        cond, mask, teacher = batch.cond, batch.mask, ctx.teacher
        logits = None
        if self.f_divergence != "reverse_kl":
            mu_fake, logits = fake.with_logits(x_t, t, cond)
            mu_fake = mu_fake.x0
        else:
            mu_fake = fake(x_t, t, cond).x0
        if not self.decoupled:
            mu_real = ctx.guided_teacher(self.guidance_scale)(x_t, t, cond).x0
            g = (mu_fake - mu_real) / normaliser(x, mu_real, mask)
        else:
            mu_c = teacher(x_t, t, cond).x0
            g = self.dm_weight * (mu_fake - mu_c) / normaliser(x, mu_c, mask)
            tau = self.ca_time(teacher.path, batch.size, ctx.generator).to(x) * t_in / teacher.path.t_max
            x_tau = teacher.path.add_noise(x, ctx.randn(x.shape), tau)
            c, u = teacher(x_tau, tau, cond), teacher(x_tau, tau, ctx.null_condition(cond))
            mu_cfg = combine_guidance(c, u, self.guidance_scale).x0
            g_ca = (self.guidance_scale - 1) * (u.x0 - c.x0) / normaliser(x, mu_cfg, mask)
            g = g + self.ca_weight * g_ca
            logs["ca_norm"] = per_sample(g_ca.abs(), mask).mean()
        if logits is not None:
            h = f_divergence_weight(logits, self.f_divergence)
            g = g * expand_like(h, g)
            logs["f_weight_max"] = h.max()
        return torch.nan_to_num(g), logs

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        fake: FakeScore = ctx.roles["fake_score"]
        path = ctx.teacher.path
        x, t_in = self.generate(batch, ctx, grad=True)
        t = self.dm_time(path, batch.size, ctx.generator).to(x)
        x_t = path.add_noise(x.detach(), ctx.randn(x.shape), t)
        with torch.no_grad():
            g, logs = self.dm_direction(x.detach(), x_t, t, t_in, batch, ctx, fake)
        loss = surrogate(x, g, batch.mask)
        logs["dm"] = loss.detach()
        if self.gan_g > 0:
            t_gan = self.gan_time(fake.path, batch.size, ctx.generator).to(x)
            with frozen_params(fake):
                _, logits = fake.with_logits(fake.path.add_noise(x, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            gan = F.softplus(-logits).mean()
            loss = loss + self.gan_g * gan
            logs["gan_generator"] = gan.detach()
        if self.reg_weight > 0:
            reg = self.regression_loss(batch, ctx)
            loss = loss + self.reg_weight * reg
            logs["regression"] = reg.detach()
        if self.fidelity is not None:
            fid, fid_logs = self.fidelity(x, batch)
            loss, logs = loss + fid, logs | fid_logs
        return LossOutput(loss, logs)

    def fake_score_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        fake: FakeScore = ctx.roles["fake_score"]
        path = fake.path
        with torch.no_grad():
            x, _ = self.generate(batch, ctx, grad=False)
        t = self.fake_time(path, batch.size, ctx.generator).to(x)
        eps = ctx.randn(x.shape)
        x_t = path.add_noise(x, eps, t)
        space = fake.prediction if self.fake_prediction == "native" else self.fake_prediction
        target = path.from_prediction(Prediction(x, eps), t, space)
        if space == fake.prediction:
            out = fake.raw(x_t, t, batch.cond)
        else:
            out = path.from_prediction(fake(x_t, t, batch.cond), t, space)
        per = squared_error(out, target, batch.mask)
        loss, logs = per.mean(), {"denoising": per.mean().detach()}
        if self.use_head and self.gan_d > 0:
            if batch.x0 is None:
                raise ValueError(f"{self.name}'s discriminator needs real data (batch.x0); got a data-free batch")
            t_gan = self.gan_time(path, batch.size, ctx.generator).to(x)
            _, l_fake = fake.with_logits(path.add_noise(x, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            _, l_real = fake.with_logits(path.add_noise(batch.x0, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            disc = F.softplus(l_fake).mean() + F.softplus(-l_real).mean()
            loss = loss + self.gan_d * disc
            logs["gan_discriminator"] = disc.detach()
        return LossOutput(loss, logs)

    def regression_loss(self, batch: Batch, ctx: Context) -> Tensor:
        """DMD's regression on (noise, teacher ODE sample) pairs; the student maps the noise in one step."""
        student = ctx.student
        # seeded per iteration and rank (as Reflow's coupling ids): with the iteration alone every data-parallel
        # rank regressed on the same noise; one process (rank 0 of 1) keeps its seeds
        seed = self.reg_seed * 1_000_003 + ctx.iteration * ctx.world_size + ctx.rank
        g = torch.Generator(device=ctx.device).manual_seed(seed)
        z = torch.randn((batch.size, *ctx.latent_shape), generator=g, device=ctx.device, dtype=ctx.dtype)
        with torch.no_grad():
            y = sample(ctx.guided_teacher(self.guidance_scale), z, self.reg_steps, batch.cond, self.reg_solver).x
        x_in = initial_latent(student.path, z)
        pred = student(x_in, _full(student.path.t_max, z), batch.cond).x0
        return squared_error(pred, y, batch.mask).mean()

    def unsupported_reason(self, latent_shape: tuple[int, ...], causal: bool) -> str | None:
        if causal:
            return "causal streaming students need a self-forcing rollout, not DMD2's backward simulation"
        return None


def decoupled_dmd(**kwargs: Any) -> DMD2:
    """Decoupled DMD (Liu et al., 2025): DMD2 with separate CFG-augmentation and distribution-matching terms."""
    return DMD2(decoupled=True, **kwargs)
