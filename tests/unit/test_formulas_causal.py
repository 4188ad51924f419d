"""The causal objectives' formulas (docs/formulations.md §9) on an exact frame-wise Gaussian teacher behind the
``CausalNetwork`` contract: diffusion forcing's per-chunk times and target, CausVid's ODE regression (each chunk at
its own grid state of the teacher's trajectory), and teacher forcing's ground-truth context."""

from __future__ import annotations

import torch
from support.gaussian import CausalGaussianNet, Recorder, flow_map, posterior_x0

from unidistill.denoiser import Denoiser, freeze
from unidistill.objectives import Batch, CausVid, DiffusionForcing, TeacherForcing, make_context
from unidistill.paths import RectifiedFlow

M, C, W = 0.3, 0.5, 2.0
FRAMES, ELEMS, B = 6, 3, 8
SHAPE = (FRAMES, ELEMS)
F64 = torch.float64
RF = RectifiedFlow()


def null(cond):
    return None if cond is None else torch.zeros_like(cond)


def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(B, generator=g, dtype=F64)
    return Batch(M + cond[:, None, None] + C * torch.randn(B, *SHAPE, generator=g, dtype=F64), cond)


def roles(student_m=-0.2, student_c=0.9):
    teacher = freeze(Denoiser(CausalGaussianNet(RF, M, C), RF, "x0"))
    student = Recorder(Denoiser(CausalGaussianNet(RF, student_m, student_c), RF, "x0"))
    return {"student": student, "teacher": teacher}


def ctx(r):
    return make_context(r, SHAPE, seed=1, null_condition=null, dtype=F64)


def per_chunk(t):
    return t.reshape(B, FRAMES // 2, 2)


def test_diffusion_forcing_draws_one_time_per_chunk_and_regresses_the_networks_own_target():
    r = roles()
    b = batch()
    loss = DiffusionForcing().loss("student", b, ctx(r)).loss
    ((_, t, _, _, raw),) = r["student"].calls
    assert t.shape == (B, FRAMES)
    assert torch.equal(per_chunk(t)[..., 0], per_chunk(t)[..., 1])  # constant within a chunk of 2 frames
    assert (per_chunk(t)[:, 0, 0] != per_chunk(t)[:, 1, 0]).all()  # independent across chunks
    torch.testing.assert_close(loss, (raw - b.x0).pow(2).mean())  # x0 prediction: the target is the data


def test_causvid_regression_puts_each_chunk_at_its_own_state_of_the_teachers_trajectory():
    obj = CausVid(student_steps=2, regression_iterations=1, regression_teacher_steps=64, guidance_scale=W)
    r = roles()
    c = ctx(r)
    z = torch.randn(B, *SHAPE, generator=torch.Generator().set_state(c.generator.get_state()), dtype=F64)
    b = batch()
    loss = obj.loss("student", b, c).loss
    ((x_in, t, *_),) = r["student"].calls
    assert set(t.flatten().tolist()) == {1.0, 0.5} and torch.equal(per_chunk(t)[..., 0], per_chunk(t)[..., 1])
    mean = M + W * b.cond[:, None, None]
    one = torch.ones(B, dtype=F64)
    torch.testing.assert_close(x_in, flow_map(RF, z, one[:, None].expand(B, FRAMES), t, mean, C), atol=5e-4, rtol=0)
    y = flow_map(RF, z, one, torch.zeros(B, dtype=F64), mean, C)
    expected = (posterior_x0(RF, x_in, t, -0.2 + b.cond[:, None, None], 0.9) - y).pow(2).mean()
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-3)


def test_teacher_forcing_writes_the_clean_ground_truth_chunks_as_context():
    obj = TeacherForcing(student_steps=2)
    r = roles()
    b = batch()
    x, _ = obj.generate(b, ctx(r), grad=False)
    net = r["student"].inner.network
    assert len(net.stored) == FRAMES // 2
    for k, stored in enumerate(net.stored):
        assert torch.equal(stored, b.x0[:, 2 * k : 2 * k + 2])
    assert not torch.allclose(x[:, :2], b.x0[:, :2])
