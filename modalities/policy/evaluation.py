"""Gymnasium evaluation of a policy over a fixed list of seeds: success rate with a Wilson 95% interval, mean
return, and the control rate; plus rollout GIFs from ``rgb_array`` rendering.

Environments are created once per seed and stepped in lockstep, so a diffusion policy plans for all of them in one
batched call. An environment reports success through ``info["is_success"]`` on its last step.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np


class Agent(Protocol):
    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for the default ``z``)."""
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass
class EvalResult:
    returns: list[float]
    successes: list[bool]
    lengths: list[int]
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return sum(self.successes) / len(self.successes)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(sum(self.successes), len(self.successes))

    @property
    def mean_return(self) -> float:
        return statistics.fmean(self.returns)

    def summary(self) -> dict[str, float]:
        lo, hi = self.interval
        return {"episodes": len(self.returns), "success_rate": self.success_rate, "success_ci95_low": lo,
                "success_ci95_high": hi, "mean_return": self.mean_return}


def check_spaces(env: gym.Env, obs_dim: int, action_dim: int) -> None:
    """Fail early, naming both sides, when an environment does not match the policy's checkpoint."""
    obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
    if obs_shape is None or tuple(obs_shape) != (obs_dim,):
        raise ValueError(f"environment {env.spec.id if env.spec else env!r} has observations of shape {obs_shape}, "
                         f"but the policy checkpoint expects ({obs_dim},)")
    if act_shape is None or tuple(act_shape) != (action_dim,):
        raise ValueError(f"environment {env.spec.id if env.spec else env!r} has actions of shape {act_shape}, but "
                         f"the policy checkpoint produces ({action_dim},)")


def rollout(make_env: Callable[..., gym.Env], agent: Agent, seeds: Sequence[int], obs_dim: int, action_dim: int,
            max_steps: int | None = None, record: bool = False) -> EvalResult:
    """One episode per seed, all environments in lockstep; ``record`` keeps ``rgb_array`` frames of the first."""
    envs = [make_env(render_mode="rgb_array") if (record and i == 0) else make_env() for i in range(len(seeds))]
    check_spaces(envs[0], obs_dim, action_dim)
    obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)]).astype(np.float32)
    agent.reset()
    n = len(envs)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=int)
    success, active = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    frames = [envs[0].render()] if record else []
    limit = max_steps or min(env.spec.max_episode_steps or 10**6 for env in envs)
    for _ in range(limit):
        actions = agent.act(obs)
        recording = record and bool(active[0])
        for i in np.flatnonzero(active):
            o, r, term, trunc, info = envs[i].step(actions[i])
            obs[i] = o
            returns[i] += r
            lengths[i] += 1
            if term or trunc:
                active[i] = False
                success[i] = bool(info.get("is_success", False))
        if recording:
            frames.append(envs[0].render())
        if not active.any():
            break
    for env in envs:
        env.close()
    return EvalResult(returns.tolist(), success.tolist(), lengths.tolist(), frames)


def evaluate(make_env: Callable[..., gym.Env], agent_factory: Callable[[], Agent], seeds: Sequence[int],
             obs_dim: int, action_dim: int, batch_size: int = 100) -> EvalResult:
    """Roll out every seed (``batch_size`` environments at a time, a fresh agent per batch)."""
    parts = [rollout(make_env, agent_factory(), seeds[i:i + batch_size], obs_dim, action_dim)
             for i in range(0, len(seeds), batch_size)]
    return EvalResult(sum((p.returns for p in parts), []), sum((p.successes for p in parts), []),
                      sum((p.lengths for p in parts), []))


def control_rate(planner: Callable[[np.ndarray], Any], obs_window: np.ndarray, n_action_steps: int,
                 repeats: int = 30) -> tuple[float, float]:
    """Actions per second of one robot: ``n_action_steps`` over the median wall time of one planning call at batch 1
    (observation normalisation and encoding, sampling and unnormalisation included). Returns (actions/s, ms/plan)."""
    window = obs_window[:1]
    planner(window)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        planner(window)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return n_action_steps / seconds, 1000 * seconds


def control_rates(planners: Sequence[tuple[Callable[[np.ndarray], Any], int]], obs_window: np.ndarray,
                  repeats: int = 30) -> list[tuple[float, float]]:
    """``control_rate`` of several ``(planner, n_action_steps)`` pairs, timed round-robin (one call of each per
    round) so that load changes on a shared machine affect every planner alike."""
    window = obs_window[:1]
    times: list[list[float]] = [[] for _ in planners]
    for planner, _ in planners:
        planner(window)
    for _ in range(repeats):
        for i, (planner, _) in enumerate(planners):
            start = time.perf_counter()
            planner(window)
            times[i].append(time.perf_counter() - start)
    out = []
    for (_, n_action_steps), ts in zip(planners, times, strict=True):
        seconds = statistics.median(ts)
        out.append((n_action_steps / seconds, 1000 * seconds))
    return out


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write ``rgb_array`` frames as an animated GIF with Pillow."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to save; roll out with record=True on an env that renders rgb_array")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path
