"""Gymnasium MuJoCo ``Reacher-v5`` with a scripted damped-least-squares expert and a stated success criterion:
the fingertip ends within ``SUCCESS_DISTANCE`` (0.02) of the target at the last of the 50 steps.

``MUJOCO_GL=egl`` is set before anything imports mujoco, so rendering works headless."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from tasks.reacher.demos import ReacherDemos, generate  # noqa: E402
from tasks.reacher.env import SUCCESS_DISTANCE, ReacherSuccess, make_env  # noqa: E402
from tasks.reacher.expert import BatchExpert, reacher_expert_action  # noqa: E402

__all__ = ["SUCCESS_DISTANCE", "BatchExpert", "ReacherDemos", "ReacherSuccess", "generate", "make_env",
           "reacher_expert_action"]
