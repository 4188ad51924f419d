"""The engine: the one step function that training, the regression harness, benchmarks and tests run."""

import pytest
import torch

from unidistill.batch import Batch
from unidistill.engine import Engine, LRSchedule
from unidistill.objectives.base import LossOutput, Objective, make_context, update_roles
from unidistill.seeds import mix_seed


class Recorder(Objective):
    """Two roles with linear losses; records what it is asked and what the gradients were when asked."""

    trainable_roles = ("student", "critic")
    target_decay = 0.5

    def __init__(self, plan=("critic", "critic", "student"), nan_at=None):
        self._plan, self.nan_at, self.calls = list(plan), nan_at, []

    def build_roles(self, student, teacher):
        return {"critic": torch.nn.Linear(2, 1, bias=False)}

    def plan(self, iteration):
        return list(self._plan)

    def _loss(self, update, ctx):
        grads = {r: ctx.roles[r].weight.grad for r in ("student", "critic")}
        self.calls.append((update, ctx.iteration, {r: None if g is None else g.clone() for r, g in grads.items()}))
        value = sum(ctx.roles[r].weight.sum() for r in update_roles(update))
        if self.nan_at == (ctx.iteration, update):
            value = value * float("nan")
        return LossOutput(value, {"value": value.detach()})

    def student_loss(self, batch, ctx):
        return self._loss("student", ctx)

    def critic_loss(self, batch, ctx):
        # a loss that also reaches the student's parameters, as a GAN term through a shared network does
        out = self._loss("critic", ctx)
        return LossOutput(out.loss + 0.0 * ctx.roles["student"].weight.sum(), out.logs)

    def student_critic_loss(self, batch, ctx):
        return self._loss("student+critic", ctx)


def _engine(objective, ema=0.9):
    torch.manual_seed(0)
    return Engine(objective, torch.nn.Linear(2, 1, bias=False), latent_shape=(2,), seed=3, ema_decay=ema)


def _sgd(engine, lr=0.1):
    return {r: torch.optim.SGD(engine.role_module(r).parameters(), lr=lr) for r in engine.objective.trainable_roles}


def test_the_plan_runs_in_order_and_each_update_starts_with_clean_gradients():
    obj = Recorder()
    engine = _engine(obj)
    before = engine.role_module("critic").weight.detach().clone()
    engine.step(Batch(torch.zeros(1, 2)), 0, _sgd(engine))
    assert [c[0] for c in obj.calls] == ["critic", "critic", "student"]
    # a loss reaching another role's parameters leaves nothing behind for that role's own update
    assert all(g is None for _, _, grads in obj.calls for g in grads.values())
    # two SGD steps of the critic on d(sum w)/dw = 1
    assert torch.allclose(engine.role_module("critic").weight, before - 0.2)


def test_a_joint_update_steps_every_named_role_from_one_backward():
    obj = Recorder(plan=["student+critic"])
    engine = _engine(obj)
    s0, c0 = (engine.role_module(r).weight.detach().clone() for r in ("student", "critic"))
    engine.step(Batch(torch.zeros(1, 2)), 0, _sgd(engine))
    assert torch.allclose(engine.student.weight, s0 - 0.1) and torch.allclose(engine.role_module("critic").weight,
                                                                              c0 - 0.1)


def test_averages_follow_the_student_only_after_a_student_step():
    obj = Recorder(plan=["critic"])
    engine = _engine(obj, ema=0.9)
    opts = _sgd(engine)
    engine.step(Batch(torch.zeros(1, 2)), 0, opts)
    assert engine.ema.n_averaged.item() == 0 and engine.target.n_averaged.item() == 0
    obj._plan = ["student"]
    engine.step(Batch(torch.zeros(1, 2)), 1, opts)  # the first update copies the student
    assert torch.equal(engine.ema.module.weight, engine.student.weight)
    previous = engine.ema.module.weight.detach().clone()
    engine.step(Batch(torch.zeros(1, 2)), 2, opts)
    assert torch.allclose(engine.ema.module.weight, 0.9 * previous + 0.1 * engine.student.weight)
    assert torch.allclose(engine.target.module.weight, 0.5 * previous + 0.5 * engine.student.weight)


def test_accumulation_scales_losses_and_steps_only_when_applied():
    obj = Recorder(plan=["student"])
    engine = _engine(obj, ema=None)
    opts = _sgd(engine)
    w0 = engine.student.weight.detach().clone()
    engine.step(Batch(torch.zeros(1, 2)), 0, opts, accumulate=2, apply=False)
    assert torch.equal(engine.student.weight, w0)
    assert torch.allclose(engine.student.weight.grad, torch.full((1, 2), 0.5))
    engine.step(Batch(torch.zeros(1, 2)), 0, opts, accumulate=2, apply=True)
    assert torch.allclose(engine.student.weight, w0 - 0.1) and engine.student.weight.grad is None


def test_gradient_clipping_bounds_each_roles_update():
    obj = Recorder(plan=["student"])
    engine = _engine(obj, ema=None)
    w0 = engine.student.weight.detach().clone()
    engine.step(Batch(torch.zeros(1, 2)), 0, _sgd(engine, lr=1.0), grad_clip=0.5)
    assert torch.allclose((w0 - engine.student.weight).norm(), torch.tensor(0.5))


def test_a_non_finite_loss_names_the_update_and_calls_the_rescue_first():
    obj = Recorder(nan_at=(4, "student"))
    engine = _engine(obj)
    rescued = []
    with pytest.raises(FloatingPointError, match=r"Recorder, update 'student', term\(s\) \['loss', 'value'\], at "
                                                 r"iteration 4"):
        engine.step(Batch(torch.zeros(1, 2)), 4, _sgd(engine), on_nonfinite=lambda: rescued.append(True))
    assert rescued == [True]


def test_contexts_are_seeded_by_seed_iteration_and_rank():
    engine = _engine(Recorder())
    a, b = engine.context(7), engine.context(7)
    assert torch.equal(a.randn((4,)), b.randn((4,)))
    other_rank, other_it = engine.context(7, rank=1), engine.context(8)
    shared = [engine.context(7, rank=r).shared_generator.initial_seed() for r in (0, 1)]
    assert shared[0] == shared[1] == mix_seed(3, 7, -1)
    assert a.generator.initial_seed() == mix_seed(3, 7, 0) != other_rank.generator.initial_seed()
    assert other_it.generator.initial_seed() == mix_seed(3, 8, 0)
    assert a.seed(5, 6) == mix_seed(3, 5, 6) and a.seed(5, 6) != a.seed(6, 5)


def test_context_roles_hold_teacher_and_target_but_not_the_ema():
    engine = Engine(Recorder(), torch.nn.Linear(2, 1), torch.nn.Linear(2, 1), latent_shape=(2,), ema_decay=0.9)
    assert set(engine.roles()) == {"student", "critic", "teacher", "target"}
    ctx = make_context(engine.roles(), (2,), seed=0)
    assert ctx.teacher is engine.teacher and ctx.roles["target"] is engine.target.module


def test_an_unknown_update_is_refused_with_the_roles():
    with pytest.raises(ValueError, match=r"no update 'fake'.*\['student', 'critic'\]"):
        Recorder().loss("fake", Batch(torch.zeros(1, 2)), make_context({}, (2,)))


def test_learning_rates_are_base_times_warmup_cosine_and_the_objectives_factor():
    class Halved(Recorder):
        def lr_factor(self, iteration):
            return 0.5

    engine = _engine(Halved())
    opts = engine.make_optimizers(1e-2, {"critic": 1e-3})
    schedule = LRSchedule(warmup=10, decay=100, min_ratio=0.1)
    assert schedule.factor(0) == pytest.approx(0.1) and schedule.factor(9) == pytest.approx(1.0)
    assert schedule.factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.factor(110) == pytest.approx(0.1) and schedule.factor(10_000) == pytest.approx(0.1)
    engine.set_learning_rates(opts, 60, schedule)
    assert opts["student"].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.55 * 0.5)
    assert opts["critic"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.55 * 0.5)


def test_batches_of_one_accumulation_window_draw_their_own_noise():
    engine = _engine(Recorder())
    first, second = engine.context(3, micro=0), engine.context(3, micro=1)
    assert not torch.equal(first.randn((4,)), second.randn((4,)))
    assert engine.context(3, rank=0, micro=1).shared_generator.initial_seed() == \
        engine.context(3, rank=1, micro=1).shared_generator.initial_seed()
    assert first.generator.initial_seed() == mix_seed(3, 3, 0)  # no accumulation: the draws are unchanged
