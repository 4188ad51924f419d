"""Distribution matching (DMD2: guided, decoupled, f-divergence, GAN, regression; SiD) and adversarial distillation:
every generator and critic loss pinned against its closed form on exact Gaussian scores (docs/formulations.md §4, §5).

The student's sample is a parameter ``P`` (its x0 output whatever the input), so the gradient the student gets is
the gradient on ``P``; the real and fake scores are exact Gaussian denoisers of different data, recorded where the
objective queried them, and guidance is ``w != 1``: the guided teacher is the one with data mean ``m + w cond``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.gaussian import GaussianTeacherNet, Recorder, posterior_x0
from torch import nn

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives import (
    DMD2,
    AdversarialDistillation,
    Batch,
    DecoupledOptions,
    GanOptions,
    RegressionOptions,
    ScoreIdentityDistillation,
    f_divergence_weight,
    make_context,
)
from unidistill.objectives.fake_score import capture_features
from unidistill.paths import Prediction, RectifiedFlow
from unidistill.solvers import sample
from unidistill.timesteps import UniformTime

M_REAL, C_REAL, M_FAKE, C_FAKE, W = 0.7, 0.5, -0.4, 1.1, 2.5
SHAPE, B, D = (5,), 8, 5
F64 = torch.float64
RF = RectifiedFlow()


def null(cond):
    return None if cond is None else torch.zeros_like(cond)


class ParamStudent(nn.Module):
    """x0 = P whatever the input; records its calls."""

    path, prediction = RF, "x0"

    def __init__(self, n: int = B, shape: tuple[int, ...] = SHAPE) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.randn(n, *shape, generator=torch.Generator().manual_seed(3), dtype=F64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, cond=None, guidance=None):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return Prediction(self.P, (x - (1 - t)[:, None] * self.P) / t[:, None].clamp_min(1e-12))


class LogitFake(nn.Module):
    """A fake score (an exact Gaussian denoiser of other data) with a known discriminator logit ``2 mean(x) + 0.3``."""

    def __init__(self) -> None:
        super().__init__()
        self.den = Denoiser(GaussianTeacherNet(RF, M_FAKE, C_FAKE), RF, "x0")
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=F64))
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    path, prediction = RF, "x0"

    def logit(self, x):
        return self.scale * x.mean(1) + 0.3

    def forward(self, x, t, cond=None, guidance=None):
        out = self.den(x, t, cond)
        self.calls.append(("forward", x.detach().clone(), t.detach().clone(), out.x0.detach()))
        return out

    def raw(self, x, t, cond=None):
        out = self.den.raw(x, t, cond)
        self.calls.append(("raw", x.detach().clone(), t.detach().clone(), out.detach()))
        return out

    def with_logits(self, x, t, cond=None, raw=False):
        out = self.raw(x, t, cond) if raw else self(x, t, cond)
        logits = self.logit(x)
        self.calls.append(("logits", x.detach().clone(), t.detach().clone(), logits.detach()))
        return out, logits


def batch(data: bool = False) -> Batch:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(B, generator=g, dtype=F64)
    x0 = 3.0 + 0.1 * torch.randn(B, *SHAPE, generator=g, dtype=F64) if data else None
    return Batch(x0, cond, size=B)


def setup(objective, fake=None, iteration=0, student=None):
    teacher = Recorder(freeze(Denoiser(GaussianTeacherNet(RF, M_REAL, C_REAL), RF, "x0")))
    fake = fake or Recorder(Denoiser(GaussianTeacherNet(RF, M_FAKE, C_FAKE), RF, "x0"))
    student = student or ParamStudent()
    roles = {"student": student, "teacher": teacher, "fake_score": fake}
    ctx = make_context(roles, SHAPE, seed=1, iteration=iteration, null_condition=null, dtype=F64)
    return student, teacher, fake, ctx


def mu_real(x, t, cond, w=W):
    return posterior_x0(RF, x, t, M_REAL + w * cond[:, None], C_REAL)


def mu_fake(x, t, cond):
    return posterior_x0(RF, x, t, M_FAKE + cond[:, None], C_FAKE)


def grad_of(loss, student):
    (g,) = torch.autograd.grad(loss, student.P)
    return g


def dm_point(fake):
    """(x_t, t) of the distribution-matching query: the fake score's first call."""
    if isinstance(fake, LogitFake):
        return next(c for c in fake.calls if c[0] == "forward")[1:3]
    return fake.calls[0][:2]


def test_dmd_gradient_is_the_guided_score_difference_over_the_normaliser():
    """dL/dP = (mu_fake - mu_real^w) / N / (B D), mu_real^w = u + w (c - u) (here: the teacher with mean m + w cond),
    N = mean |P - mu_real^w|: the sample moves toward the guided teacher's denoising."""
    student, _, fake, ctx = setup(DMD2(guidance_scale=W))
    b = batch()
    grad = grad_of(DMD2(guidance_scale=W).student_loss(b, ctx).loss, student)
    x_t, t = dm_point(fake)
    mr = mu_real(x_t, t, b.cond)
    n = (student.P.detach() - mr).abs().mean(1, keepdim=True) + 1e-6
    torch.testing.assert_close(grad, (mu_fake(x_t, t, b.cond) - mr) / n / (B * D))
    unguided = (mu_fake(x_t, t, b.cond) - mu_real(x_t, t, b.cond, 1.0)) / n / (B * D)
    assert (grad - unguided).abs().max() > 1e-3  # guidance moves the gradient by the predicted amount


def test_decoupled_dmd_splits_guidance_augmentation_from_distribution_matching():
    obj = DMD2(guidance_scale=W, student_steps=2, decoupled=DecoupledOptions(dm_weight=0.7, ca_weight=1.3))
    ratios = []
    for it in range(6):  # both exits of the 2-step backward simulation (t_in = 1 and 0.5)
        student, teacher, fake, ctx = setup(obj, iteration=it)
        b = batch()
        grad = grad_of(obj.student_loss(b, ctx).loss, student)
        x, t_in = student.P.detach(), student.calls[-1][1]
        x_t, t = dm_point(fake)
        (x_c, _, c_c, *_), (x_tau, tau, c_tau, *_), (x_u, _, c_u, *_) = teacher.calls
        assert torch.equal(x_t, x_c) and torch.equal(c_c, b.cond) and torch.equal(x_tau, x_u)
        assert torch.equal(c_tau, b.cond) and torch.equal(c_u, torch.zeros(B, dtype=F64))
        mc = mu_real(x_t, t, b.cond, 1.0)
        g_dm = 0.7 * (mu_fake(x_t, t, b.cond) - mc) / ((x - mc).abs().mean(1, keepdim=True) + 1e-6)
        c_pred, u_pred = mu_real(x_tau, tau, b.cond, 1.0), mu_real(x_tau, tau, b.cond, 0.0)
        cfg = u_pred + W * (c_pred - u_pred)
        g_ca = 1.3 * (W - 1) * (u_pred - c_pred) / ((x - cfg).abs().mean(1, keepdim=True) + 1e-6)
        torch.testing.assert_close(grad, (g_dm + g_ca) / (B * D))
        ratios.append(tau / t_in)
    ratios = torch.cat(ratios)
    assert float(ratios.min()) >= 0.02 - 1e-6 and float(ratios.max()) <= 1.0  # the CA time is a fraction of t_in


def test_f_divergence_weight_normalises_the_ratio_per_time_bin_then_h_by_its_mean():
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, 12.0])
    position = torch.tensor([0.05, 0.07, 0.55, 0.51, 0.52, 0.99])
    r = logits.clamp(-10, 10).exp().clamp(0.1, 20.0)
    bins = torch.tensor([0, 0, 5, 5, 5, 9])
    mean = torch.stack([r[bins == k].mean() for k in bins.tolist()])
    rn = r / mean
    h = rn / (1 + rn)
    torch.testing.assert_close(f_divergence_weight(logits, "js", position, bins=10), h / h.mean(), rtol=1e-5, atol=0)
    h0 = r.sqrt()
    torch.testing.assert_close(f_divergence_weight(logits, "hellinger"), h0 / h0.mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("bins", [10, 0])
def test_f_distill_gradient_is_the_dmd_gradient_weighted_by_h(bins):
    obj = DMD2(
        guidance_scale=W,
        f_divergence="forward_kl",
        f_ratio_bins=bins,
        gan=GanOptions(generator_weight=0.0),
        dm_time=UniformTime(0.02, 0.98),
    )
    student, _, fake, ctx = setup(obj, fake=LogitFake())
    b = batch()
    grad = grad_of(obj.student_loss(b, ctx).loss, student)
    (_, x_t, t, _), (_, _, _, logits) = fake.calls
    mr = mu_real(x_t, t, b.cond)
    n = (student.P.detach() - mr).abs().mean(1, keepdim=True) + 1e-6
    r = logits.clamp(-10, 10).exp().clamp(0.1, 20.0)
    if bins:
        idx = (t * bins).floor().long()
        assert idx.unique().numel() > 1
        r = r / torch.stack([r[idx == k].mean() for k in idx.tolist()])
    h = r / r.mean()  # forward KL: h(r) = r
    torch.testing.assert_close(grad, h[:, None] * (mu_fake(x_t, t, b.cond) - mr) / n / (B * D), rtol=1e-5, atol=1e-12)
    assert float(h.max() / h.min()) > 1.5


def test_dmd2_gan_generator_term_is_softplus_of_minus_the_logit():
    obj = DMD2(guidance_scale=W, gan=GanOptions(generator_weight=0.5))
    student, _, fake, ctx = setup(obj, fake=LogitFake())
    b = batch(data=True)
    out = obj.student_loss(b, ctx)
    grad = grad_of(out.loss, student)
    x_t, t = dm_point(fake)
    ((_, x_g, t_g, logits),) = [c for c in fake.calls if c[0] == "logits"]
    torch.testing.assert_close(out.logs["gan_generator"], F.softplus(-logits).mean())
    P = student.P.detach().requires_grad_(True)
    eps = (x_g - (1 - t_g)[:, None] * P.detach()) / t_g[:, None]
    gan = F.softplus(-fake.logit((1 - t_g)[:, None] * P + t_g[:, None] * eps)).mean()
    (gan_grad,) = torch.autograd.grad(gan, P)
    mr = mu_real(x_t, t, b.cond)
    dm = (mu_fake(x_t, t, b.cond) - mr) / ((P.detach() - mr).abs().mean(1, keepdim=True) + 1e-6) / (B * D)
    torch.testing.assert_close(grad, dm + 0.5 * gan_grad)
    assert (gan_grad < 0).all()  # descending it raises D(fake): the generator pulls its samples toward "real"


def test_dmd2_fake_score_loss_denoises_the_students_sample_and_trains_the_discriminator():
    gan = GanOptions(generator_weight=0.0, discriminator_weight=0.5, time=UniformTime(0.1, 0.5))
    obj = DMD2(guidance_scale=W, gan=gan)
    student, _, fake, ctx = setup(obj, fake=LogitFake())
    b = batch(data=True)
    out = obj.fake_score_loss(b, ctx)
    P = student.P.detach()
    (_, _, t, raw), *logit_calls = [c for c in fake.calls if c[0] in ("raw", "logits")]
    denoise = (raw - P).pow(2).mean()  # x0-prediction: the target is the student's sample itself
    torch.testing.assert_close(out.logs["denoising"], denoise)

    def residual(x_in, t_in, src):
        return float(((x_in - (1 - t_in)[:, None] * src) / t_in[:, None]).pow(2).mean())

    is_real = [residual(c[1], c[2], b.x0) < residual(c[1], c[2], P) for c in logit_calls]
    assert sorted(is_real) == [False, True]
    l_real, l_fake = (logit_calls[is_real.index(flag)][3] for flag in (True, False))
    disc = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
    torch.testing.assert_close(out.logs["gan_discriminator"], disc)
    torch.testing.assert_close(out.loss, denoise + 0.5 * disc)


def test_dmd_regression_term_regresses_the_one_step_map_on_the_guided_teachers_ode_sample():
    obj = DMD2(guidance_scale=W, regression=RegressionOptions(weight=1.0, steps=3, solver="heun", seed=4))
    student, _, _, ctx = setup(obj)
    b = batch()
    out = obj.student_loss(b, ctx)
    z = torch.randn((B, *SHAPE), generator=torch.Generator().manual_seed(ctx.seed(4, 0, 0)), dtype=F64)
    guided = Denoiser(GaussianTeacherNet(RF, M_REAL, C_REAL), RF, "x0")
    y = sample(guided, z, 3, W * b.cond, solver="heun").x  # the teacher with mean m + w cond
    torch.testing.assert_close(out.logs["regression"], (student.P.detach() - y).pow(2).mean())


def test_backward_simulation_renoises_each_prediction_to_the_next_grid_time():
    obj = DMD2(student_steps=4)
    student = ParamStudent(n=B, shape=(4096,))
    exits = set()
    for it in range(16):
        student.calls.clear()
        ctx = make_context({"student": student}, (4096,), seed=1, iteration=it, dtype=F64)
        obj.generate(Batch(None, size=B), ctx, grad=False)
        grid = RF.time_grid(4).tolist()
        exits.add(len(student.calls))
        for j, (x, t) in enumerate(student.calls):
            assert torch.allclose(t, torch.full_like(t, grid[j]))
            noise = (x - (1 - t)[:, None] * student.P.detach()) / t[:, None]
            assert abs(float(noise.std()) - 1.0) < 0.03 and abs(float(noise.mean())) < 0.03
    assert exits == {1, 2, 3, 4}


def test_sid_loss_is_its_closed_form_with_alpha():
    obj = ScoreIdentityDistillation(alpha=1.2, guidance_scale=W)
    student, teacher, fake, ctx = setup(obj)
    b = batch()
    loss = obj.student_loss(b, ctx).loss
    x = student.P.detach()
    x_t, t = fake.calls[0][:2]
    mr, mf = mu_real(x_t, t, b.cond), mu_fake(x_t, t, b.cond)
    n = (x - mr).abs().mean(1, keepdim=True) + 1e-6
    # SiD's (1 - alpha) ||mu_r - mu_f||^2 + (mu_r - mu_f) . (mu_f - x), per element, over N
    expected = ((1 - 1.2) * (mr - mf) ** 2 + (mr - mf) * (mf - x)) / n
    torch.testing.assert_close(loss, expected.mean())
    assert loss.requires_grad and abs(float(loss)) > 1e-3


# --- adversarial distillation ------------------------------------------------------------------------------------
class FeatureTeacherNet(GaussianTeacherNet):
    """The exact teacher, with a parameterised layer ``blocks.0`` whose output serves as discriminator features."""

    def __init__(self) -> None:
        super().__init__(RF, M_REAL, C_REAL)
        self.blocks = nn.ModuleList([nn.Linear(D, 6, dtype=F64)])

    def forward(self, x, t, cond=None, guidance=None):
        self.blocks[0](torch.cat([x[:, 1:], t[:, None]], 1))
        return super().forward(x, t, cond, guidance)


def adversarial_setup(**kw):
    torch.manual_seed(0)
    teacher = Recorder(freeze(Denoiser(FeatureTeacherNet(), RF, "x0")))
    obj = AdversarialDistillation(feature_layers=["blocks.0"], head_hidden=8, guidance_scale=W, **kw)
    student = ParamStudent()
    disc = obj.build_roles(student, teacher)["discriminator"]
    ctx = make_context(
        {"student": student, "teacher": teacher, "discriminator": disc}, SHAPE, seed=1, null_condition=null, dtype=F64
    )
    return obj, student, teacher, disc, ctx


def logits_at(teacher, disc, x, t, cond):
    with torch.no_grad(), capture_features(teacher.inner.network, ["blocks.0"]) as feats:
        teacher.inner(x, t, cond)
        return disc(dict(feats))


def test_adversarial_discriminator_loss_is_the_hinge_on_real_and_fake_at_shared_noise():
    obj, student, teacher, disc, ctx = adversarial_setup()
    b = batch(data=True)
    loss = obj.discriminator_loss(b, ctx).loss
    (x_f, t, *_), (x_r, t_r, *_) = teacher.calls
    shift = (1 - t)[:, None] * (b.x0 - student.P.detach())
    if not torch.allclose(x_r - x_f, shift):  # which teacher call saw the real data
        x_f, x_r = x_r, x_f
    assert torch.equal(t, t_r)
    torch.testing.assert_close(x_r - x_f, shift)  # real and fake are noised at the same t with the same noise
    expected = (
        F.relu(1 - logits_at(teacher, disc, x_r, t, b.cond)).mean()
        + F.relu(1 + logits_at(teacher, disc, x_f, t, b.cond)).mean()
    )
    torch.testing.assert_close(loss, expected)


def test_adversarial_student_loss_is_minus_the_logit_plus_the_alpha_weighted_distillation():
    obj, student, teacher, disc, ctx = adversarial_setup(distill_weight=2.5)
    b = batch(data=True)
    out = obj.student_loss(b, ctx)
    (x_t, t, *_), (x_d, t_d, c_d, *_), (x_u, _, c_u, *_) = teacher.calls
    ((x_s, t_s),) = student.calls
    assert torch.equal(c_d, b.cond) and torch.equal(c_u, torch.zeros(B, dtype=F64)) and torch.equal(x_d, x_u)
    torch.testing.assert_close(out.logs["adversarial"], -logits_at(teacher, disc, x_t, t, b.cond).mean())
    x = student.P.detach()
    distill = ((1 - t_d)[:, None] * (x - mu_real(x_d, t_d, b.cond)) ** 2).mean()  # ADD: c(t) = alpha_t
    torch.testing.assert_close(out.logs["distill"], distill)
    torch.testing.assert_close(out.loss, out.logs["adversarial"] + 2.5 * distill)
    assert math.isfinite(float(out.loss)) and x_s.shape == x.shape and float(t_s[0]) == 1.0
