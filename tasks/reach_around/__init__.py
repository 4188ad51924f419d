"""ReachAround: a 2-D point agent must reach a goal behind a wall; the scripted expert goes left or right at
random, so its demonstrations are bimodal and a mean-regression policy drives into the wall.

Importing this package registers the gymnasium id ``unidistill/ReachAround-v0``.
"""

import gymnasium as gym

from tasks.reach_around.demos import ReachAroundDemos, generate
from tasks.reach_around.env import ReachAroundEnv
from tasks.reach_around.expert import BatchExpert, ReachAroundExpert

ENV_ID = "unidistill/ReachAround-v0"
MAX_EPISODE_STEPS = 100
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="tasks.reach_around.env:ReachAroundEnv", max_episode_steps=MAX_EPISODE_STEPS)


def make_env(render_mode: str | None = None) -> gym.Env:
    return gym.make(ENV_ID, render_mode=render_mode)


__all__ = ["ENV_ID", "BatchExpert", "ReachAroundDemos", "ReachAroundEnv", "ReachAroundExpert", "generate", "make_env"]
