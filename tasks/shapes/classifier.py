"""The shapes task's own feature network: a small PointNet ("PointNet: Deep Learning on Point Sets for 3D
Classification and Segmentation", Qi et al., 2017) trained to name the concept of a 256-point cloud.

Its pooled features define ``fd_shapes`` (a Fréchet distance in *this* network's features, not the "FPD" of a
PointNet trained on ShapeNet) and its prediction defines ``prompt_accuracy``. Trained on random point subsets of
the training shapes with random rotations about the vertical axis and small jitter, so that it reads slightly
imperfect generated clouds as it reads real ones. Reproduce the shipped weights with
``python -m tasks.shapes.classifier``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.shapes.catalog import CONCEPTS

WEIGHTS = FilePath(__file__).parent / "weights" / "classifier.safetensors"
log = logging.getLogger(__name__)


class PointNetClassifier(nn.Module):
    """``[B, N, 3]`` clouds (any ``N``) -> ``num_features`` max-pooled features -> concept logits."""

    def __init__(self, num_features: int = 64, num_classes: int = len(CONCEPTS)) -> None:
        super().__init__()
        self.num_features = num_features
        self.point_mlp = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 128), nn.SiLU(),
                                       nn.Linear(128, 256))
        self.feature = nn.Sequential(nn.SiLU(), nn.Linear(256, num_features))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(num_features, num_classes))

    def forward(self, points: Tensor) -> Tensor:
        """The ``[B, num_features]`` features."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"the shapes classifier takes clouds [B, N, 3], got {tuple(points.shape)}")
        return self.feature(self.point_mlp(points.float()).max(dim=1).values)

    def logits(self, points: Tensor) -> Tensor:
        return self.head(self(points))


def load_classifier(path: str | FilePath = WEIGHTS) -> PointNetClassifier:
    from unidistill.weights import load_safetensors

    net = PointNetClassifier()
    load_safetensors(net, path, "shapes classifier", "train it with `python -m tasks.shapes.classifier`",
                     card={"network": "PointNetClassifier", "concepts": [c.name for c in CONCEPTS]})
    return net.eval().requires_grad_(False)


def _augment(points: Tensor, generator: torch.Generator, jitter: float) -> Tensor:
    angle = torch.rand(points.shape[0], generator=generator) * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    x, y = points[..., 0], points[..., 1]
    cos, sin = cos[:, None], sin[:, None]
    rotated = torch.stack([cos * x - sin * y, sin * x + cos * y, points[..., 2]], -1)
    return rotated + jitter * torch.randn(rotated.shape, generator=generator)


def train(steps: int = 3000, batch: int = 64, num_points: int = 256, train_size: int = 8000, seed: int = 0,
          out: FilePath = WEIGHTS) -> dict[str, float]:
    """Train, save the weights with their card, and return held-out accuracy (real 256-point clouds)."""
    from safetensors.torch import save_file

    from modalities.shape.structure import VoxelGrid
    from tasks.shapes.data import HELD_OUT_SEED, load_bank

    torch.manual_seed(seed)
    grid = VoxelGrid()
    bank = load_bank(0, train_size, False, grid)
    held = load_bank(HELD_OUT_SEED, 1024, True, grid)
    net = PointNetClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(bank), (batch,), generator=g)
        sub = torch.stack([torch.randperm(bank.points.shape[1], generator=g)[:num_points] for _ in range(batch)])
        pts = _augment(torch.gather(bank.points[idx], 1, sub[..., None].expand(-1, -1, 3)), g, 0.01)
        loss = F.cross_entropy(net.logits(pts), bank.concepts[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            log.info("step %d loss %.4f", step, float(loss))
    net.eval()
    with torch.no_grad():
        acc = float((net.logits(held.points[:, :num_points]).argmax(1) == held.concepts).float().mean())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    report = {"network": "PointNetClassifier", "concepts": [c.name for c in CONCEPTS], "num_points": num_points,
              "held_out_accuracy": acc, "held_out_shapes": len(held), "steps": steps,
              "command": f"python -m tasks.shapes.classifier --steps {steps}"}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="train the shapes task's PointNet classifier")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=str(WEIGHTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(train(args.steps, out=FilePath(args.out)), indent=2))
