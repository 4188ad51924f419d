"""The policy modality: receding-horizon execution, normalisation, demo format, evaluation, errors, and the
regression-matrix hooks (``tiny()``/``example_batch``) through real objective steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tasks.reach_around as reach_around
from modalities.policy import (
    Episode,
    MeanRegression,
    Normalizer,
    PolicyModality,
    PolicyNetwork,
    RecedingHorizonExecutor,
    WindowDataset,
    load_demos,
    rollout,
    save_demos,
    wilson_interval,
)
from modalities.policy.evaluation import check_spaces
from unidistill.objectives import DMD2, ConsistencyDistillation, DenoisingObjective
from unidistill.solvers import sample

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingPlanner:
    """Returns plans whose action ``k`` of plan ``p`` is ``[p, k]`` and records every observation window."""

    def __init__(self, horizon: int) -> None:
        self.horizon, self.windows = horizon, []

    def __call__(self, window: np.ndarray) -> np.ndarray:
        self.windows.append(window.copy())
        p = len(self.windows) - 1
        plan = np.stack([np.full(window.shape[0], p), np.zeros(window.shape[0])], -1)[:, None].repeat(self.horizon, 1)
        plan[:, :, 1] = np.arange(self.horizon)
        return plan


def test_executor_feeds_the_observation_window_and_executes_exactly_n_action_steps():
    n_obs, n_act, horizon = 3, 4, 8
    planner = RecordingPlanner(horizon)
    ex = RecedingHorizonExecutor(planner, obs_dim=1, action_dim=2, horizon=horizon, n_obs_steps=n_obs,
                                 n_action_steps=n_act)
    actions = [ex.act(np.array([[float(t)], [100.0 + t]])) for t in range(10)]
    assert len(planner.windows) == 3 and ex.plans == 3  # re-plans at steps 0, 4, 8
    # the first window repeats the first observation; later windows end at the current step
    np.testing.assert_array_equal(planner.windows[0][:, :, 0], [[0, 0, 0], [100, 100, 100]])
    np.testing.assert_array_equal(planner.windows[1][:, :, 0], [[2, 3, 4], [102, 103, 104]])
    np.testing.assert_array_equal(planner.windows[2][:, :, 0], [[6, 7, 8], [106, 107, 108]])
    # executed actions are plan[n_obs - 1 : n_obs - 1 + n_act] of the current plan, in order
    got = np.stack(actions)[:, 0]
    expected = [[t // n_act, n_obs - 1 + t % n_act] for t in range(10)]
    np.testing.assert_array_equal(got, expected)


def test_executor_rejects_an_observation_of_the_wrong_size():
    ex = RecedingHorizonExecutor(RecordingPlanner(8), obs_dim=4, action_dim=2, horizon=8, n_obs_steps=2,
                                 n_action_steps=4)
    with pytest.raises(ValueError, match=r"shape \(1, 5\).*dimension 4"):
        ex.act(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="n_obs_steps - 1 \\+ n_action_steps <= horizon"):
        RecedingHorizonExecutor(RecordingPlanner(4), 4, 2, horizon=4, n_obs_steps=2, n_action_steps=4)


def test_training_windows_use_the_executor_alignment():
    obs = np.arange(6, dtype=np.float32)[:, None]
    act = np.stack([np.arange(6), -np.arange(6)], 1).astype(np.float32)
    data = WindowDataset([Episode(obs, act, np.zeros(6))], horizon=4, n_obs_steps=2)
    item = data[3]  # history ends at step 3, chunk starts at its first step (2)
    assert item["obs"][:, 0].tolist() == [2, 3] and item["action"][:, 0].tolist() == [2, 3, 4, 5]
    first, last = data[0], data[5]  # padded with the first observation / the last action
    assert first["obs"][:, 0].tolist() == [0, 0] and last["action"][:, 0].tolist() == [4, 5, 5, 5]


def test_normalisation_maps_ranges_to_unit_interval_and_round_trips():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(500, 3, generator=g) * torch.tensor([1.0, 10.0, 0.01]) + 5
    obs[:, 2] = 7.0  # a constant dimension is centred, not divided by zero
    act = torch.rand(500, 2, generator=g) * 4 - 1
    norm = Normalizer.from_data(obs, act)
    y = norm.normalize_action(act)
    assert torch.allclose(y.amin(0), torch.full((2,), -1.0)) and torch.allclose(y.amax(0), torch.ones(2))
    assert torch.equal(norm.normalize_obs(obs)[:, 2], torch.zeros(500))
    assert torch.allclose(norm.unnormalize_action(y), act, rtol=0, atol=1e-6)
    assert torch.allclose(norm.unnormalize_obs(norm.normalize_obs(obs)), obs, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="3 dimensions.*dimension 2"):
        norm.normalize_action(torch.zeros(4, 3))


def test_demo_file_round_trips_and_names_missing_keys(tmp_path):
    eps = [Episode(np.random.rand(n, 4).astype(np.float32), np.random.rand(n, 2).astype(np.float32),
                   np.random.rand(n).astype(np.float32)) for n in (5, 3)]
    back = load_demos(save_demos(tmp_path / "d.npz", eps))
    assert [len(e.actions) for e in back] == [5, 3]
    for a, b in zip(eps, back, strict=True):
        assert np.array_equal(a.observations, b.observations) and np.array_equal(a.actions, b.actions)
    np.savez(tmp_path / "bad.npz", observations=np.zeros((3, 4)), actions=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="rewards.*episode_ends"):
        load_demos(tmp_path / "bad.npz")


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_both_backbones_denoise_action_chunks(backbone):
    net = PolicyNetwork(4, 2, 8, 2, backbone, down_dims=(16, 32), width=32, depth=2)
    out = net(torch.randn(3, 8, 2), torch.tensor([0.0, 50.0, 99.0]), torch.randn(3, 2, 4))
    assert out.shape == (3, 8, 2)
    # the observation condition reaches the output
    assert not torch.allclose(out, net(torch.zeros(3, 8, 2) + 0, torch.tensor([0.0, 50.0, 99.0]), torch.randn(3, 2, 4)))
    with pytest.raises(ValueError, match=r"\[B, horizon=8, action_dim=2\]"):
        net(torch.randn(3, 6, 2), torch.zeros(3), torch.randn(3, 2, 4))


def _tiny_sampler(modality: PolicyModality, nfe: int = 2):
    teacher = modality.load_teacher()

    def sample_fn(cond, n, g):
        noise = torch.randn((n, *modality.latent_shape), generator=g)
        return sample(teacher, noise, nfe, cond, solver="ddim", generator=g).x

    return sample_fn


def test_a_fixed_seed_rollout_is_reproducible():
    m = PolicyModality.tiny()
    sample_fn = _tiny_sampler(m)

    def run(seed):
        agent = m.executor(m.planner(sample_fn, torch.Generator().manual_seed(seed)))
        return rollout(reach_around.make_env, agent, [0, 1, 2], 4, 2, max_steps=30)

    a, b, c = run(7), run(7), run(8)
    assert a.returns == b.returns and a.lengths == b.lengths
    assert a.returns != c.returns  # the planner's noise does drive the rollout


def test_environment_that_does_not_match_the_checkpoint_is_refused():
    env = reach_around.make_env()
    check_spaces(env, 4, 2)
    with pytest.raises(ValueError, match=r"observations of shape \(4,\).*expects \(10,\)"):
        check_spaces(env, 10, 2)
    with pytest.raises(ValueError, match=r"actions of shape \(2,\).*produces \(3,\)"):
        check_spaces(env, 4, 3)


def test_teacher_file_keeps_statistics_and_refuses_mismatched_dims(tmp_path):
    m = PolicyModality(obs_dim=4, action_dim=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
                       demos=reach_around.ReachAroundDemos(episodes=4))
    den = m.new_denoiser()
    files = m.export(den, tmp_path)
    loaded = PolicyModality(obs_dim=4, action_dim=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
                            teacher=str(files[0]))
    for key, value in m.normalizer.state_dict().items():
        assert torch.equal(loaded.normalizer.state_dict()[key], value)
    teacher = loaded.load_teacher()
    x, t, cond = torch.randn(2, 8, 2), torch.rand(2), torch.randn(2, 2, 4)
    assert torch.equal(teacher(x, t, cond).x0, den(x, t, cond).x0)
    wrong = PolicyModality(obs_dim=5, action_dim=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
                           teacher=str(files[0]))
    with pytest.raises(ValueError, match=r"obs_dim: weights 4, configured 5"):
        wrong.load_teacher()
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        PolicyModality(obs_dim=4, action_dim=2, teacher=str(tmp_path / "nowhere.safetensors")).load_teacher()


@pytest.mark.parametrize("objective", [DenoisingObjective(cond_dropout=0.0), MeanRegression(),
                                       ConsistencyDistillation(num_intervals=10), DMD2(fake_updates_per_student=1)],
                         ids=lambda o: type(o).__name__)
def test_tiny_modality_and_example_batch_train_with_a_real_objective(objective):
    from unidistill.module import DistillationModule

    m = PolicyModality.tiny()
    batch = m.example_batch(16, torch.Generator().manual_seed(0))
    again = m.example_batch(16, torch.Generator().manual_seed(0))
    assert batch.x0.shape == (16, *m.latent_shape) and torch.equal(batch.x0, again.x0)
    assert torch.equal(batch.cond, again.cond)
    module = DistillationModule(m, objective, learning_rate=1e-3, ema_decay=None)
    before = [p.detach().clone() for p in module.student.parameters()]
    logs = module.engine.step(batch, 0, module.engine.make_optimizers(1e-3))
    assert all(torch.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters(), strict=True))


def test_image_observations_go_through_the_cnn_encoder():
    m = PolicyModality(obs_dim=4, action_dim=2, horizon=8, n_action_steps=4, down_dims=[16, 32],
                       image_shape=[3, 32, 32], teacher="random")
    data = {"obs": torch.randn(4, 2, 4), "action": torch.rand(4, 8, 2),
            "image": torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8)}
    batch = m.to_batch(data)
    assert set(batch.cond) == {"state", "image"} and float(batch.cond["image"].abs().max()) <= 1.0
    den = m.new_denoiser()
    out = den(batch.x0, torch.rand(4), batch.cond).x0
    other = den(batch.x0, torch.rand(4) * 0 + 0.5, {**batch.cond, "image": -batch.cond["image"]}).x0
    assert out.shape == (4, 8, 2) and not torch.allclose(out, other)
    with pytest.raises(ValueError, match="image"):
        m.encode_obs(torch.randn(4, 2, 4))


def test_reach_around_demonstrations_are_bimodal_and_averaging_them_crashes():
    episodes = reach_around.ReachAroundDemos(episodes=40).episodes()
    lateral = np.array([ep.actions[:5, 0].mean() for ep in episodes])
    assert (lateral > 0.3).sum() >= 10 and (lateral < -0.3).sum() >= 10
    env = reach_around.make_env()
    env.reset(seed=0)
    for _ in range(100):  # the mean of left and right: straight up
        _, _, terminated, _, info = env.step(np.array([0.0, 1.0]))
        if terminated:
            break
    assert terminated and info["crashed"] and not info["is_success"]


def test_reacher_expert_meets_the_stated_success_criterion():
    import tasks.reacher as reacher

    result = rollout(reacher.make_env, reacher.BatchExpert(), list(range(20)), 10, 2)
    assert result.success_rate >= 0.7


@pytest.mark.slow
def test_shipped_reach_around_teacher_goes_around_the_wall():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    m = PolicyModality(obs_dim=4, action_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8, down_dims=[32, 64],
                       teacher=str(root / "tasks" / "reach_around" / "weights" / "teacher.safetensors"))
    teacher = m.load_teacher()

    def sample_fn(cond, n, g):
        return sample(teacher, torch.randn((n, *m.latent_shape), generator=g), 10, cond, solver="ddim", generator=g).x

    from modalities.policy import evaluate

    result = evaluate(reach_around.make_env, lambda: m.executor(m.planner(sample_fn, torch.Generator().manual_seed(0))),
                      list(range(50)), 4, 2)
    assert result.success_rate >= 0.9  # measured 0.99 over seeds 0..99 (benchmarks/results/policy.json)


def test_scripted_demos_generate_once_per_task_and_setting(tmp_path):
    import numpy as np

    from modalities.policy.demos import Episode, ScriptedDemos, demos_main, load_demos

    calls = []

    def make(tag):
        def generate(episodes, seed, noise):
            calls.append((tag, episodes, seed, noise))
            return [Episode(np.full((3, 2), tag, np.float32), np.zeros((3, 1), np.float32), np.zeros(3, np.float32))
                    for _ in range(episodes)]
        return generate

    class A(ScriptedDemos):
        generate = staticmethod(make(1.0))

    class B(ScriptedDemos):
        generate = staticmethod(make(2.0))

    assert A(2, 5).episodes() is A(2, 5).episodes()  # cached: one generation
    assert B(2, 5).episodes()[0].observations[0, 0] == 2.0  # another task with the same setting is its own
    A(3, 5).episodes()
    assert calls == [(1.0, 2, 5, 0.05), (2.0, 2, 5, 0.05), (1.0, 3, 5, 0.05)]
    out = demos_main(make(3.0), "demos", ["--episodes", "2", "--out", str(tmp_path / "d.npz")])
    assert len(load_demos(out)) == 2
