"""Trajectory-family objectives: contract checks on three latent shapes plus objective-specific identities."""

from __future__ import annotations

import pytest
import torch
from support.context import make_batch, make_ctx, make_engine, make_roles, same_state, snapshot
from support.nets import SHAPES

from unidistill.objectives.base import update_roles
from unidistill.objectives.consistency import ConsistencyDistillation
from unidistill.objectives.phased import PhasedConsistencyDistillation
from unidistill.objectives.progressive import ProgressiveDistillation, two_step_target
from unidistill.objectives.reflow import Reflow
from unidistill.objectives.trajectory import TrajectoryRegression
from unidistill.paths import VPCosine
from unidistill.solvers import ode_step

# (name, factory, iterations to exercise)
CASES = {
    "phased": (lambda: PhasedConsistencyDistillation(num_phases=2, num_intervals=8, guidance_range=(1.0, 3.0)), [0]),
    "progressive": (lambda: ProgressiveDistillation(teacher_steps=8, phase_length=1), [0, 1, 5]),
    "progressive_guided": (
        lambda: ProgressiveDistillation(teacher_steps=4, phase_length=1, guidance_range=(1.0, 3.0),
                                        guidance_distill_iterations=1), [0, 1, 2],
    ),
    "regression": (lambda: TrajectoryRegression(student_steps=2, teacher_steps=4), [0]),
    "regression_rollout": (lambda: TrajectoryRegression(student_steps=2, teacher_steps=4, mode="rollout"), [0]),
    "reflow": (lambda: Reflow(rounds=1, round_length=1, distill_steps=2, coupling_steps=3), [0, 1]),
}


def extra_cases():
    from unidistill.objectives.flow_map import FlowMapDistillation
    from unidistill.objectives.scm import ContinuousConsistency

    return {
        "scm": (lambda: ContinuousConsistency(tangent_warmup=2), [0, 1]),
        "scm_fd": (lambda: ContinuousConsistency(tangent="finite_difference", adaptive_weighting=False), [0]),
        "flow_map": (lambda: FlowMapDistillation(), [0]),
    }


try:
    CASES.update(extra_cases())
except ImportError:  # pragma: no cover - modules still being written
    pass


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", sorted(CASES))
def test_objective_contract(case, shape):
    factory, iterations = CASES[case]
    objective = factory()
    roles = make_roles(target=False)
    engine, opts = make_engine(objective, roles, shape)
    teacher_before = snapshot(roles["teacher"])
    trainable = {r: roles[r] for r in objective.trainable_roles}
    frozen = {r: m for r, m in roles.items() if r not in trainable}
    batch = make_batch(shape)
    for it in iterations:
        # gradients reach only trainable roles
        for update in objective.plan(it):
            out = objective.loss(update, batch, make_ctx(roles, shape, iteration=it))
            assert torch.isfinite(out.loss), (case, it, update)
            out.loss.backward()
            for role in update_roles(update):
                grads = [p.grad for p in roles[role].parameters() if p.requires_grad]
                assert any(g is not None and g.abs().sum() > 0 for g in grads), (case, it, role)
            for name, m in frozen.items():
                assert all(p.grad is None for p in m.parameters()), (case, name)
            for m in trainable.values():
                m.zero_grad(set_to_none=True)
        before = snapshot(roles["student"])
        logs = engine.step(batch, it, opts)
        assert all(torch.isfinite(v) for v in logs.values()), logs
        assert not same_state(before, snapshot(roles["student"]))
    assert same_state(teacher_before, snapshot(roles["teacher"]))


# --- phased consistency ----------------------------------------------------------------------
@pytest.mark.parametrize("guided", [False, True])
def test_phased_single_phase_equals_consistency_distillation(guided):
    kw = dict(num_intervals=10, skip=2, **({"guidance_range": (1.0, 4.0)} if guided else {"guidance_scale": 2.0}))
    shape = (3, 8, 8)
    roles = make_roles()
    batch = make_batch(shape)
    a = ConsistencyDistillation(**kw).loss("student", batch, make_ctx(roles, shape, seed=7))
    b = PhasedConsistencyDistillation(num_phases=1, **kw).loss("student", batch, make_ctx(roles, shape, seed=7))
    assert torch.equal(a.loss, b.loss)


def test_phased_edges_and_sampling_visits_edges():
    obj = PhasedConsistencyDistillation(num_phases=4, num_intervals=8)
    roles = make_roles()
    path = roles["student"].path
    t = torch.tensor([0.125, 0.25, 0.26, 0.5, 0.75, 1.0])
    assert torch.allclose(obj.lower_edge(path, t), torch.tensor([0.0, 0.0, 0.25, 0.25, 0.5, 0.75]))
    # a DDIM step of the sampling model from t to the lower edge is the phase jump, boundary is identity
    f = obj.sampling_model(roles["student"])
    x = torch.randn(4, 8)
    tt = torch.full((4,), 0.5)
    assert torch.allclose(ode_step(f, x, tt, tt, None, "ddim"), x, atol=1e-5)


# --- progressive distillation ------------------------------------------------------------------
@pytest.mark.parametrize("path", [None, VPCosine()], ids=["rf", "vp_cosine"])
def test_progressive_target_is_two_teacher_ddim_steps(path):
    shape = (4, 2, 6, 6)
    roles = make_roles(path=path, prediction="v" if path is not None else "flow")
    teacher, p = roles["teacher"], roles["teacher"].path
    obj = ProgressiveDistillation(teacher_steps=8)
    ctx = make_ctx(roles, shape)
    t, t_mid, t_pp = obj.grid_times(p, 4, 5, ctx)
    z_t = torch.randn(5, *shape)
    target = obj.target(teacher, z_t, t, t_mid, t_pp, None, None)
    with torch.no_grad():
        two = ode_step(teacher, ode_step(teacher, z_t, t, t_mid, None, "ddim"), t_mid, t_pp, None, "ddim")
        # one DDIM step of a model predicting x0 = target lands on the two-step result
        a, s = p.alpha(t).reshape(-1, 1, 1, 1, 1), p.sigma(t).reshape(-1, 1, 1, 1, 1)
        eps = (z_t - a * target) / s
        one = p.add_noise(target, eps, t_pp)
    assert torch.allclose(one, two, atol=1e-5, rtol=1e-5)
    assert torch.equal(two_step_target(p, z_t, t, two, t_pp), target)


def test_progressive_schedule_and_phase_teacher_checkpoint():
    obj = ProgressiveDistillation(teacher_steps=64, phase_length=10)
    assert [obj.student_steps(i) for i in (0, 9, 10, 25, 49, 50, 1000)] == [32, 32, 16, 8, 2, 1, 1]
    roles = make_roles(target=False)
    make_engine(obj, roles, (8,))
    pt = roles["phase_teacher"]
    assert not any(p.requires_grad for p in pt.parameters())
    ctx = make_ctx(roles, (8,), iteration=10)
    obj.loss("student", make_batch((8,)), ctx)
    assert int(pt.phase) == 1
    assert same_state(snapshot(pt.denoiser), snapshot(roles["student"]))
    # the phase teacher is an ordinary module: its weights and phase round-trip through a state dict
    state = pt.state_dict()
    assert "phase" in state and any(k.startswith("denoiser.") for k in state)


def test_progressive_phase_lr_decay_restarts_each_phase_and_reaches_the_optimizer():
    from modalities.gmm import GmmModality
    from unidistill.module import DistillationModule

    plain = ProgressiveDistillation(teacher_steps=8, phase_length=10)
    assert [plain.lr_factor(i) for i in (0, 9, 10, 500)] == [1.0, 1.0, 1.0, 1.0]
    obj = ProgressiveDistillation(teacher_steps=8, phase_length=10, phase_lr_decay=True,
                                  guidance_range=(1.0, 2.0), guidance_distill_iterations=5)
    # guided stage 1 (iterations 0-4) keeps the base rate; phases 0, 1, 2 then start at 5, 15, 25
    assert [obj.lr_factor(i) for i in (0, 4, 5, 10, 14, 15, 24, 25, 34, 35, 1000)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.5, 0.1, 1.0, 0.1, 1.0, 0.1, 0.0, 0.0])
    # the module multiplies it into its own warm-up / decay factor
    m = DistillationModule(GmmModality(hidden=8, depth=1), obj, lr_warmup_iterations=10)
    assert m.lr_factor(10) == pytest.approx(0.5) and m.lr_factor(4) == pytest.approx(0.5)


# --- trajectory regression ---------------------------------------------------------------------
def test_regression_asks_the_cache_for_its_interior_grid_only_when_it_reads_one():
    from unidistill.objectives import CausVid

    assert TrajectoryRegression(student_steps=4).cache_trajectory_steps == 4  # trajectory mode reads x_{t_j}
    assert TrajectoryRegression(student_steps=1).cache_trajectory_steps == 0  # noise -> sample only
    assert TrajectoryRegression(student_steps=4, mode="rollout").cache_trajectory_steps == 0  # rolls out itself
    assert CausVid(student_steps=4, regression_iterations=10).cache_trajectory_steps == 4
    assert CausVid(student_steps=4).cache_trajectory_steps == 0  # no ODE-regression stage


def test_regression_target_is_teacher_ode_solution_for_same_noise():
    from unidistill.solvers import sample

    shape = (3, 8, 8)
    roles = make_roles()
    obj = TrajectoryRegression(student_steps=1, teacher_steps=6, teacher_solver="heun")
    batch = make_batch(shape)
    ctx = make_ctx(roles, shape, seed=3)
    grid = roles["student"].path.time_grid(1)
    noise, cond, states = obj.pairs(batch, ctx, grid)
    ref = sample(roles["teacher"], noise, 6, cond, solver="heun").x
    assert torch.allclose(states[-1], ref, atol=1e-6)
    assert torch.equal(states[0], noise)


# --- reflow ------------------------------------------------------------------------------------
def test_reflow_couplings_reproduce_from_seed():
    shape = (3, 8, 8)
    obj = Reflow(coupling_steps=3, num_couplings=100, coupling_seed=5)
    roles = make_roles()
    ctx = make_ctx(roles, shape)
    ids = torch.tensor([3, 17, 42])
    a = obj.coupling_noise(ids, 0, shape, ctx)
    # a coupling's noise depends on the run's seed and its id, not on the iteration that draws it
    b = obj.coupling_noise(torch.tensor([42, 3]), 0, shape, make_ctx(roles, shape, iteration=99))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], obj.coupling_noise(ids, 0, shape, make_ctx(roles, shape, seed=99))[0])
    assert not torch.equal(a[0], obj.coupling_noise(ids, 1, shape, ctx)[0])  # stages draw fresh couplings
    batch = make_batch(shape, n=3)
    n1, x1, _ = obj.couplings(batch, make_ctx(roles, shape, seed=11), 0)
    n2, x2, _ = obj.couplings(batch, make_ctx(roles, shape, seed=11), 0)
    assert torch.equal(n1, n2) and torch.equal(x1, x2)


# --- sCM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8,), (3, 8, 8)], ids=["8", "3x8x8"])
def test_scm_jvp_tangent_matches_finite_difference(shape):
    from unidistill.objectives.scm import ContinuousConsistency

    torch.manual_seed(0)
    roles = make_roles()
    obj = ContinuousConsistency(fd_step=1e-3)
    student = roles["student"].double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    t = torch.tensor([0.3, 0.7, 1.0, 1.3], dtype=torch.float64)
    dxdt = torch.randn_like(x)
    jvp = obj.tangent_term(student, x, t, None, dxdt, "jvp")
    fd = obj.tangent_term(student, x, t, None, dxdt, "finite_difference")
    assert (jvp - fd).abs().max() < 1e-3 * max(1.0, float(jvp.abs().max()))
    # f = cos t x - sin t sigma_d F is the student's own x0 prediction (exact OnPath conversion)
    f = torch.cos(t).reshape(-1, *[1] * len(shape)) * x - torch.sin(t).reshape(-1, *[1] * len(shape)) * \
        obj.sigma_data * obj.F(student, x, t, None)
    from unidistill.denoiser import OnPath

    assert torch.allclose(f, OnPath(student, obj.trig)(x, t).x0, atol=1e-10)


def test_flow_map_identity_and_sampling():
    from unidistill.objectives.flow_map import FlowMapDistillation
    from unidistill.solvers import sample

    shape = (3, 8, 8)
    roles = make_roles()
    obj = FlowMapDistillation()
    student = roles["student"]
    x = torch.randn(4, *shape)
    t = torch.full((4,), 0.8)
    v = torch.randn_like(x)
    # at r = t the target is the teacher velocity itself
    assert torch.allclose(obj.target(student, x, t, t, None, v), v)
    model = obj.sampling_model(student)
    for steps in (1, 2, 5):
        out = sample(model, torch.randn(4, *shape), steps, None, solver=obj.student_solver)
        assert out.nfe == steps and torch.isfinite(out.x).all()
