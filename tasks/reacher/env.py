"""``Reacher-v5`` with ``info["is_success"]``: on the episode's last step, the fingertip-target distance (the last
two observation entries) is under ``SUCCESS_DISTANCE``."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

SUCCESS_DISTANCE = 0.02


class ReacherSuccess(gym.Wrapper):
    def __init__(self, env: gym.Env, threshold: float = SUCCESS_DISTANCE) -> None:
        super().__init__(env)
        self.threshold = threshold

    def step(self, action: np.ndarray):  # noqa: ANN201 - gymnasium's step tuple
        obs, reward, terminated, truncated, info = self.env.step(action)
        distance = float(np.linalg.norm(obs[-2:]))
        info = {**info, "final_distance": distance,
                "is_success": bool((terminated or truncated) and distance < self.threshold)}
        return obs, reward, terminated, truncated, info


def make_env(render_mode: str | None = None) -> gym.Env:
    return ReacherSuccess(gym.make("Reacher-v5", render_mode=render_mode))
