"""Moving-digit clips: scikit-learn's handwritten digits bouncing on a 32x32 canvas, with captions.

A clip is drawn from its own seed only, so any clip of any length can be regenerated exactly (the reference
for frames far beyond the training length is the same bouncing simulation run longer). The digit is one of
the 1,797 real 8x8 ``load_digits`` images, upscaled 2x; it starts at a random position and moves in one of
four directions at a random speed, reflecting off the canvas walls. The caption names the digit and the
initial direction, e.g. "a 3 moving to the left".
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

DIRECTIONS = ("to the left", "to the right", "up", "down")
_VELOCITY = {0: (0.0, -1.0), 1: (0.0, 1.0), 2: (-1.0, 0.0), 3: (1.0, 0.0)}  # (row, column) per direction
CAPTIONS = tuple(f"a {d} moving {w}" for d in range(10) for w in DIRECTIONS)
#: digits 0..1499 of load_digits are for training, 1500..1796 are held out for validation and evaluation
TRAIN_DIGITS, HELD_OUT_DIGITS = range(0, 1500), range(1500, 1797)


def caption_index(digit: int, direction: int) -> int:
    return digit * len(DIRECTIONS) + direction


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``[1797, 16, 16]`` digits in ``[0, 1]`` (8x8 upscaled 2x) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    imgs = (data.images / 16.0).astype(np.float32)
    return imgs.repeat(2, axis=1).repeat(2, axis=2), data.target.astype(np.int64)


def make_clip(seed: int, frames: int = 16, size: int = 32, held_out: bool = False) -> tuple[Tensor, int, int]:
    """One clip ``[frames, 1, size, size]`` in ``[-1, 1]``, its caption index and its digit label."""
    imgs, labels = digit_images()
    rng = np.random.default_rng(seed)
    pool = HELD_OUT_DIGITS if held_out else TRAIN_DIGITS
    k = int(rng.integers(pool.start, pool.stop))
    img, side = imgs[k], imgs.shape[1]
    span = size - side
    direction = int(rng.integers(0, len(DIRECTIONS)))
    speed = float(rng.uniform(1.0, 2.5))
    pos = rng.uniform(0, span, size=2)
    vel = np.array(_VELOCITY[direction]) * speed
    clip = np.zeros((frames, 1, size, size), dtype=np.float32)
    for f in range(frames):
        r, c = int(round(pos[0])), int(round(pos[1]))
        clip[f, 0, r:r + side, c:c + side] = img
        pos = pos + vel
        for a in range(2):  # reflect off the walls
            if pos[a] < 0:
                pos[a], vel[a] = -pos[a], -vel[a]
            elif pos[a] > span:
                pos[a], vel[a] = 2 * span - pos[a], -vel[a]
    return torch.from_numpy(clip * 2 - 1), caption_index(int(labels[k]), direction), int(labels[k])


def make_clips(seeds: list[int] | range, frames: int = 16, size: int = 32,
               held_out: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Clips ``[N, frames, 1, size, size]``, caption indices ``[N]`` and digit labels ``[N]``."""
    out = [make_clip(int(s), frames, size, held_out) for s in seeds]
    return (torch.stack([o[0] for o in out]), torch.tensor([o[1] for o in out]),
            torch.tensor([o[2] for o in out]))
