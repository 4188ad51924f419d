"""The objective contract and the core's two objectives (teacher training, consistency distillation)."""

import copy

import pytest
import torch
from support.context import make_ctx, make_engine
from support.nets import SHAPES, AnyShapeNet

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives import Batch, ConsistencyDistillation, ConsistencyFunction, DenoisingObjective
from unidistill.objectives.denoising import drop_condition
from unidistill.objectives.losses import per_sample, pseudo_huber
from unidistill.paths import RectifiedFlow, VPDiscrete
from unidistill.timesteps import UniformTime


def _zeros(c):
    return None if c is None else torch.zeros_like(c)


def _ctx(roles, shape, seed=0, iteration=0):
    return make_ctx(roles, shape, seed=seed, iteration=iteration, null=_zeros)


def _params(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("guided", [False, True])
def test_consistency_updates_only_the_student(shape, guided):
    torch.manual_seed(0)
    teacher = freeze(Denoiser(AnyShapeNet(), RectifiedFlow(), "flow"))
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    obj = ConsistencyDistillation(
        num_intervals=8,
        guidance_range=(1.0, 3.0) if guided else None,
        guidance_scale=1.0 if guided else 2.0,
        distance="pseudo_huber",
    )
    engine, opts = make_engine(obj, {"student": student, "teacher": teacher}, shape, lr=1e-2, null=_zeros)
    before_t, before_s = _params(teacher), _params(student)
    batch = Batch(torch.randn(4, *shape), cond=torch.randn(4))
    logs = engine.step(batch, 0, opts)
    assert all(torch.isfinite(v) for v in logs.values())
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items()), "teacher changed"
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items()), "student did not move"
    # the target copy follows the student only through the average (its first update copies it)
    assert all(torch.equal(a, b) for a, b in zip(engine.target.module.parameters(), student.parameters(), strict=True))
    assert all(p.grad is None for p in teacher.parameters())


def test_consistency_function_meets_the_boundary_condition_exactly():
    student = Denoiser(AnyShapeNet(), RectifiedFlow(), "flow")
    f = ConsistencyFunction(student)
    x = torch.randn(5, 3, 4)
    assert torch.equal(f(x, torch.zeros(5)).x0, x)
    # far from the boundary it is the student's own x0 prediction
    t = torch.full((5,), 0.7)
    assert torch.allclose(f(x, t).x0, student(x, t).x0, atol=1e-6)


def test_consistency_target_at_the_lowest_interval_is_the_teacher_step():
    """With t_lo = 0 the target f(x_lo, 0) is exactly the teacher's ODE step, so a student equal to the
    exact one-step map has zero loss there."""
    teacher = freeze(Denoiser(AnyShapeNet(), RectifiedFlow(), "flow"))
    obj = ConsistencyDistillation(num_intervals=1, skip=1, target_decay=0.0)
    x0 = torch.randn(3, 6)
    ctx = _ctx({"teacher": teacher}, (6,))
    t_hi, t_lo = obj.draw_times(3, teacher.path, ctx)
    assert torch.equal(t_hi, torch.ones(3)) and torch.equal(t_lo, torch.zeros(3))
    x_hi = torch.randn(3, 6)
    x_lo = obj.teacher_step(ctx, x_hi, t_hi, t_lo, None, torch.ones(3))
    assert torch.allclose(x_lo, teacher(x_hi, t_hi).x0, atol=1e-6)
    assert x0.shape == x_lo.shape


def test_denoising_objective_is_the_prediction_space_mse():
    path = VPDiscrete()
    net = Denoiser(AnyShapeNet(), path, "v")
    obj = DenoisingObjective(time_sampler=UniformTime(0.1, 0.9), cond_dropout=0.0)
    x0 = torch.randn(6, 2, 3)
    ctx = _ctx({"student": net}, (2, 3), seed=3)
    g = torch.Generator().set_state(ctx.generator.get_state())  # the draws the objective will make
    loss = obj.loss("student", Batch(x0), ctx).loss
    t = obj.time_sampler(path, 6, g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = path.add_noise(x0, eps, t)
    a, s = path.alpha(t)[:, None, None], path.sigma(t)[:, None, None]
    manual = ((net.raw(x_t, t) - (a * eps - s * x0)) ** 2).mean()
    assert torch.allclose(loss, manual, atol=1e-6)


def test_x0_prediction_with_velocity_loss_is_jits_weighted_x0_error():
    """JiT: x0 prediction, velocity loss on rectified flow = |x0_pred - x0|^2 / max(t, floor)^2 per sample."""
    path = RectifiedFlow()
    net = Denoiser(AnyShapeNet(), path, "x0")
    obj = DenoisingObjective(time_sampler=UniformTime(0.0, 1.0), cond_dropout=0.0, loss_space="flow",
                             loss_time_floor=0.2)
    x0 = torch.randn(64, 2, 3)
    ctx = _ctx({"student": net}, (2, 3), seed=5)
    g = torch.Generator().set_state(ctx.generator.get_state())  # the draws the objective will make
    loss = obj.loss("student", Batch(x0), ctx).loss
    t = obj.time_sampler(path, 64, g)
    eps = torch.randn(x0.shape, generator=g)
    err = ((net.raw(path.add_noise(x0, eps, t), t) - x0) ** 2).mean((1, 2))
    assert (t < 0.2).any() and (t > 0.2).any()  # both sides of the floor are exercised
    assert torch.allclose(loss, (err / t.clamp_min(0.2) ** 2).mean(), rtol=1e-5)
    plain = DenoisingObjective(time_sampler=UniformTime(0.0, 1.0), cond_dropout=0.0)
    assert not torch.allclose(plain.loss("student", Batch(x0), _ctx({"student": net}, (2, 3), seed=5)).loss, loss)
    with pytest.raises(ValueError, match="prediction type"):
        DenoisingObjective(loss_space="velocity")


def test_condition_dropout_mixes_per_sample():
    cond = {"emb": torch.ones(4, 3), "label": torch.arange(4)}
    null = {"emb": torch.zeros(4, 3), "label": torch.full((4,), -1)}
    keep = torch.tensor([True, False, True, False])
    mixed = drop_condition(cond, null, keep)
    assert mixed["emb"].sum(1).tolist() == [3, 0, 3, 0]
    assert mixed["label"].tolist() == [0, -1, 2, -1]


def test_masked_per_sample_reduction_ignores_padding():
    values = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert per_sample(values, mask).tolist() == [2.0, 2.0]
    assert per_sample(values, mask, "sum").tolist() == [4.0, 6.0]
    assert torch.allclose(pseudo_huber(torch.zeros(1, 4), torch.zeros(1, 4), 0.1), torch.zeros(1))
