"""Trajectory objectives (progressive distillation, reflow, trajectory regression), teacher training, and the EDM
path's time positions, pinned on exact Gaussian teachers (docs/formulations.md §1.5, §2, §6-§8).

Each loss is recomputed from its definition at the points where the objective queried the networks (recorded), with
the teacher's steps and ODE solutions in closed form; guidance is ``w != 1``.
"""

from __future__ import annotations

import pytest
import torch
from support.gaussian import GaussianTeacherNet, Recorder, flow_map, posterior_x0

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives import (
    DMD2,
    Batch,
    DenoisingObjective,
    ProgressiveDistillation,
    Reflow,
    TrajectoryRegression,
    make_context,
)
from unidistill.paths import EDM, RectifiedFlow, VPCosine, expand_like
from unidistill.solvers import sample

M, C, W = 0.3, 0.5, 2.0
SHAPE, B = (6,), 8
F64 = torch.float64


def null(cond):
    return None if cond is None else torch.zeros_like(cond)


def batch(n: int = B, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, generator=g, dtype=F64)
    return Batch(M + cond[:, None] + C * torch.randn(n, *SHAPE, generator=g, dtype=F64), cond)


def teacher(path):
    return Recorder(freeze(Denoiser(GaussianTeacherNet(path, M, C), path, "x0")))


def student(path, prediction="x0", m=-0.2, c=0.9):
    return Recorder(Denoiser(GaussianTeacherNet(path, m, c), path, prediction))


def ctx(roles, iteration=0, seed=1):
    return make_context(roles, SHAPE, seed=seed, iteration=iteration, null_condition=null, dtype=F64)


def ab(path, t, x):
    return expand_like(path.alpha(t), x), expand_like(path.sigma(t), x)


def ddim(path, x, t, s, mean):
    """One DDIM step of the exact teacher with data mean ``mean``."""
    x0 = posterior_x0(path, x, t, mean, C)
    a, sg = ab(path, t, x)
    return path.add_noise(x0, (x - a * x0) / sg, s)


# --- progressive distillation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [RectifiedFlow(), EDM()], ids=["rf", "edm"])
def test_progressive_queries_the_teacher_on_its_own_grid(path):
    obj = ProgressiveDistillation(teacher_steps=8)
    t, t_mid, t_pp = obj.grid_times(path, 4, 2000, ctx({}))
    teacher_grid, student_grid = path.time_grid(8).to(F64), path.time_grid(4).to(F64)
    i = torch.searchsorted(-teacher_grid, -t)
    assert torch.equal(teacher_grid[i], t) and (i % 2 == 0).all() and set(i.tolist()) == {0, 2, 4, 6}
    assert torch.equal(teacher_grid[i + 1], t_mid) and torch.equal(teacher_grid[i + 2], t_pp)
    assert torch.equal(student_grid[i // 2], t) and torch.equal(student_grid[i // 2 + 1], t_pp)
    if isinstance(path, EDM):  # on the Karras grid the teacher's point is far from the time midpoint
        assert ((t_mid - 0.5 * (t + t_pp)).abs() > 0.1 * (t - t_pp)).all()


@pytest.mark.parametrize("weighting", ["truncated_snr", "snr_plus_one", "none"])
@pytest.mark.parametrize("path", [RectifiedFlow(), VPCosine()], ids=["rf", "vp"])
def test_progressive_loss_makes_one_student_step_land_on_two_guided_teacher_steps(path, weighting):
    obj = ProgressiveDistillation(teacher_steps=8, guidance_scale=W, weighting=weighting)
    s, te, b = student(path), teacher(path), batch(32)
    loss = obj.loss("student", b, ctx({"student": s, "teacher": te, "phase_teacher": s})).loss
    ((z, t, *_),) = s.calls
    (z_c, t_c, *_), (_, t_u, *_), (z_mid, t_mid, *_), _ = te.calls  # conditional and null at t, then at t'
    assert torch.equal(z_c, z) and torch.equal(t_c, t) and torch.equal(t_u, t)
    grid = path.time_grid(8).to(F64)
    t_pp = grid[torch.searchsorted(-grid, -t) + 2]
    mean = M + W * b.cond[:, None]
    torch.testing.assert_close(z_mid, ddim(path, z, t, t_mid, mean))
    z_pp = ddim(path, z_mid, t_mid, t_pp, mean)
    (a, sg), (a2, s2) = ab(path, t, z), ab(path, t_pp, z)
    target = (z_pp - s2 / sg * z) / (a2 - s2 / sg * a)  # one DDIM step t -> t'' of x0 = target lands on z''
    torch.testing.assert_close(path.add_noise(target, (z - a * target) / sg, t_pp), z_pp)
    snr = (path.alpha(t) / path.sigma(t)) ** 2
    lam = {"truncated_snr": snr.clamp(1, 1e4), "snr_plus_one": (snr + 1).clamp_max(1e4), "none": torch.ones_like(t)}
    mse = (posterior_x0(path, z, t, -0.2 + b.cond[:, None], 0.9) - target).pow(2).mean(1)
    torch.testing.assert_close(loss, (lam[weighting] * mse).mean())
    assert (snr < 1).any() and (snr > 1).any()


def test_guided_progressive_stage_one_regresses_the_w_conditioned_student_on_the_guided_teacher():
    path = RectifiedFlow()
    obj = ProgressiveDistillation(teacher_steps=8, guidance_range=(1.5, 4.0), guidance_distill_iterations=3)
    s, te, b = student(path), teacher(path), batch()
    loss = obj.loss("student", b, ctx({"student": s, "teacher": te, "phase_teacher": s})).loss
    ((z, t, _, w, _),) = s.calls
    assert float(w.min()) >= 1.5 and float(w.max()) <= 4.0 and w.unique().numel() == B
    assert set(t.tolist()) <= set(path.time_grid(8).tolist()[:-1])
    target = posterior_x0(path, z, t, M + w[:, None] * b.cond[:, None], C)
    snr = ((1 - t) / t) ** 2
    mse = (posterior_x0(path, z, t, -0.2 + b.cond[:, None], 0.9) - target).pow(2).mean(1)
    torch.testing.assert_close(loss, (snr.clamp(1, 1e4) * mse).mean())


# --- reflow -----------------------------------------------------------------------------------------------------------
def couplings(obj, c, b):
    """Coupling noise (from its seeds) and the guided teacher's ODE sample from it, solved independently."""
    z = obj.coupling_noise(torch.arange(B), 0, SHAPE, c)
    exact = Denoiser(GaussianTeacherNet(RectifiedFlow(), M, C), RectifiedFlow(), "x0")
    return z, sample(exact, z, obj.coupling_steps, W * b.cond, solver="heun").x


def test_reflow_round_is_flow_matching_on_the_coupling_from_noise_to_sample():
    path = RectifiedFlow()
    obj = Reflow(rounds=1, round_length=10, coupling_steps=4, guidance_scale=W)
    s, b = student(path, "flow"), batch()
    c = ctx({"student": s, "teacher": teacher(path), "phase_teacher": s})
    z, x1 = couplings(obj, c, b)
    loss = obj.loss("student", b, c).loss
    ((x_t, t, _, _, raw),) = s.calls
    torch.testing.assert_close(x_t, (1 - t)[:, None] * x1 + t[:, None] * z)  # data at t = 0, noise at t = 1
    torch.testing.assert_close(loss, (raw - (z - x1)).pow(2).mean())  # the straight line's velocity


def test_reflow_distillation_regresses_the_students_x0_at_the_grid_on_the_coupling_sample():
    path = RectifiedFlow()
    obj = Reflow(rounds=0, distill_steps=2, coupling_steps=4, guidance_scale=W)
    s, b = student(path), batch()
    c = ctx({"student": s, "teacher": teacher(path), "phase_teacher": s})
    z, x1 = couplings(obj, c, b)
    loss = obj.loss("student", b, c).loss
    ((x_t, t, *_),) = s.calls
    assert set(t.tolist()) <= {1.0, 0.5}
    torch.testing.assert_close(x_t, (1 - t)[:, None] * x1 + t[:, None] * z)
    x0 = posterior_x0(path, x_t, t, -0.2 + b.cond[:, None], 0.9)
    torch.testing.assert_close(loss, (x0 - x1).pow(2).mean())


# --- trajectory regression -------------------------------------------------------------------------------------------
def test_trajectory_regression_sees_the_teachers_ode_state_at_its_grid_time_and_regresses_on_the_endpoint():
    path = RectifiedFlow()
    obj = TrajectoryRegression(student_steps=2, teacher_steps=64, teacher_solver="heun", guidance_scale=W)
    s, b = student(path), batch()
    c = ctx({"student": s, "teacher": teacher(path)})
    z = torch.randn(B, *SHAPE, generator=torch.Generator().set_state(c.generator.get_state()), dtype=F64)
    loss = obj.loss("student", b, c).loss
    ((x_in, t, *_),) = s.calls
    mean = M + W * b.cond[:, None]
    one = torch.ones(B, dtype=F64)
    assert set(t.tolist()) == {1.0, 0.5}
    torch.testing.assert_close(x_in, flow_map(path, z, one, t, mean, C), atol=5e-4, rtol=0)
    y = flow_map(path, z, one, torch.zeros(B, dtype=F64), mean, C)
    expected = (posterior_x0(path, x_in, t, -0.2 + b.cond[:, None], 0.9) - y).pow(2).mean()
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-3)


# --- teacher training -------------------------------------------------------------------------------------------------
def test_condition_dropout_replaces_the_condition_by_the_null_one_for_its_share():
    path = RectifiedFlow()
    s = student(path)
    obj = DenoisingObjective(cond_dropout=0.3)
    b = Batch(torch.zeros(4000, *SHAPE, dtype=F64), torch.ones(4000, dtype=F64))
    obj.loss("student", b, make_context({"student": s}, SHAPE, seed=1, null_condition=null, dtype=F64))
    ((_, _, cond, _, _),) = s.calls
    assert set(cond.tolist()) == {0.0, 1.0} and abs(float((cond == 0).double().mean()) - 0.3) < 0.03


# --- the EDM path -----------------------------------------------------------------------------------------------------
def test_dmd_draws_edm_noise_levels_on_the_karras_index_as_dmd2_does():
    """DMD2's EDM code draws the DM noise level at a uniform index in [2%, 98%] of the 1000-point Karras grid: median
    sigma 2.52 and 40% of the draws below sigma = 1 (uniform in sigma: median 40 and none below 1.6)."""
    sigma = DMD2().dm_time(EDM(), 100000, torch.Generator().manual_seed(0)).double()
    u_one = (1 - 0.002 ** (1 / 7)) / (80 ** (1 / 7) - 0.002 ** (1 / 7))  # Karras position of sigma = 1
    assert abs(float((sigma < 2.5152).double().mean()) - 0.5) < 0.01  # the median
    assert abs(float((sigma < 1).double().mean()) - (u_one - 0.02) / 0.96) < 0.01  # 40%
    lo = (0.002 ** (1 / 7) + 0.02 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert float(sigma.min()) >= lo * (1 - 1e-5) and float(sigma.max()) <= 80.0
