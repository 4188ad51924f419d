"""``unidistill/ReachAround-v0``: a point agent must reach a goal straight behind a wall.

The agent starts below a horizontal wall, the goal is above it, and start, wall centre and goal share one x
coordinate, so going around on the left and on the right are equally good. Observations are
``[agent x, agent y, goal x, goal y]`` (the wall is centred at ``(goal x, 0)``, half-size ``0.35 x 0.08``);
actions are velocities in ``[-1, 1]^2`` scaled by ``0.05`` per step. An episode ends with success when the agent
is within ``0.06`` of the goal (reward ``+1``), with failure when it touches the wall (reward ``-1``), or after 120
steps; each step also costs ``0.01 * distance to goal``. ``info["is_success"]`` is set on every step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

WALL_HALF = np.array([0.35, 0.08])
AGENT_RADIUS = 0.03
GOAL_RADIUS = 0.06
SPEED = 0.05


class ReachAroundEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, image_size: int = 128) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode, self.image_size = render_mode, image_size
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.agent = np.zeros(2)
        self.goal = np.zeros(2)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.agent, self.goal]).astype(np.float32)

    @property
    def wall_centre(self) -> np.ndarray:
        return np.array([self.goal[0], 0.0])

    def touches_wall(self, p: np.ndarray) -> bool:
        return bool(np.all(np.abs(p - self.wall_centre) <= WALL_HALF + AGENT_RADIUS))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        x = self.np_random.uniform(-0.3, 0.3)
        self.agent = np.array([x, self.np_random.uniform(-0.85, -0.7)])
        self.goal = np.array([x, self.np_random.uniform(0.65, 0.8)])
        return self._obs(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"non-finite action {action}")
        new = np.clip(self.agent + SPEED * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        crashed = self.touches_wall(new) or self._crosses_wall(self.agent, new)
        self.agent = new
        dist = float(np.linalg.norm(self.agent - self.goal))
        success = (not crashed) and dist < GOAL_RADIUS
        reward = -0.01 * dist + (1.0 if success else 0.0) - (1.0 if crashed else 0.0)
        return self._obs(), reward, crashed or success, False, {"is_success": success, "crashed": crashed}

    def _crosses_wall(self, a: np.ndarray, b: np.ndarray) -> bool:
        for s in np.linspace(0.0, 1.0, 5)[1:-1]:
            if self.touches_wall(a + s * (b - a)):
                return True
        return False

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        n = self.image_size
        coords = (np.arange(n) + 0.5) / n * 2 - 1
        xx, yy = np.meshgrid(coords, -coords)
        img = np.full((n, n, 3), 245, dtype=np.uint8)
        wall = (np.abs(xx - self.wall_centre[0]) <= WALL_HALF[0]) & (np.abs(yy) <= WALL_HALF[1])
        img[wall] = (90, 90, 90)
        img[(xx - self.goal[0]) ** 2 + (yy - self.goal[1]) ** 2 <= GOAL_RADIUS**2] = (60, 170, 60)
        img[(xx - self.agent[0]) ** 2 + (yy - self.agent[1]) ** 2 <= (1.5 * AGENT_RADIUS) ** 2] = (40, 80, 220)
        return img
