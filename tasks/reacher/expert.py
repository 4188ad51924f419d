"""A damped-least-squares (Jacobian pseudo-inverse) reaching expert for Reacher-v5, computed from the observation
alone: joint angles from their cos/sin, the fingertip-target vector, joint velocities. Link lengths are the
model's 0.1 and 0.11."""

from __future__ import annotations

import numpy as np

LINKS = (0.1, 0.11)


def reacher_expert_action(obs: np.ndarray, gain: float = 2.0, damping: float = 0.1, lam: float = 1e-3) -> np.ndarray:
    """``clip(gain * J^T (J J^T + lam I)^-1 (target - fingertip) - damping * qdot, -1, 1)``."""
    c1, c2, s1, s2 = obs[0], obs[1], obs[2], obs[3]
    c12, s12 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
    l1, l2 = LINKS
    jac = np.array([[-l1 * s1 - l2 * s12, -l2 * s12], [l1 * c1 + l2 * c12, l2 * c12]])
    error = -np.asarray(obs[8:10], dtype=np.float64)
    dq = jac.T @ np.linalg.solve(jac @ jac.T + lam * np.eye(2), error)
    return np.clip(gain * dq - damping * np.asarray(obs[6:8]), -1.0, 1.0).astype(np.float32)


class BatchExpert:
    """Evaluation agent interface over a batch of observations."""

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.stack([reacher_expert_action(o) for o in obs])
