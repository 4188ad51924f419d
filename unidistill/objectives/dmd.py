"""Distribution matching distillation: DMD2, decoupled DMD and f-divergence weighting.

Papers: Yin et al., 2024a, "One-step Diffusion with Distribution Matching Distillation" (DMD: the
KL gradient ``s_fake - s_real``, the regression term on teacher ODE pairs); Yin et al., 2024b, "Improved
Distribution Matching Distillation for Fast Image Synthesis" (DMD2: two time-scale update rule, GAN head on
the fake score, backward simulation for multi-step students); Liu et al., 2025, "Decoupled DMD: CFG
Augmentation as the Spear, Distribution Matching as the Shield" (decoupled guidance terms); Xu et al., 2025,
"One-step Diffusion Models with f-Divergence Distribution Matching" (f-distill density-ratio weights).

Generator gradient (docs/formulations.md §4.1), all under ``no_grad`` except the surrogate::

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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unidistill.denoiser import combine_guidance
from unidistill.objectives.base import Batch, Context, LossOutput, Objective, check_choice, refuse_unused
from unidistill.objectives.fake_score import FakeScore, build_fake_score, frozen_params, on_device
from unidistill.objectives.fidelity import FidelityLoss
from unidistill.objectives.losses import (
    gradient_surrogate,
    mean_abs_normaliser,
    per_sample,
    softplus_discriminator,
    softplus_generator,
    squared_error,
)
from unidistill.paths import Prediction, expand_like
from unidistill.solvers import initial_latent, sample
from unidistill.timesteps import TimeSampler, UniformTime

#: f-distill weights ``h(r) = f''(r) r^2`` per divergence (Xu et al., 2025; docs/formulations.md §4.7)
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


def f_divergence_weight(logits: Tensor, kind: str, position: Tensor | None = None, bins: int = 0) -> Tensor:
    """Per-sample ``h(r)`` from discriminator logits (``log p_real/p_fake`` under the logistic loss),
    ``r = exp(clamp(logit, -10, 10))`` clamped to ``[0.1, 20]``, normalised by the batch mean.

    With ``bins > 0`` the ratio is first divided by its mean over the samples of the batch whose noise level falls
    in the same of ``bins`` equal bins of ``position`` (``t / t_max`` in ``[0, 1]``): the per-time-bin normalisation
    of FastGen's ``f_distill.py`` (``ratio_normalization``, 10 bins, ``ratio_ema_rate = 0``: its defaults), which
    removes the discriminator's time-dependent calibration from ``r`` (docs/formulations.md §4.7)."""
    if kind not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {kind!r}; valid: {', '.join(F_DIVERGENCES)}")
    r = torch.exp(logits.detach().float().clamp(-10, 10)).clamp(0.1, 20.0)
    if bins > 0:
        if position is None:
            raise ValueError("per-time-bin ratio normalisation needs the samples' noise positions")
        idx = (position.detach().double() * bins).floor().long().clamp(0, bins - 1)
        count = torch.bincount(idx, minlength=bins).float()
        total = torch.bincount(idx, weights=r, minlength=bins).float()
        r = r / (total / (count + 1e-6) + 1e-6)[idx]
    h = F_DIVERGENCES[kind](r)
    return h / (h.mean() + 1e-6)


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


@dataclass
class FakeScoreOptions:
    """How the fake score ("critic") is built and trained.

    ``init``: ``auto`` (the teacher when it has parameters, else the student), ``teacher`` or ``student``;
    ``memory``: ``full`` (a trainable copy) or ``lora`` (peft adapters on the frozen teacher, rank ``lora_rank``);
    ``time``: the denoising loss's time sampler (default ``UniformTime(1e-3, 1)``); ``prediction``: the loss's
    space, ``native`` (the network's own output type) or ``x0``/``eps``/``flow``/``v``."""

    init: str = "auto"
    memory: str = "full"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: list[str] | str | None = None
    time: TimeSampler | None = None
    prediction: str = "native"


def check_fake_score_options(owner: str, f: FakeScoreOptions) -> None:
    """Refuse unknown choices and LoRA settings that a full fake-score copy would ignore."""
    check_choice(owner, "fake_score.init", f.init, ("auto", "teacher", "student"))
    check_choice(owner, "fake_score.memory", f.memory, ("full", "lora"))
    check_choice(owner, "fake_score.prediction", f.prediction, ("native", "x0", "eps", "v", "flow"))
    if f.memory == "full":
        why = "with fake_score.memory='full' (a trainable copy; LoRA settings apply to memory='lora')"
        refuse_unused(owner, "fake_score.lora_rank", f.lora_rank, 8, why)
        refuse_unused(owner, "fake_score.lora_alpha", f.lora_alpha, None, why)
        refuse_unused(owner, "fake_score.lora_targets", f.lora_targets, None, why)


@dataclass
class GanOptions:
    """DMD2's diffusion GAN: a classifier head on the fake score's features at ``feature_layer`` (default the
    bottleneck: ``mid_block`` or the middle block), both sides noised at ``time``, non-saturating softplus losses.
    ``generator_weight`` (DMD2: 3e-3 ImageNet-64, 1e-3 SD1.5, 5e-3 SDXL; 0 = head trained but no generator term) and
    ``discriminator_weight`` (1e-2). The discriminator needs real data ``batch.x0``. The head also gives the
    f-divergence weights (``DMD2.f_divergence``)."""

    generator_weight: float = 3e-3
    discriminator_weight: float = 1e-2
    time: TimeSampler | None = None
    feature_layer: str | None = None
    feature_channels: int | None = None
    channel_axis: int = 1
    hidden: int = 256


@dataclass
class RegressionOptions:
    """DMD's regression term: the student's one-step map from noise ``z`` regressed (per-sample MSE; DMD used LPIPS,
    weight 0.25) on the (guided) teacher's ODE sample from ``z``, solved on the fly with ``solver``/``steps``, noise
    seeded by ``(run seed, seed, iteration, rank)``."""

    weight: float = 0.25
    solver: str = "heun"
    steps: int = 32
    seed: int = 0


@dataclass
class DecoupledOptions:
    """Decoupled DMD: ``g = dm_weight g_DM + ca_weight g_CA`` (see ``DMD2.dm_direction``); ``ca_time`` draws the CA
    term's time as a fraction of the student's input time (default ``UniformTime(0.02, 1)``)."""

    dm_weight: float = 1.0
    ca_weight: float = 1.0
    ca_time: TimeSampler | None = None


class DMD2(Objective):
    """DMD2 (see the module docstring). Options, with the papers' defaults:

    * ``guidance_scale`` — real-score CFG ``w`` (``u + w(c - u)``).
    * ``fake_updates_per_student`` — two time-scale update rule ``n`` (default 5).
    * ``student_steps`` — a multi-step student trained with backward simulation.
    * ``dm_time`` — the time of the distribution-matching noise (default ``UniformTime(0.02, 0.98)``).
    * ``fake_score`` (``FakeScoreOptions``), ``gan`` (``GanOptions``; ``None`` = no head),
      ``regression`` (``RegressionOptions``; ``None`` = off), ``decoupled`` (``DecoupledOptions``; ``None`` =
      plain DMD).
    * ``f_divergence`` — f-distill weight ``h(r)`` (``reverse_kl`` = plain DMD, ``forward_kl``, ``js``, ...); any
      other than ``reverse_kl`` needs the ``gan`` head (its logits estimate the density ratio).
    * ``f_ratio_bins`` — the density ratio is normalised per bin of the DM time (``f_divergence_weight``; 10 as
      FastGen's f-distill, 0 = off).
    * ``teacher_offload`` — keep the teacher on the CPU between calls.
    * ``fidelity`` — data-fidelity terms (``FidelityLoss``: L2 and a modality's perceptual distance) on the
      student's output against the paired data ``batch.x0``, added to the student loss (OSEDiff's
      ``L2 + LPIPS + VSD``, with a LoRA fake score: ``fake_score: {memory: lora}``).
    """

    trainable_roles = ("student", "fake_score")
    student_solver = "consistency"

    @classmethod
    def tiny(cls, modality: Any) -> DMD2:
        return cls(fake_updates_per_student=2)

    @classmethod
    def tiny_variants(cls, modality: Any) -> dict[str, DMD2]:
        if cls is not DMD2:
            return super().tiny_variants(modality)
        return {
            "DMD2": cls.tiny(modality),
            "DMD2[decoupled]": cls(decoupled=DecoupledOptions(), guidance_scale=1.5, fake_updates_per_student=2),
            "DMD2[js+gan+regression]": cls(f_divergence="js", gan=GanOptions(hidden=16),
                                           regression=RegressionOptions(steps=4), fake_updates_per_student=2),
        }

    def __init__(
        self,
        guidance_scale: float = 1.0,
        fake_updates_per_student: int = 5,
        student_steps: int = 1,
        dm_time: TimeSampler | None = None,
        fake_score: FakeScoreOptions | None = None,
        gan: GanOptions | None = None,
        regression: RegressionOptions | None = None,
        decoupled: DecoupledOptions | None = None,
        f_divergence: str = "reverse_kl",
        f_ratio_bins: int = 10,
        teacher_offload: bool = False,
        fidelity: FidelityLoss | None = None,
    ) -> None:
        if fake_updates_per_student < 1 or student_steps < 1:
            raise ValueError("fake_updates_per_student and student_steps must be >= 1, got "
                             f"{fake_updates_per_student}, {student_steps}")
        if f_divergence not in F_DIVERGENCES:
            raise ValueError(f"unknown f_divergence {f_divergence!r}; valid: {', '.join(F_DIVERGENCES)}")
        if f_divergence != "reverse_kl" and gan is None:
            raise ValueError(f"f_divergence={f_divergence!r} estimates the density ratio with the GAN head's logits; "
                             "set gan (e.g. gan: {generator_weight: 0.0}) or use f_divergence='reverse_kl'")
        self.guidance_scale, self.n_fake, self.student_steps = guidance_scale, fake_updates_per_student, student_steps
        self.dm_time = dm_time or UniformTime(0.02, 0.98)
        self.fake = fake_score or FakeScoreOptions()
        check_fake_score_options(self.name, self.fake)
        self.fake_time = self.fake.time or UniformTime(1e-3, 1.0)
        self.gan, self.regression, self.decoupled = gan, regression, decoupled
        self.gan_time = (gan.time if gan is not None else None) or UniformTime(1e-3, 1.0)
        self.ca_time = (decoupled.ca_time if decoupled is not None else None) or UniformTime(0.02, 1.0)
        if f_ratio_bins < 0:
            raise ValueError(f"f_ratio_bins must be >= 0 (0 = no per-time-bin ratio normalisation), got {f_ratio_bins}")
        if f_divergence == "reverse_kl":
            refuse_unused(self.name, "f_ratio_bins", f_ratio_bins, 10,
                          "with f_divergence='reverse_kl' (plain DMD: h = 1 whatever the density ratio)")
        self.f_divergence, self.f_ratio_bins, self.teacher_offload = f_divergence, f_ratio_bins, teacher_offload
        self.fidelity = fidelity

    # --- roles and plan ----------------------------------------------------------------------
    def build_roles(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, nn.Module]:
        f, gan = self.fake, self.gan
        head = {} if gan is None else {"feature_layer": gan.feature_layer, "feature_channels": gan.feature_channels,
                                       "head_hidden": gan.hidden, "channel_axis": gan.channel_axis}
        fake = build_fake_score(student, teacher, f.init, f.memory, f.lora_rank, f.lora_alpha, f.lora_targets,
                                with_head=gan is not None, **head)
        return {"fake_score": fake}

    def plan(self, iteration: int) -> list[str]:
        return ["fake_score", "student"] if iteration % self.n_fake == 0 else ["fake_score"]

    def loss(self, update: str, batch: Batch, ctx: Context) -> LossOutput:
        with on_device(ctx.teacher, ctx.device, self.teacher_offload):
            return super().loss(update, batch, ctx)

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
        if self.decoupled is None:
            mu_real = ctx.guided_teacher(self.guidance_scale)(x_t, t, cond).x0
            g = (mu_fake - mu_real) / mean_abs_normaliser(x, mu_real, mask)
        else:
            d = self.decoupled
            mu_c = teacher(x_t, t, cond).x0
            g = d.dm_weight * (mu_fake - mu_c) / mean_abs_normaliser(x, mu_c, mask)
            tau = self.ca_time(teacher.path, batch.size, ctx.generator).to(x) * t_in / teacher.path.t_max
            x_tau = teacher.path.add_noise(x, ctx.randn(x.shape), tau)
            c, u = teacher(x_tau, tau, cond), teacher(x_tau, tau, ctx.null_condition(cond))
            mu_cfg = combine_guidance(c, u, self.guidance_scale).x0
            g_ca = (self.guidance_scale - 1) * (u.x0 - c.x0) / mean_abs_normaliser(x, mu_cfg, mask)
            g = g + d.ca_weight * g_ca
            logs["ca_norm"] = per_sample(g_ca.abs(), mask).mean()
        if logits is not None:
            h = f_divergence_weight(logits, self.f_divergence, t / teacher.path.t_max, self.f_ratio_bins)
            g = g * expand_like(h, g)
            logs["f_weight_max"] = h.max()
        # no sanitising: a non-finite teacher or fake score makes the loss non-finite, which the engine refuses
        return g, logs

    def student_loss(self, batch: Batch, ctx: Context) -> LossOutput:
        fake: FakeScore = ctx.roles["fake_score"]
        path = ctx.teacher.path
        x, t_in = self.generate(batch, ctx, grad=True)
        t = self.dm_time(path, batch.size, ctx.generator).to(x)
        x_t = path.add_noise(x.detach(), ctx.randn(x.shape), t)
        with torch.no_grad():
            g, logs = self.dm_direction(x.detach(), x_t, t, t_in, batch, ctx, fake)
        loss = gradient_surrogate(x, g, batch.mask)
        logs["dm"] = loss.detach()
        if self.gan is not None and self.gan.generator_weight > 0:
            t_gan = self.gan_time(fake.path, batch.size, ctx.generator).to(x)
            with frozen_params(fake):
                _, logits = fake.with_logits(fake.path.add_noise(x, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            gan = softplus_generator(logits)
            loss = loss + self.gan.generator_weight * gan
            logs["gan_generator"] = gan.detach()
        if self.regression is not None and self.regression.weight > 0:
            reg = self.regression_loss(batch, ctx)
            loss = loss + self.regression.weight * reg
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
        space = fake.prediction if self.fake.prediction == "native" else self.fake.prediction
        target = path.from_prediction(Prediction(x, eps), t, space)
        if space == fake.prediction:
            out = fake.raw(x_t, t, batch.cond)
        else:
            out = path.from_prediction(fake(x_t, t, batch.cond), t, space)
        per = squared_error(out, target, batch.mask)
        loss, logs = per.mean(), {"denoising": per.mean().detach()}
        if self.gan is not None and self.gan.discriminator_weight > 0:
            if batch.x0 is None:
                raise ValueError(f"{self.name}'s discriminator needs real data (batch.x0); got a data-free batch")
            t_gan = self.gan_time(path, batch.size, ctx.generator).to(x)
            _, l_fake = fake.with_logits(path.add_noise(x, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            _, l_real = fake.with_logits(path.add_noise(batch.x0, ctx.randn(x.shape), t_gan), t_gan, batch.cond)
            disc = softplus_discriminator(l_real, l_fake)
            loss = loss + self.gan.discriminator_weight * disc
            logs["gan_discriminator"] = disc.detach()
        return LossOutput(loss, logs)

    def regression_loss(self, batch: Batch, ctx: Context) -> Tensor:
        """DMD's regression on (noise, teacher ODE sample) pairs; the student maps the noise in one step."""
        student = ctx.student
        # seeded per iteration and rank: with the iteration alone every data-parallel rank regressed on the same noise
        opts = self.regression or RegressionOptions()
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed(opts.seed, ctx.iteration, ctx.rank))
        z = torch.randn((batch.size, *ctx.latent_shape), generator=g, device=ctx.device, dtype=ctx.dtype)
        with torch.no_grad():
            y = sample(ctx.guided_teacher(self.guidance_scale), z, opts.steps, batch.cond, opts.solver).x
        x_in = initial_latent(student.path, z)
        pred = student(x_in, _full(student.path.t_max, z), batch.cond).x0
        return squared_error(pred, y, batch.mask).mean()

    def unsupported_reason(self, latent_shape: tuple[int, ...], causal: bool) -> str | None:
        if causal:
            return "causal streaming students need a self-forcing rollout, not DMD2's backward simulation"
        return None


def decoupled_dmd(**kwargs: Any) -> DMD2:
    """Decoupled DMD (Liu et al., 2025): DMD2 with separate CFG-augmentation and distribution-matching terms."""
    return DMD2(decoupled=kwargs.pop("decoupled", None) or DecoupledOptions(), **kwargs)
