"""Receding-horizon execution: keep the last ``n_obs_steps`` observations, plan ``horizon`` actions, execute
``n_action_steps`` of them open loop, then re-plan (Chi et al., 2023, "Diffusion Policy").

A plan covers the steps ``t - n_obs_steps + 1 ... t - n_obs_steps + horizon`` (it starts at the oldest observation
of the history, as the training windows do), so the actions executed from a plan made at step ``t`` are
``plan[n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]``. Environments are stepped in lockstep as a batch, so
one planning call serves every environment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Planner = Callable[[np.ndarray], np.ndarray]


class RecedingHorizonExecutor:
    """Batched receding-horizon controller around ``planner: obs history [B, n_obs_steps, obs_dim] -> actions
    [B, horizon, action_dim]`` (raw, unnormalised units on both sides)."""

    def __init__(self, planner: Planner, obs_dim: int, action_dim: int, horizon: int, n_obs_steps: int,
                 n_action_steps: int) -> None:
        if n_obs_steps < 1 or n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(f"need n_obs_steps >= 1, n_action_steps >= 1 and n_obs_steps - 1 + n_action_steps <= "
                             f"horizon; got n_obs_steps={n_obs_steps}, n_action_steps={n_action_steps}, "
                             f"horizon={horizon}")
        self.planner = planner
        self.obs_dim, self.action_dim, self.horizon = obs_dim, action_dim, horizon
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.plans, self.plan_seconds = 0, 0.0
        self.reset()

    def reset(self) -> None:
        self.history: deque[np.ndarray] = deque(maxlen=self.n_obs_steps)
        self.queue: list[np.ndarray] = []

    def window(self) -> np.ndarray:
        return np.stack(list(self.history), axis=1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for the current observations ``[B, obs_dim]``; re-plans when the executed chunk is used up."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observation batch of shape {obs.shape}, but the policy was trained on observations of "
                             f"dimension {self.obs_dim} (expected [num_envs, {self.obs_dim}])")
        if not self.history:
            self.history.extend([obs] * self.n_obs_steps)
        else:
            self.history.append(obs)
        if not self.queue:
            start = time.perf_counter()
            plan = np.asarray(self.planner(self.window()))
            self.plan_seconds += time.perf_counter() - start
            self.plans += 1
            expected = (obs.shape[0], self.horizon, self.action_dim)
            if plan.shape != expected:
                raise ValueError(f"planner returned actions of shape {plan.shape}, expected {expected}")
            first = self.n_obs_steps - 1
            self.queue = [plan[:, k] for k in range(first, first + self.n_action_steps)]
        return self.queue.pop(0)


class DiffusionPlanner:
    """Observation history -> action chunk through a modality (normalisation) and ``sample_fn(cond, n, generator)``,
    which returns normalised chunks (a teacher solver, a consistency student, ...)."""

    def __init__(self, modality: Any, sample_fn: Callable[[Any, int, torch.Generator], torch.Tensor],
                 generator: torch.Generator) -> None:
        self.modality, self.sample_fn, self.generator = modality, sample_fn, generator

    @torch.no_grad()
    def __call__(self, obs_window: np.ndarray) -> np.ndarray:
        cond = self.modality.encode_obs(torch.as_tensor(obs_window))
        x = self.sample_fn(cond, obs_window.shape[0], self.generator)
        return self.modality.decode(x).numpy()
