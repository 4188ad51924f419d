"""The consistency family's formulas, pinned on exact Gaussian teachers (docs/formulations.md §3).

A student equal to the teacher's exact consistency function (or average velocity) has zero sCM / MeanFlow loss, a
perturbed one the loss predicted from the definitions: ``g = cos t df/dt`` along the teacher's ODE for sCM, the MeanFlow
identity ``u = v - (t - r) du/dt`` for flow maps, both with the derivative taken by finite differences here. Guidance
is ``w != 1``, so a teacher queried without guidance shows too.
"""

from __future__ import annotations

import math

import pytest
import torch
from support.gaussian import (
    AverageVelocityNet,
    ConsistencyNet,
    GaussianTeacherNet,
    Recorder,
    posterior_x0,
    velocity,
)

from unidistill.denoiser import Denoiser, OnPath, freeze
from unidistill.objectives import (
    Batch,
    ConsistencyDistillation,
    ConsistencyFunction,
    ContinuousConsistency,
    FlowMapDistillation,
    PhasedConsistencyDistillation,
    make_context,
)
from unidistill.paths import EDM, RectifiedFlow, expand_like

M, C, W = 0.3, 0.5, 2.0
SHAPE, B = (6,), 8
F64 = torch.float64


def null(cond):
    return None if cond is None else torch.zeros_like(cond)


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(B, generator=g, dtype=F64)
    return Batch(M + cond[:, None] + C * torch.randn(B, *SHAPE, generator=g, dtype=F64), cond)


def ctx(roles, iteration: int = 0, seed: int = 1):
    return make_context(roles, SHAPE, seed=seed, iteration=iteration, null_condition=null, dtype=F64)


def draws(c):
    """A generator in the state the objective's own generator starts from (to repeat its draws)."""
    return torch.Generator().set_state(c.generator.get_state())


def teacher(path=None):
    path = path or RectifiedFlow()
    return freeze(Denoiser(GaussianTeacherNet(path, M, C), path, "x0"))


# --- sCM ------------------------------------------------------------------------------------------------------------
def scm_expected(obj: ContinuousConsistency, student, b: Batch, c, r: float, logvar: float = 0.0) -> torch.Tensor:
    """The sCM loss from its definition: g = cos t df/dt along the guided teacher's TrigFlow ODE (finite differences
    of the student's own x0, f), of which the part -cos^2 t (sigma_d F - dx/dt) is kept and the rest scaled by r."""
    trig, sd = obj.trig, obj.sigma_data
    g = draws(c)
    t = obj.time_sampler(trig, B, g).to(F64)
    x = trig.add_noise(b.x0, torch.randn(b.x0.shape, generator=g, dtype=F64), t)
    v = velocity(trig, x, t, M + expand_like(W * b.cond, x), C)  # the guided teacher's TrigFlow ODE

    def f(x_, t_):
        return OnPath(student, trig)(x_, t_, b.cond).x0

    h = 1e-5
    dfdt = (f(x + h * v, t + h) - f(x - h * v, t - h)) / (2 * h)
    cos = expand_like(torch.cos(t), x)
    full = cos * dfdt
    keep = -(cos**2) * (OnPath(student, trig).velocity(x, t, b.cond) - v)
    g_t = keep + r * (full - keep)
    norm = (
        g_t.pow(2).sum(1, keepdim=True).sqrt() if obj.tangent_norm == "l2" else g_t.pow(2).mean(1, keepdim=True).sqrt()
    )
    d = (g_t / (norm + obj.tangent_norm_c)).pow(2).mean(1)
    w = 1 / (sd * torch.tan(t)) if obj.prior_weighting else torch.ones_like(t)
    return (math.exp(-logvar) * w * d + logvar).mean()


def scm_setup(delta: float, **kw):
    obj = ContinuousConsistency(guidance_scale=W, **kw)
    path = RectifiedFlow()
    student = Denoiser(ConsistencyNet(path, M, C, W, delta), path, "x0")
    return obj, student, {"student": student, "teacher": teacher(path), **obj.build_roles(student, None)}


@pytest.mark.parametrize("tangent", ["jvp", "finite_difference"])
def test_scm_loss_vanishes_for_the_exact_consistency_function(tangent):
    obj, _, roles = scm_setup(0.0, tangent=tangent, tangent_warmup=0, adaptive_weighting=False)
    out = obj.loss("student", batch(), ctx(roles))
    assert float(out.loss) < 1e-12 and float(out.logs["distance"]) < 1e-12


@pytest.mark.parametrize(
    "kw",
    [
        dict(adaptive_weighting=False),
        dict(adaptive_weighting=False, tangent_norm="rms", prior_weighting=False),
        dict(adaptive_weighting=True),
    ],
    ids=["l2+prior", "rms", "logvar"],
)
@pytest.mark.parametrize("iteration", [4, 10], ids=["warming", "warm"])
def test_scm_loss_of_a_perturbed_student_is_the_predicted_value(kw, iteration):
    obj, student, roles = scm_setup(0.2, tangent_warmup=8, **kw)
    c = ctx(roles, iteration)
    update = "student+logvar" if obj.adaptive_weighting else "student"
    logvar = 0.0
    if obj.adaptive_weighting:
        roles["logvar"].mlp[-1].bias.data.fill_(0.3)
        logvar = 0.3
    loss = obj.loss(update, batch(), c).loss
    expected = scm_expected(obj, student, batch(), ctx(roles, iteration), min(1.0, iteration / 8), logvar)
    assert float(expected) > 1e-3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_scm_draws_ln_sigma_normal_truncated_at_sigma_max():
    obj = ContinuousConsistency(p_mean=-1.0, p_std=1.4, sigma_data=0.5, sigma_max=80.0)
    t = obj.time_sampler(obj.trig, 40000, torch.Generator().manual_seed(0)).double()
    log_sigma = torch.log(0.5 * torch.tan(t))
    assert abs(float(log_sigma.mean()) + 1.0) < 0.03 and abs(float(log_sigma.std()) - 1.4) < 0.03
    assert float((0.5 * torch.tan(t)).max()) <= 80.0 * (1 + 1e-4)


# --- MeanFlow -------------------------------------------------------------------------------------------------------
def flow_map_setup(delta: float, **kw):
    obj = FlowMapDistillation(guidance_scale=W, flow_ratio=0.3, **kw)
    path = RectifiedFlow()
    student = Denoiser(AverageVelocityNet(path, M, C, W, delta), path, "flow")
    return obj, student, {"student": student, "teacher": teacher(path)}


def test_flow_map_loss_vanishes_for_the_exact_average_velocity():
    obj, _, roles = flow_map_setup(0.0)
    out = obj.loss("student", batch(), ctx(roles))
    assert float(out.logs["mse"]) < 1e-20 and float(out.loss) < 1e-15


@pytest.mark.parametrize("p,c_", [(1.0, 1e-3), (0.5, 0.1)])
def test_flow_map_loss_of_a_perturbed_student_is_the_meanflow_identity(p, c_):
    obj, student, roles = flow_map_setup(0.05, adaptive_p=p, adaptive_c=c_)
    c = ctx(roles)
    b, g, path = batch(), draws(c), RectifiedFlow()
    loss = obj.loss("student", b, c).loss
    t1, t2 = (obj.time_sampler(path, B, g).to(F64) for _ in range(2))
    t, r = torch.maximum(t1, t2), torch.minimum(t1, t2)
    r = torch.where(torch.rand(B, generator=g, dtype=F64) < 0.3, t, r)
    assert (r == t).any() and (r < t).any()
    x = path.add_noise(b.x0, torch.randn(b.x0.shape, generator=g, dtype=F64), t)
    v = velocity(path, x, t, M + expand_like(W * b.cond, x), C)

    def u(x_, t_):  # r held fixed: the jump length grows with t
        return student.velocity(x_, t_, b.cond, guidance=t_ - r)

    h = 1e-5
    dudt = (u(x + h * v, t + h) - u(x - h * v, t - h)) / (2 * h)
    target = v - expand_like(t - r, x) * dudt
    d = (u(x, t) - target).pow(2).sum(1)  # the per-sample sum, as MeanFlow and FastGen take it
    torch.testing.assert_close(loss, (d / (d + c_) ** p).mean(), rtol=1e-6, atol=0)
    assert float((d / (d + c_) ** p).mean()) > 1e-3


# --- consistency distillation ----------------------------------------------------------------------------------------
def test_consistency_function_is_lcm_boundary_parameterisation():
    path = RectifiedFlow()
    net = Denoiser(GaussianTeacherNet(path, M, C), path, "x0")
    f = ConsistencyFunction(net, boundary_scale=10.0, sigma_data=0.5)
    x = torch.randn(5, 4, dtype=F64)
    t = torch.tensor([0.0, 0.01, 0.05, 0.3, 1.0], dtype=F64)
    tau = (10.0 * t)[:, None]
    expected = 0.25 / (tau**2 + 0.25) * x + tau / torch.sqrt(tau**2 + 0.25) * net(x, t).x0
    torch.testing.assert_close(f(x, t).x0, expected)


@pytest.mark.parametrize("path", [RectifiedFlow(), EDM()], ids=["rf", "edm"])
def test_consistency_times_are_skip_points_apart_on_the_paths_grid(path):
    obj = ConsistencyDistillation(num_intervals=10, skip=3)
    t_hi, t_lo = obj.draw_times(4000, path, ctx({}))
    grid = path.time_grid(10).flip(0).to(t_hi.dtype)
    idx = torch.searchsorted(grid, t_hi)
    assert torch.equal(grid[idx], t_hi) and torch.equal(grid[idx - 3], t_lo)
    assert set(idx.tolist()) == set(range(3, 11))
    if isinstance(path, EDM):  # a Karras grid: the smallest non-zero training sigma is small (Song et al., 2023)
        assert float(grid[-1]) == 80.0 and float(grid[1]) < 0.02
        assert float(path.time_grid(50)[-2]) < 0.005  # the default 50 intervals (uniform in sigma: 1.6)


@pytest.mark.parametrize("phases,distance", [(1, "l2"), (1, "pseudo_huber"), (2, "l2")])
def test_consistency_loss_is_the_distance_to_the_target_after_one_guided_teacher_step(phases, distance):
    path = RectifiedFlow()
    cls = PhasedConsistencyDistillation if phases > 1 else ConsistencyDistillation
    kw = {"num_phases": phases} if phases > 1 else {}
    obj = cls(
        num_intervals=10,
        skip=2,
        guidance_scale=W,
        distance=distance,
        boundary_scale=10.0,
        **({"huber_c": 0.1} if distance == "pseudo_huber" else {}),
        **kw,
    )
    student = Recorder(Denoiser(ConsistencyNet(path, M, C, W, 0.1), path, "x0"))
    target = Recorder(Denoiser(ConsistencyNet(path, M, C, W, -0.1), path, "x0"))
    b = batch()
    loss = obj.loss("student", b, ctx({"student": student, "teacher": teacher(path), "target": target})).loss
    ((x_hi, t_hi, *_),), ((x_lo, t_lo, *_),) = student.calls, target.calls
    edge = obj.lower_edge(path, t_hi) if phases > 1 else torch.zeros_like(t_hi)
    torch.testing.assert_close(t_lo, torch.maximum(t_hi - 0.2, edge))
    x0 = posterior_x0(path, x_hi, t_hi, M + W * b.cond[:, None], C)  # the guided teacher's DDIM step
    eps = (x_hi - (1 - t_hi)[:, None] * x0) / t_hi[:, None]
    torch.testing.assert_close(x_lo, path.add_noise(x0, eps, t_lo))

    def jump(net, x, t):
        tau = (10.0 * t)[:, None]
        f = 0.25 / (tau**2 + 0.25) * x + tau / torch.sqrt(tau**2 + 0.25) * net(x, t, b.cond).x0
        eps = (x - expand_like(path.alpha(t), x) * f) / expand_like(path.sigma(t), x).clamp_min(1e-12)
        return torch.where(expand_like(edge > 0, x).bool(), path.add_noise(f, eps, edge), f)

    mse = (jump(student.inner, x_hi, t_hi) - jump(target.inner, x_lo, t_lo)).pow(2).mean(1)
    expected = mse if distance == "l2" else torch.sqrt(mse + 0.01) - 0.1
    torch.testing.assert_close(loss, expected.mean())
    if phases > 1:
        assert (edge > 0).any() and (edge == 0).any()
        torch.testing.assert_close(
            obj.lower_edge(path, torch.tensor([0.3, 0.5, 0.6, 1.0])), torch.tensor([0.0, 0.0, 0.5, 0.5])
        )
