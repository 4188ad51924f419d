"""The scripted expert of ReachAround: picks left or right at random per episode, then follows two waypoints
beside the wall and heads for the goal. Its demonstrations are therefore bimodal at the start state."""

from __future__ import annotations

import numpy as np

from tasks.reach_around.env import WALL_HALF


class ReachAroundExpert:
    """Proportional waypoint follower; ``side`` and the waypoints' clearance are drawn from ``rng`` at reset."""

    def __init__(self, rng: np.random.Generator, noise: float = 0.05) -> None:
        self.rng, self.noise = rng, noise
        self.waypoints: list[np.ndarray] = []

    def reset(self, obs: np.ndarray) -> None:
        gx, gy = obs[2], obs[3]
        side = self.rng.choice([-1.0, 1.0])
        lateral = gx + side * (WALL_HALF[0] + self.rng.uniform(0.15, 0.25))
        self.waypoints = [np.array([lateral, -WALL_HALF[1] - 0.08]), np.array([lateral, WALL_HALF[1] + 0.08]),
                          np.array([gx, gy])]

    def act(self, obs: np.ndarray) -> np.ndarray:
        pos = obs[:2]
        while len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - pos) < 0.06:
            self.waypoints.pop(0)
        delta = (self.waypoints[0] - pos) / 0.05
        norm = np.linalg.norm(delta)
        action = delta / max(norm, 1.0)
        action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class BatchExpert:
    """The evaluation agent interface (``reset()``, ``act(obs [B, 4])``) over one expert per environment; expert
    ``i`` of a rollout draws from ``seed + i``."""

    def __init__(self, seed: int = 0, noise: float = 0.0) -> None:
        self.seed, self.noise = seed, noise
        self.experts: list[ReachAroundExpert] = []

    def reset(self) -> None:
        self.experts = []

    def act(self, obs: np.ndarray) -> np.ndarray:
        if not self.experts:
            rngs = [np.random.default_rng(self.seed + i) for i in range(len(obs))]
            self.experts = [ReachAroundExpert(rng, self.noise) for rng in rngs]
            for e, o in zip(self.experts, obs, strict=True):
                e.reset(o)
        return np.stack([e.act(o) for e, o in zip(self.experts, obs, strict=True)])
