"""Data for the gmm task: a fixed training set and a held-out reference set drawn from the mixture."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from modalities.gmm.mixture import GaussianMixture
from unidistill.data import ResumableDataLoader


class _Samples(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "cond": self.y[i]}


class GmmDataModule(L.LightningDataModule):
    """``train_size`` training samples and ``val_size`` held-out samples of the mixture (class labels as
    conditions; ``conditional=False`` gives every sample the null label ``-1``)."""

    def __init__(self, mixture: GaussianMixture | None = None, train_size: int = 65536, val_size: int = 8192,
                 batch_size: int = 256, val_batch_size: int = 8192, seed: int = 0, conditional: bool = True) -> None:
        super().__init__()
        self.mixture = mixture or GaussianMixture()
        self.train_size, self.val_size = train_size, val_size
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed
        self.conditional = conditional

    def _draw(self, n: int, seed: int) -> _Samples:
        x, y = self.mixture.sample(n, torch.Generator().manual_seed(seed))
        return _Samples(x, y if self.conditional else torch.full_like(y, -1))

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._draw(self.train_size, self.seed)
        self.val_set = self._draw(self.val_size, self.seed + 1)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)
