"""Causal streaming video: block causality, KV cache = recomputation, bounded rolling cache, and what each
causal objective feeds the student as context."""

from __future__ import annotations

import pytest
import torch

from modalities.video import VideoDiT, VideoModality, generate_stream
from unidistill.causal import CausalNetwork, causal_network
from unidistill.denoiser import Denoiser
from unidistill.objectives import CausVid, Context, DiffusionForcing, SelfForcing, TeacherForcing, make_context
from unidistill.objectives.rollout import rollout
from unidistill.paths import RectifiedFlow

FRAMES, CHUNK, SIZE = 8, 2, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(causal: bool = True, window: int | None = None, seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    net = VideoDiT(size=SIZE, patch=4, dim=16, depth=2, heads=2, cond_dim=8, chunk_size=CHUNK, causal=causal,
                   cache_window=window)
    for p in net.parameters():  # zero-initialised heads/gates would make every output trivially equal
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def tiny_denoiser(**kw) -> Denoiser:
    return Denoiser(tiny_net(**kw), RectifiedFlow(), "flow")


def clip(n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, FRAMES, 1, SIZE, SIZE, generator=g), torch.rand(n, FRAMES, generator=g),
            torch.randn(n, 8, generator=g))


def test_video_dit_is_a_causal_network():
    assert isinstance(tiny_net(), CausalNetwork)
    assert causal_network(tiny_denoiser()) is not None
    with pytest.raises(TypeError, match="CausalNetwork"):
        causal_network(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_block_causal_chunk_output_is_unchanged_when_later_frames_change(chunk):
    x, t, c = clip()
    for causal in (True, False):
        net = tiny_net(causal=causal)
        net.chunk_size = chunk
        y = net(x, t, c)
        x2, t2 = x.clone(), t.clone()
        cut = chunk * 1  # every frame from the second chunk on is changed
        x2[:, cut:] = torch.randn_like(x2[:, cut:])
        t2[:, cut:] = torch.rand_like(t2[:, cut:])
        y2 = net(x2, t2, c)
        if causal:
            assert torch.equal(y[:, :cut], y2[:, :cut])  # exact: no information flows backwards
            assert not torch.allclose(y[:, cut:], y2[:, cut:])
        else:
            assert not torch.allclose(y[:, :cut], y2[:, :cut])  # the bidirectional teacher does see the future


def _randn(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=g)


@pytest.mark.parametrize("context_time", [0.0, 0.2])
def test_kv_cache_generation_equals_full_recomputation(context_time):
    den = tiny_denoiser(window=None)
    noise, _, c = clip()
    grid = [1.0, 0.6, 0.3, 0.0]
    cached, nfe_cached = rollout(den, noise, c, grid, _randn(5), context_time=context_time)
    full, _ = rollout(den, noise, c, grid, _randn(5), context_time=context_time, recompute=True)
    assert torch.allclose(cached, full, atol=1e-5), float((cached - full).abs().max())
    assert nfe_cached == (FRAMES // CHUNK) * 3 + (FRAMES // CHUNK - 1)  # 3 steps per chunk + one cache write each
    assert den.network.cached_frames() == 0  # the rollout clears its cache


def test_chunk_call_reuses_cached_keys_instead_of_recomputing_them():
    den = tiny_denoiser(window=None)
    net = den.network
    x, _, c = clip()
    net.reset_cache()
    with net.storing():
        den(x[:, :CHUNK], torch.zeros(2), c)
    calls = []
    hook = net.embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    den(x[:, CHUNK:2 * CHUNK], torch.full((2,), 0.5), c)
    hook.remove()
    assert calls == [2 * CHUNK]  # only the new chunk's frames are embedded
    net.clear_cache()


def test_rolling_cache_memory_is_bounded_over_ten_times_the_training_length():
    window = 2
    den = tiny_denoiser(window=window)
    net = den.network
    _, _, c = clip()
    sizes, frames = [], 0
    g = torch.Generator().manual_seed(0)
    for frame in generate_stream(c, den, steps=2, generator=g, max_frames=10 * FRAMES):
        frames += 1
        assert torch.isfinite(frame).all() and frame.shape == (2, 1, SIZE, SIZE)
        sizes.append((net.cached_frames(), net.cache_nbytes()))
    assert frames == 10 * FRAMES
    assert max(s for s, _ in sizes) == window * CHUNK
    full = sizes[-1][1]
    assert full > 0 and max(b for _, b in sizes) == full  # never more bytes than a full window
    unbounded = tiny_denoiser(window=None)
    for _ in generate_stream(c, unbounded, steps=1, max_frames=4 * FRAMES):
        pass
    assert unbounded.network.cached_frames() == 0  # cleared when the stream ends


def test_stream_positions_continue_past_the_training_length():
    den = tiny_denoiser(window=2)
    _, _, c = clip()
    frames = list(generate_stream(c, den, steps=1, generator=torch.Generator().manual_seed(0), max_frames=3 * FRAMES))
    late = torch.stack(frames[-FRAMES:], 1)
    assert late.shape == (2, FRAMES, 1, SIZE, SIZE) and torch.isfinite(late).all()


def _context(den: Denoiser, teacher: Denoiser, roles: dict, rank: int = 0) -> Context:
    return make_context({"student": den, "teacher": teacher, **roles}, (FRAMES, 1, SIZE, SIZE), seed=7, rank=rank)


def _record_context(net: VideoDiT) -> tuple[list[torch.Tensor], object]:
    stored: list[torch.Tensor] = []
    hook = net.register_forward_hook(lambda m, i, o: stored.append(i[0].detach().clone()) if m._store else None)
    return stored, hook


def _objective_setup(objective):
    modality = VideoModality.tiny()
    torch.manual_seed(0)
    teacher = modality.load_teacher()
    student = modality.build_student(teacher)
    roles = objective.build_roles(student, teacher)
    batch = modality.example_batch(2, torch.Generator().manual_seed(3))
    return modality, teacher, student, roles, batch


def test_self_forcing_rollout_uses_the_students_own_outputs_as_context():
    objective = SelfForcing(student_steps=2)
    _, teacher, student, roles, batch = _objective_setup(objective)
    stored, hook = _record_context(student.network)
    x, _ = objective.generate(batch, _context(student, teacher, roles), grad=True)
    hook.remove()
    chunks = x.detach().split(2, dim=1)
    assert len(stored) == len(chunks) - 1
    for ctx_chunk, own in zip(stored, chunks, strict=False):
        assert torch.equal(ctx_chunk, own)  # the cache holds what the student generated ...
    gt = batch.x0.split(2, dim=1)
    assert not any(torch.allclose(s, g, atol=1e-2) for s, g in zip(stored, gt, strict=False))  # ... not the data
    assert x.requires_grad
    batch.x0 = torch.randn_like(batch.x0)  # the rollout never reads ground truth
    again, _ = objective.generate(batch, _context(student, teacher, roles), grad=False)
    assert torch.equal(again, x.detach())


def test_teacher_forcing_context_is_ground_truth():
    objective = TeacherForcing(student_steps=2)
    _, teacher, student, roles, batch = _objective_setup(objective)
    stored, hook = _record_context(student.network)
    objective.generate(batch, _context(student, teacher, roles), grad=False)
    hook.remove()
    for ctx_chunk, gt in zip(stored, batch.x0.split(2, dim=1), strict=False):
        assert torch.equal(ctx_chunk, gt)


def test_self_forcing_exit_step_comes_from_the_shared_generator():
    objective = SelfForcing(student_steps=4)
    den = tiny_denoiser()
    picks = set()
    for rank_seed in range(5):
        ctx = _context(den, den, {}, rank=rank_seed)
        picks.add(objective.exit_step(ctx))
    assert len(picks) == 1  # every rank's own generator differs, the exit step does not
    draws = {SelfForcing(student_steps=4).exit_step(make_context({}, (1,), seed=s)) for s in range(40)}
    assert draws == {0, 1, 2, 3}
    assert SelfForcing(student_steps=4, last_step_only=True).exit_step(_context(den, den, {})) == 3


def test_self_forcing_gradient_reaches_the_student_only_through_exit_calls():
    objective = SelfForcing(student_steps=2)
    _, teacher, student, roles, batch = _objective_setup(objective)
    ctx = _context(student, teacher, roles)
    out = objective.loss("student", batch, ctx)
    out.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("cls", [CausVid, SelfForcing, TeacherForcing, DiffusionForcing])
def test_causal_objectives_refuse_non_causal_modalities(cls):
    assert "causal" in cls.tiny(None).unsupported_reason((8,), causal=False)
    assert cls.tiny(None).unsupported_reason((FRAMES, 1, SIZE, SIZE), causal=True) is None


def test_causvid_regression_phase_then_dmd_plan():
    objective = CausVid(regression_iterations=3, fake_updates_per_student=2)
    assert [objective.plan(i) for i in range(6)] == [["student"]] * 3 + [["fake_score", "student"], ["fake_score"],
                                                                         ["fake_score", "student"]]


def test_causvid_regression_input_has_one_noise_level_per_chunk():
    objective = CausVid(student_steps=4, regression_iterations=1, regression_teacher_steps=4)
    _, teacher, student, roles, batch = _objective_setup(objective)
    seen = []
    hook = student.network.register_forward_hook(lambda m, i, o: seen.append(i[1].detach().clone()))
    out = objective.ode_regression_loss(batch, _context(student, teacher, roles))
    hook.remove()
    t = seen[-1]  # [B, T] network time of the student's call
    assert t.shape == (2, FRAMES) and torch.isfinite(out.loss)
    per_chunk = t.reshape(2, FRAMES // 2, 2)
    assert torch.equal(per_chunk[..., 0], per_chunk[..., 1])  # constant within a chunk


@pytest.mark.parametrize("name", ["CausVid", "SelfForcing", "TeacherForcing", "DiffusionForcing"])
def test_tiny_video_cells_run_a_real_objective_step(name):
    from unidistill.regress import build_matrix, run_fast_cell

    (cell,) = [c for c in build_matrix(["video"], [name]) if c.objective == name]
    assert cell.status == "ready"
    facts = run_fast_cell(cell, iterations=3, batch_size=2)
    assert facts


def test_example_batch_is_deterministic_in_its_generator():
    m = VideoModality.tiny()
    a = m.example_batch(3, torch.Generator().manual_seed(0))
    b = m.example_batch(3, torch.Generator().manual_seed(0))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.cond, b.cond)
    assert a.x0.shape == (3, *m.latent_shape) and m.time_shape(3) == (3, m.frames)
