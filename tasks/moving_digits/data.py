"""The moving-digits DataModule: clips generated on the fly from per-index seeds, MiniLM caption embeddings."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.moving_digits.clips import make_clip
from tasks.moving_digits.text import caption_embeddings
from unidistill.data import ResumableDataLoader


class MovingDigitClips(Dataset):
    """``size`` clips; clip ``i`` is ``make_clip(seed * 1_000_003 + i)``.

    Items are ``{"x": [T, 1, H, W], "cond": [384]}``."""

    def __init__(self, size: int, seed: int, frames: int = 16, canvas: int = 32, held_out: bool = False) -> None:
        self.size, self.seed, self.frames, self.canvas, self.held_out = size, seed, frames, canvas, held_out
        self.embeddings = caption_embeddings()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip, caption, _ = make_clip(self.seed * 1_000_003 + i, self.frames, self.canvas, self.held_out)
        return {"x": clip, "cond": self.embeddings[caption]}


class MovingDigitsDataModule(L.LightningDataModule):
    """Training clips from the training digits; validation clips from held-out digits (fixed seeds)."""

    def __init__(self, train_size: int = 100_000, val_size: int = 256, batch_size: int = 32,
                 val_batch_size: int = 128, frames: int = 16, canvas: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.train_size, self.val_size = train_size, val_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.frames, self.canvas, self.seed = frames, canvas, seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = MovingDigitClips(self.train_size, self.seed, self.frames, self.canvas)
        self.val_set = MovingDigitClips(self.val_size, self.seed + 1, self.frames, self.canvas, held_out=True)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)
