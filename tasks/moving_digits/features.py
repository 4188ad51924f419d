"""The task's own video feature network and the metrics built on it (no pretrained I3D exists offline).

``VideoFeatureNet`` encodes each frame with a small CNN (per-frame features, a per-frame digit head) and
the sequence of frame features with temporal convolutions (clip features, heads for the digit and the final
direction of motion). It is trained by ``python -m tasks.moving_digits.features`` on generated clips.
Distances in its feature space are named for it: ``fvd_moving_digits`` (Fréchet distance of clip features,
over 16-frame windows) and ``fd_frames_moving_digits`` (of frame features); never FVD/FID.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path as FilePath
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.moving_digits.clips import DIRECTIONS, make_clips
from unidistill.metrics import frechet_distance

WEIGHTS = FilePath(__file__).parent / "weights" / "video_features.safetensors"
WINDOW = 16
log = logging.getLogger(__name__)


class VideoFeatureNet(nn.Module):
    def __init__(self, width: int = 32, features: int = 32) -> None:
        super().__init__()
        self.num_features = features
        self.frame = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, 2, 1), nn.SiLU(), nn.Conv2d(width // 2, width, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.SiLU(), nn.Flatten(), nn.Linear(width * 16, features),
        )
        self.temporal = nn.Sequential(nn.Conv1d(features, features, 3, padding=1), nn.SiLU(),
                                      nn.Conv1d(features, features, 3, padding=1))
        self.frame_digit = nn.Linear(features, 10)
        self.clip_digit = nn.Linear(features, 10)
        self.clip_direction = nn.Linear(features, len(DIRECTIONS))

    def frame_features(self, clips: Tensor) -> Tensor:
        """``[N, T, 1, 32, 32]`` in ``[-1, 1]`` -> ``[N, T, F]``."""
        n, t = clips.shape[:2]
        return self.frame(clips.reshape(n * t, *clips.shape[2:]).float()).reshape(n, t, -1)

    def clip_features(self, clips: Tensor) -> Tensor:
        """``[N, T, 1, 32, 32]`` -> ``[N, F]``."""
        f = self.frame_features(clips)
        return self.temporal(F.silu(f).transpose(1, 2)).mean(-1)


def final_direction(clips: Tensor) -> Tensor:
    """Direction of motion over the last two frames, from the centre of mass (labels for training)."""
    w = (clips[:, -2:, 0] + 1) / 2  # [N, 2, H, W]
    grid = torch.arange(w.shape[-1], dtype=w.dtype)
    mass = w.sum((-1, -2)).clamp_min(1e-6)
    rows = (w.sum(-1) * grid).sum(-1) / mass
    cols = (w.sum(-2) * grid).sum(-1) / mass
    dr, dc = rows[:, 1] - rows[:, 0], cols[:, 1] - cols[:, 0]
    horizontal = dc.abs() >= dr.abs()
    return torch.where(horizontal, (dc > 0).long(), 2 + (dr > 0).long())


def train(steps: int = 1500, batch: int = 64, seed: int = 0, out: FilePath = WEIGHTS) -> VideoFeatureNet:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = VideoFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in range(steps):
        seeds = range(10_000_000 + step * batch, 10_000_000 + (step + 1) * batch)
        clips, captions, digits = make_clips(seeds, frames=WINDOW)
        direction = final_direction(clips)
        f = net.frame_features(clips)
        clip = net.temporal(F.silu(f).transpose(1, 2)).mean(-1)
        loss = (F.cross_entropy(net.frame_digit(f).flatten(0, 1), digits.repeat_interleave(WINDOW))
                + F.cross_entropy(net.clip_digit(clip), digits) + F.cross_entropy(net.clip_direction(clip), direction))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log.info("step %d loss %.4f", step, float(loss))
    net.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return net


def load_feature_net(path: str | FilePath = WEIGHTS) -> VideoFeatureNet:
    from safetensors.torch import load_file

    path = FilePath(path)
    if not path.is_file():
        raise FileNotFoundError(f"moving-digits feature network not found at {str(path)!r}; train it with "
                                "python -m tasks.moving_digits.features")
    net = VideoFeatureNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


def windows(clips: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """Non-overlapping 16-frame windows of frames ``[start, stop)`` stacked on the batch axis."""
    stop = clips.shape[1] if stop is None else stop
    parts = [clips[:, s:s + WINDOW] for s in range(start, stop - WINDOW + 1, WINDOW)]
    if not parts:
        raise ValueError(f"need at least {WINDOW} frames in [{start}, {stop}), clips have {clips.shape[1]}")
    return torch.cat(parts)


class MovingDigitsEvaluator:
    """``fvd_moving_digits``, ``fd_frames_moving_digits``, identity consistency and caption accuracy.

    Identity consistency: the share of frames whose predicted digit equals the clip's most common predicted
    digit. Caption accuracy: the share of clips whose clip-level digit prediction names the captioned digit.
    """

    regression_metric = ("fvd_moving_digits", True)

    def __init__(self, weights: str = str(WEIGHTS)) -> None:
        self.weights = weights
        self._net: VideoFeatureNet | None = None

    @property
    def net(self) -> VideoFeatureNet:
        if self._net is None:
            self._net = load_feature_net(self.weights)
        return self._net

    @torch.no_grad()
    def fvd(self, samples: Tensor, reference: Tensor) -> float:
        return frechet_distance(self.net.clip_features(windows(samples)).double(),
                                self.net.clip_features(windows(reference)).double())

    @torch.no_grad()
    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        samples = samples.float().clamp(-1, 1)
        frame_f = self.net.frame_features(samples)
        pred = self.net.frame_digit(frame_f).argmax(-1)  # [N, T]
        mode = pred.mode(dim=1).values
        out = {"identity_consistency": float((pred == mode[:, None]).float().mean())}
        if cond is not None and isinstance(cond, Tensor) and cond.shape[-1] == 384:
            from tasks.moving_digits.text import caption_of

            digit = caption_of(cond.cpu()) // len(DIRECTIONS)
            clip_digit = self.net.clip_digit(self.net.clip_features(windows(samples))).argmax(-1)
            out["caption_accuracy"] = float((clip_digit == digit.repeat(clip_digit.shape[0] // digit.shape[0])).float()
                                            .mean())
        if reference is not None:
            reference = reference.float()
            out["fvd_moving_digits"] = self.fvd(samples, reference)
            out["fd_frames_moving_digits"] = frechet_distance(
                frame_f.flatten(0, 1).double(), self.net.frame_features(reference).flatten(0, 1).double())
        return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="train the moving-digits video feature network")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default=str(WEIGHTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.steps, out=FilePath(args.out))
