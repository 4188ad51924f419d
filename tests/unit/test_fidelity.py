"""The data-fidelity terms (unidistill.objectives.fidelity) and their one-argument wiring into DMD2 and trajectory
regression: the student loss gains exactly the fidelity of the student's output, and nothing else changes."""

from __future__ import annotations

import math

import pytest
import torch
from test_objectives_distribution import ctx_for, setup

from unidistill.objectives import DMD2, Batch, TrajectoryRegression
from unidistill.objectives.dmd import student_sample
from unidistill.objectives.fidelity import FidelityLoss, Measurement, PerceptualDistance

SHAPE = (3, 4, 4)


class MeanAbs(PerceptualDistance):
    """A stand-in perceptual distance that records its calls: mean |pred - target| per sample, plus cond."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, pred, target, cond):
        self.calls.append(cond)
        return (pred - target).abs().flatten(1).mean(1)


def test_value_is_the_weighted_sum_of_per_sample_terms_and_the_gradient_is_analytic():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, *SHAPE, generator=g)
    pred = torch.randn(4, *SHAPE, generator=g, requires_grad=True)
    dist = MeanAbs()
    fid = FidelityLoss(l2_weight=0.5, perceptual_weight=2.0, perceptual=dist)
    cond = torch.arange(4)
    loss, logs = fid(pred, Batch(x0, cond))
    l2 = ((pred - x0) ** 2).mean()
    per = (pred - x0).abs().mean()
    assert torch.allclose(loss, 0.5 * l2 + 2.0 * per)
    assert torch.allclose(logs["fidelity_l2"], l2) and torch.allclose(logs["fidelity_perceptual"], per)
    assert dist.calls[0] is cond  # the modality's distance sees the condition (e.g. to decode latents)
    loss.backward()
    d = pred.detach() - x0
    analytic = 0.5 * 2 * d / d.numel() + 2.0 * torch.sign(d) / d.numel()
    assert torch.allclose(pred.grad, analytic, atol=1e-7)


class PairSum(Measurement):
    """A linear degradation: sums neighbouring pairs along the last axis, then adds the condition (a shift, as a
    decoder's ``latent + up`` would)."""

    def __call__(self, latent, cond):
        return latent.unflatten(-1, (-1, 2)).sum(-1) + cond


def test_measurement_term_is_the_mse_of_the_degraded_pair_and_its_gradient_is_analytic():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, generator=g)
    pred = torch.randn(3, 4, generator=g, requires_grad=True)
    cond = torch.randn(3, 1, generator=g)
    fid = FidelityLoss(l2_weight=0.0, measurement_weight=3.0, measurement=PairSum())
    loss, logs = fid(pred, Batch(x0, cond))
    r = (pred - x0).detach().unflatten(-1, (-1, 2)).sum(-1)       # A(pred) - A(x0): the shift cancels
    assert torch.allclose(loss, 3.0 * (r ** 2).mean()) and torch.allclose(logs["fidelity_measurement"], (r ** 2).mean())
    loss.backward()
    analytic = (3.0 * 2 * r / r.numel()).repeat_interleave(2, dim=-1)  # A^T applied to the residual
    assert torch.allclose(pred.grad, analytic, atol=1e-7)
    # what A cannot see costs nothing: a change in the null space of A (pair differences) leaves the term unchanged
    null = torch.tensor([1.0, -1.0, 2.0, -2.0])
    assert torch.allclose(fid(pred.detach() + null, Batch(x0, cond))[0], loss.detach())


def test_masked_elements_do_not_count():
    x0 = torch.zeros(2, 4)
    pred = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    loss, _ = FidelityLoss()(pred, Batch(x0, None, mask))
    assert math.isclose(float(loss), (1.0 + 4.0) / 2)


def test_bad_settings_and_data_free_batches_are_refused():
    with pytest.raises(ValueError, match="perceptual distance"):
        FidelityLoss(perceptual_weight=1.0)
    with pytest.raises(ValueError, match="l2_weight=-1"):
        FidelityLoss(l2_weight=-1)
    with pytest.raises(ValueError, match="degradation operator"):
        FidelityLoss(measurement_weight=1.0)
    with pytest.raises(ValueError, match="data-free"):
        FidelityLoss()(torch.zeros(2, 3), Batch(None, size=2))


def test_dmd2_student_loss_gains_exactly_the_fidelity_of_its_output():
    fid = FidelityLoss(l2_weight=0.7, perceptual_weight=0.3, perceptual=MeanAbs())
    plain, with_fid = DMD2(fake_updates_per_student=1), DMD2(fake_updates_per_student=1, fidelity=fid)
    roles, _, batch, _ = setup(plain, SHAPE)
    a = plain.loss("student", batch, ctx_for(roles, SHAPE, it=3))
    b = with_fid.loss("student", batch, ctx_for(roles, SHAPE, it=3))
    x, _ = student_sample(roles["student"], batch, ctx_for(roles, SHAPE, it=3), 1, grad=False)
    expected, _ = fid(x, batch)
    assert torch.allclose(b.loss - a.loss, expected, atol=1e-6)
    assert torch.allclose(a.logs["dm"], b.logs["dm"]) and "fidelity_l2" in b.logs and "fidelity_l2" not in a.logs
    # the fake-score update is untouched
    fa = plain.loss("fake_score", batch, ctx_for(roles, SHAPE, it=4))
    fb = with_fid.loss("fake_score", batch, ctx_for(roles, SHAPE, it=4))
    assert torch.equal(fa.loss, fb.loss)
    # and its gradient reaches the student: d(b - a)/d(theta) is the fidelity's gradient through x = G_theta(z)
    params = [p for p in roles["student"].parameters() if p.requires_grad]
    g_a = torch.autograd.grad(plain.loss("student", batch, ctx_for(roles, SHAPE, it=3)).loss, params)
    g_b = torch.autograd.grad(with_fid.loss("student", batch, ctx_for(roles, SHAPE, it=3)).loss, params)
    x, _ = student_sample(roles["student"], batch, ctx_for(roles, SHAPE, it=3), 1, grad=True)
    g_f = torch.autograd.grad(fid(x, batch)[0], params)
    for ga, gb, gf in zip(g_a, g_b, g_f, strict=True):
        torch.testing.assert_close(gb - ga, gf, rtol=1e-4, atol=1e-6)
    assert any(float(gf.abs().max()) > 1e-4 for gf in g_f)


def test_trajectory_regression_gains_the_fidelity_and_refuses_a_cache():
    fid = FidelityLoss(l2_weight=1.0)
    plain = TrajectoryRegression(teacher_steps=2, teacher_solver="euler")
    with_fid = TrajectoryRegression(teacher_steps=2, teacher_solver="euler", fidelity=fid)
    roles, _, batch, _ = setup(plain, SHAPE)
    a = plain.loss("student", batch, ctx_for(roles, SHAPE))
    b = with_fid.loss("student", batch, ctx_for(roles, SHAPE))
    assert torch.allclose(b.loss - a.loss, b.logs["fidelity_l2"]) and float(b.logs["fidelity_l2"]) > 0
    with pytest.raises(ValueError, match="cache"):
        TrajectoryRegression(fidelity=fid, cache=object())


def test_trajectory_regression_from_a_cache_runs_without_a_teacher(tmp_path):
    """With a cache the objective needs no teacher, so a run has none; the cache check must not ask for one."""
    from unidistill.cache import TeacherCache, generate_cache

    objective = TrajectoryRegression(teacher_steps=2)
    roles, _, batch, _ = setup(objective, SHAPE)
    generate_cache(roles["teacher"], tmp_path, 8, SHAPE, solver="euler", steps=2, shard_size=8)
    cached = TrajectoryRegression(cache=TeacherCache(str(tmp_path)))
    assert cached.needs_teacher is False
    no_teacher = {k: v for k, v in roles.items() if k != "teacher"}
    out = cached.loss("student", Batch(None, size=4), ctx_for(no_teacher, SHAPE))
    assert torch.isfinite(out.loss)
