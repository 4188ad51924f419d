"""Scripted-expert demonstrations for Reacher-v5 (a demo source, and a command writing the ``.npz`` format):

    python -m tasks.reacher.demos --episodes 200 --out runs/reacher_demos.npz
"""

from __future__ import annotations

import numpy as np

from modalities.policy.demos import Episode, ScriptedDemos, demos_main
from tasks.reacher.env import make_env
from tasks.reacher.expert import reacher_expert_action


def generate(episodes: int, seed: int = 10_000, noise: float = 0.05) -> list[Episode]:
    """``episodes`` expert episodes on environment seeds ``seed, seed + 1, ...`` with Gaussian action noise
    (clipped) so the demonstrations cover recoveries from small errors."""
    env, rng, out = make_env(), np.random.default_rng(seed), []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        o_list, a_list, r_list = [], [], []
        done = False
        while not done:
            action = np.clip(reacher_expert_action(obs) + noise * rng.standard_normal(2), -1, 1).astype(np.float32)
            o_list.append(obs)
            a_list.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            r_list.append(reward)
            done = terminated or truncated
        out.append(Episode(np.stack(o_list).astype(np.float32), np.stack(a_list), np.asarray(r_list, np.float32)))
    env.close()
    return out


class ReacherDemos(ScriptedDemos):
    """Demo source: ``episodes`` expert episodes (generated once per process and cached)."""

    generate = staticmethod(generate)


if __name__ == "__main__":
    demos_main(generate, __doc__.splitlines()[0])
