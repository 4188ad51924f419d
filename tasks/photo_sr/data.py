"""The photo-SR DataModule: random HR patches of the training photographs with flips and rotations (each example
a pure function of its index and the seed), LR by the configured degradation; validation on non-overlapping
crops of the held-out photographs."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from modalities.superres.degradation import Degradation, upsample
from tasks.photo_sr.photos import TEST_PHOTOS, TRAIN_PHOTOS, load_photo
from unidistill.data import ResumableDataLoader


def sr_example(hr: Tensor, degradation: Degradation, rng: np.random.Generator) -> dict:
    """``{"x": HR [C, H, W], "cond": {"lr": LR [C, H/s, W/s], "up": bicubic-upsampled LR [C, H, W]}}``."""
    lr = degradation(hr[None], rng)
    return {"x": hr, "cond": {"lr": lr[0], "up": upsample(lr, degradation.scale)[0]}}


def dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 flips/rotations of a ``[C, H, W]`` image (``k`` in 0..7)."""
    x = torch.rot90(x, k % 4, dims=(1, 2))
    return torch.flip(x, dims=(2,)) if k >= 4 else x


class TrainPatches(Dataset):
    """``size`` random ``patch``-pixel HR crops of the training photos (photo drawn uniformly, then position and a
    dihedral transform), example ``i`` seeded by ``(seed, i)``."""

    def __init__(self, size: int, patch: int = 64, degradation: Degradation | None = None, seed: int = 0,
                 photos: tuple[str, ...] = TRAIN_PHOTOS) -> None:
        self.size, self.patch, self.seed = size, patch, seed
        self.degradation = degradation or Degradation()
        if patch % self.degradation.scale:
            raise ValueError(f"patch {patch} must be a multiple of the scale factor {self.degradation.scale}")
        self.images = [load_photo(p) for p in photos]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[-2:]
        top, left = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        hr = dihedral(img[:, top:top + self.patch, left:left + self.patch], int(rng.integers(8)))
        return sr_example(hr.contiguous(), self.degradation, rng)


class HeldOutCrops(Dataset):
    """Non-overlapping ``patch``-pixel crops of the held-out photos, in raster order; LR of crop ``i`` seeded by
    ``(seed, i)`` (only the realistic degradation draws)."""

    def __init__(self, patch: int = 64, degradation: Degradation | None = None, seed: int = 1,
                 photos: tuple[str, ...] = TEST_PHOTOS, limit: int | None = None) -> None:
        self.degradation, self.seed = degradation or Degradation(), seed
        crops = []
        for p in photos:
            img = load_photo(p)
            h, w = img.shape[-2:]
            crops += [img[:, r:r + patch, c:c + patch] for r in range(0, h - patch + 1, patch)
                      for c in range(0, w - patch + 1, patch)]
        self.crops = crops[:limit]

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        return sr_example(self.crops[i].contiguous(), self.degradation, np.random.default_rng([self.seed, i]))


class PhotoSRDataModule(L.LightningDataModule):
    """x``scale`` super-resolution of real photos. ``degradation``: ``bicubic`` or ``realistic`` (blur + noise +
    JPEG). ``val_size`` caps the held-out crops (142 non-overlapping 64x64 crops of the three held-out photos)."""

    def __init__(self, scale: int = 4, patch: int = 64, degradation: str = "bicubic", train_size: int = 100_000,
                 batch_size: int = 16, val_size: int | None = None, val_batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.degradation = Degradation(degradation, scale)
        self.patch, self.train_size, self.batch_size = patch, train_size, batch_size
        self.val_size, self.val_batch_size, self.seed = val_size, val_batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TrainPatches(self.train_size, self.patch, self.degradation, self.seed)
        self.val_set = HeldOutCrops(self.patch, self.degradation, self.seed + 1, limit=self.val_size)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)
