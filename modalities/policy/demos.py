"""Demonstrations: the on-disk format, loading, and slicing into (observation history, action chunk) windows.

**Format** (one ``.npz`` file, the flat replay-buffer layout of Diffusion Policy's zarr stores):

* ``observations`` ``[N, obs_dim]`` float: ``observations[k]`` is what the agent saw when it took ``actions[k]``;
* ``actions`` ``[N, action_dim]`` float;
* ``rewards`` ``[N]`` float: the reward received after ``actions[k]``;
* ``episode_ends`` ``[E]`` int: exclusive end index of each episode in the flat arrays (increasing, last = N).

Optional: ``images`` ``[N, C, H, W]`` uint8 for image observations. ``save_demos``/``load_demos`` read and write
it; anything with ``episodes() -> list[Episode]`` (e.g. a task's scripted-expert generator) is a demo source.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Episode:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    images: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.actions)
        images = None if self.images is None else len(self.images)
        if len(self.observations) != n or len(self.rewards) != n or images not in (None, n):
            raise ValueError(f"episode arrays disagree in length: observations {len(self.observations)}, actions {n}, "
                             f"rewards {len(self.rewards)}, images {images}")


class DemoSource(Protocol):
    def episodes(self) -> list[Episode]: ...


class ScriptedDemos:
    """Demo source over a task's scripted expert: ``generate(episodes, seed, noise)`` is called once per
    process and setting, and its episodes are cached (every config of a run shares them)."""

    generate: Callable[[int, int, float], list[Episode]]
    _cache: dict[tuple[type, int, int, float], list[Episode]] = {}

    def __init__(self, episodes: int = 200, seed: int = 10_000, noise: float = 0.05) -> None:
        self.key = (episodes, seed, noise)

    def episodes(self) -> list[Episode]:
        key = (type(self), *self.key)
        if key not in ScriptedDemos._cache:
            ScriptedDemos._cache[key] = type(self).generate(*self.key)
        return ScriptedDemos._cache[key]


def demos_main(generate: Callable[[int, int, float], list[Episode]], description: str,
               argv: list[str] | None = None) -> Path:
    """The ``python -m tasks.<task>.demos --episodes N --out file.npz`` command of a scripted-expert task."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    path = save_demos(args.out, generate(args.episodes, args.seed, args.noise))
    print(path)
    return path


def save_demos(path: str | Path, episodes: list[Episode]) -> Path:
    """Write episodes in the documented ``.npz`` format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "observations": np.concatenate([e.observations for e in episodes]).astype(np.float32),
        "actions": np.concatenate([e.actions for e in episodes]).astype(np.float32),
        "rewards": np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        "episode_ends": np.cumsum([len(e.actions) for e in episodes]).astype(np.int64),
    }
    if episodes[0].images is not None:
        arrays["images"] = np.concatenate([e.images for e in episodes]).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def load_demos(path: str | Path) -> list[Episode]:
    """Read the documented ``.npz`` format, with errors that name the missing key or the inconsistent length."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demonstration file not found: {str(path)!r}")
    data = np.load(path)
    missing = [k for k in ("observations", "actions", "rewards", "episode_ends") if k not in data]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {missing}; a demo file holds observations, actions, rewards, "
                         "episode_ends (see modalities/policy/demos.py)")
    ends = data["episode_ends"]
    if len(ends) == 0 or ends[-1] != len(data["actions"]) or np.any(np.diff(ends) <= 0):
        raise ValueError(f"{str(path)!r}: episode_ends must increase and end at len(actions)={len(data['actions'])}, "
                         f"got {ends[:5]}...{ends[-1:]}")
    images = data["images"] if "images" in data else None
    starts = np.concatenate([[0], ends[:-1]])
    return [Episode(data["observations"][s:e], data["actions"][s:e], data["rewards"][s:e],
                    None if images is None else images[s:e]) for s, e in zip(starts, ends, strict=True)]


class NpzDemos:
    """A demo source reading the ``.npz`` format (for users bringing their own demonstrations)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def episodes(self) -> list[Episode]:
        return load_demos(self.path)


def window_indices(length: int, t: int, n_obs_steps: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the observation history ending at step ``t`` and of the action chunk starting at the history's
    first step (``t - n_obs_steps + 1``), clamped to the episode (Diffusion Policy pads with the first
    observation/action before the start and the last action after the end)."""
    obs = np.clip(np.arange(t - n_obs_steps + 1, t + 1), 0, length - 1)
    act = np.clip(np.arange(t - n_obs_steps + 1, t - n_obs_steps + 1 + horizon), 0, length - 1)
    return obs, act


class WindowDataset(Dataset):
    """Every step of every episode as ``{"obs": [n_obs_steps, obs_dim], "action": [horizon, action_dim]}`` (raw,
    unnormalised; the modality normalises with the statistics stored in the network)."""

    def __init__(self, episodes: list[Episode], horizon: int, n_obs_steps: int) -> None:
        if not episodes:
            raise ValueError("no demonstration episodes")
        obs_i, act_i = [], []
        offset = 0
        for ep in episodes:
            for t in range(len(ep.actions)):
                o, a = window_indices(len(ep.actions), t, n_obs_steps, horizon)
                obs_i.append(o + offset)
                act_i.append(a + offset)
            offset += len(ep.actions)
        self.obs = torch.as_tensor(np.concatenate([e.observations for e in episodes]), dtype=torch.float32)
        self.actions = torch.as_tensor(np.concatenate([e.actions for e in episodes]), dtype=torch.float32)
        self.images = (torch.as_tensor(np.concatenate([e.images for e in episodes]))
                       if episodes[0].images is not None else None)
        self.obs_index = torch.as_tensor(np.stack(obs_i))
        self.act_index = torch.as_tensor(np.stack(act_i))

    def __len__(self) -> int:
        return len(self.obs_index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"obs": self.obs[self.obs_index[i]], "action": self.actions[self.act_index[i]]}
        if self.images is not None:
            item["image"] = self.images[self.obs_index[i]]
        return item


def stack_episodes(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([e.observations for e in episodes]), np.concatenate([e.actions for e in episodes])
