"""Scripted-expert demonstrations for Reacher-v5 (a demo source, and a command writing the ``.npz`` format):

    python -m tasks.reacher.demos --episodes 200 --out runs/reacher_demos.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from modalities.policy.demos import Episode, save_demos
from tasks.reacher.env import make_env
from tasks.reacher.expert import reacher_expert_action

_CACHE: dict[tuple[int, int, float], list[Episode]] = {}


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


class ReacherDemos:
    """Demo source: ``episodes`` expert episodes (generated once per process and cached)."""

    def __init__(self, episodes: int = 200, seed: int = 10_000, noise: float = 0.05) -> None:
        self.key = (episodes, seed, noise)

    def episodes(self) -> list[Episode]:
        if self.key not in _CACHE:
            _CACHE[self.key] = generate(*self.key)
        return _CACHE[self.key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    print(save_demos(args.out, generate(args.episodes, args.seed)))


if __name__ == "__main__":
    main()
