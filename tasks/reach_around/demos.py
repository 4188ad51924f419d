"""Scripted-expert demonstrations for ReachAround, as a demo source and as a command writing the ``.npz`` format:

    python -m tasks.reach_around.demos --episodes 200 --out runs/reach_around_demos.npz
"""

from __future__ import annotations

import numpy as np

from modalities.policy.demos import Episode, ScriptedDemos, demos_main
from tasks.reach_around.env import ReachAroundEnv
from tasks.reach_around.expert import ReachAroundExpert


def generate(episodes: int, seed: int = 10_000, noise: float = 0.05) -> list[Episode]:
    """``episodes`` successful expert episodes; environment seeds ``seed, seed + 1, ...`` (disjoint from the
    evaluation seeds ``0..999``), expert randomness from ``seed``."""
    env, rng, out = ReachAroundEnv(), np.random.default_rng(seed), []
    k = 0
    while len(out) < episodes:
        obs, _ = env.reset(seed=seed + k)
        k += 1
        expert = ReachAroundExpert(rng, noise)
        expert.reset(obs)
        o_list, a_list, r_list = [], [], []
        for _ in range(120):
            action = expert.act(obs)
            o_list.append(obs)
            a_list.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            r_list.append(reward)
            if terminated or truncated:
                break
        if info["is_success"]:
            out.append(Episode(np.stack(o_list), np.stack(a_list), np.asarray(r_list, dtype=np.float32)))
    return out


class ReachAroundDemos(ScriptedDemos):
    """Demo source: ``episodes`` expert episodes (generated once per process and cached)."""

    generate = staticmethod(generate)


if __name__ == "__main__":
    demos_main(generate, __doc__.splitlines()[0])
