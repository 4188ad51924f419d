"""The objective contract and the core's two objectives (teacher training, consistency distillation)."""

import copy

import pytest
import torch
from helpers import SHAPES, AnyShapeNet

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives import Batch, ConsistencyDistillation, ConsistencyFunction, Context, DenoisingObjective
from unidistill.objectives.base import LossOutput, Objective, run_iteration
from unidistill.objectives.denoising import drop_condition
from unidistill.objectives.losses import per_sample, pseudo_huber
from unidistill.paths import RectifiedFlow, VPDiscrete
from unidistill.timesteps import UniformTime


def _ctx(roles, shape, seed=0, iteration=0):
    return Context(
        roles=roles,
        latent_shape=shape,
        generator=torch.Generator().manual_seed(seed),
        shared_generator=torch.Generator().manual_seed(seed + 1),
        iteration=iteration,
        null_condition=lambda c: None if c is None else torch.zeros_like(c),
    )


def _params(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("guided", [False, True])
def test_consistency_updates_only_the_student(shape, guided):
    torch.manual_seed(0)
    teacher = freeze(Denoiser(AnyShapeNet(), RectifiedFlow(), "flow"))
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    target = copy.deepcopy(student).requires_grad_(False)
    obj = ConsistencyDistillation(
        num_intervals=8,
        guidance_range=(1.0, 3.0) if guided else None,
        guidance_scale=1.0 if guided else 2.0,
        distance="pseudo_huber",
    )
    before_t, before_target = _params(teacher), _params(target)
    before_s = _params(student)
    batch = Batch(torch.randn(4, *shape), cond=torch.randn(4))
    ctx = _ctx({"student": student, "teacher": teacher, "target": target}, shape)
    opt = {"student": torch.optim.AdamW(student.parameters(), lr=1e-2)}
    logs = run_iteration(obj, batch, ctx, opt)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items()), "teacher changed"
    assert all(torch.equal(before_target[k], v) for k, v in target.state_dict().items()), "target changed"
    assert any(not torch.equal(before_s[k], v) for k, v in student.state_dict().items()), "student did not move"
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
    t_hi, t_lo = obj.draw_times(3, 1.0, ctx)
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
    loss = obj.loss("student", Batch(x0), ctx).loss
    g = torch.Generator().manual_seed(3)
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
    loss = obj.loss("student", Batch(x0), _ctx({"student": net}, (2, 3), seed=5)).loss
    g = torch.Generator().manual_seed(5)
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


def test_plan_order_and_non_finite_loss_error():
    class TwoRoles(Objective):
        trainable_roles = ("student", "critic")

        def plan(self, iteration):
            return ["critic", "critic", "student"]

        def loss(self, role, batch, ctx):
            ctx.roles["order"].append(role)
            p = ctx.roles[role].weight
            value = p.sum() * (float("nan") if ctx.iteration == 1 and role == "student" else 1.0)
            return LossOutput(value, {"value": value.detach()})

    student, critic = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    order = []
    roles = {"student": student, "critic": critic, "order": order}
    opts = {
        "student": torch.optim.SGD(student.parameters(), lr=0.1),
        "critic": torch.optim.SGD(critic.parameters(), lr=0.1),
    }
    run_iteration(TwoRoles(), Batch(torch.zeros(1, 2)), _ctx(roles, (2,)), opts)
    assert order == ["critic", "critic", "student"]
    with pytest.raises(
        FloatingPointError, match=r"TwoRoles, role 'student', term\(s\) \['loss', 'value'\], at iteration 1"
    ):
        run_iteration(TwoRoles(), Batch(torch.zeros(1, 2)), _ctx(roles, (2,), iteration=1), opts)


def test_learning_rate_schedule_is_warmup_then_cosine_to_the_floor():
    from modalities.gmm import GmmModality
    from unidistill.module import DistillationModule

    m = DistillationModule(GmmModality(hidden=8, depth=1), ConsistencyDistillation(), lr_warmup_iterations=10,
                           lr_decay_iterations=100, lr_min_ratio=0.1)
    assert m.lr_factor(0) == pytest.approx(0.1) and m.lr_factor(9) == pytest.approx(1.0)
    assert m.lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert m.lr_factor(110) == pytest.approx(0.1) and m.lr_factor(10_000) == pytest.approx(0.1)
