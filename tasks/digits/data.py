"""The digits task's data: scikit-learn's 1,797 real handwritten 8x8 digits (no download), upscaled, each
paired with natural-language captions. Training pairs every image with every training phrasing; the
validation set pairs every image with a *held-out* phrasing, so text generalisation is part of the score.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from unidistill.data import ResumableDataLoader

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = (
    "a handwritten {w}",
    "the number {d} written by hand",
    "a drawing of the digit {d}",
    "digit {w}",
    "{w}",
    "an image of a {w}",
    "the numeral {w}",
    "a scanned handwritten digit {d}",
)
HELDOUT_TEMPLATES = ("a picture of the number {w}", "handwriting showing a {w}", "the digit {d}, handwritten")


def caption(label: int, template: str) -> str:
    return template.format(w=WORDS[label], d=label)


def load_digit_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``[N, 1, size, size]`` in [-1, 1] (bilinear upscaling) and their labels."""
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"image size {size} is below the digits' native 8x8")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), torch.tensor(data.target, dtype=torch.long)


class CaptionedDigits(Dataset):
    """Every (image, template) pair: item ``i`` is image ``i // T`` with template ``i % T``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, templates: tuple[str, ...],
                 all_pairs: bool = True) -> None:
        self.images, self.labels, self.templates, self.all_pairs = images, labels, templates, all_pairs

    def __len__(self) -> int:
        return self.images.shape[0] * (len(self.templates) if self.all_pairs else 1)

    def __getitem__(self, i: int) -> dict:
        t = len(self.templates)
        img, tpl = (i // t, i % t) if self.all_pairs else (i, i % t)
        label = int(self.labels[img])
        return {"x": self.images[img], "prompt": caption(label, self.templates[tpl]), "label": label}


class DigitsDataModule(L.LightningDataModule):
    """Captioned digits; the validation/reference set is every digit once with a held-out caption."""

    def __init__(self, image_size: int = 16, batch_size: int = 64, val_batch_size: int = 2048,
                 val_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.image_size, self.batch_size, self.val_batch_size = image_size, batch_size, val_batch_size
        self.val_size, self.seed = val_size, seed

    def setup(self, stage: str | None = None) -> None:
        images, labels = load_digit_images(self.image_size)
        self.train_set = CaptionedDigits(images, labels, TRAIN_TEMPLATES)
        if self.val_size is not None:
            keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed + 1))
            images, labels = images[keep[: self.val_size]], labels[keep[: self.val_size]]
        self.val_set = CaptionedDigits(images, labels, HELDOUT_TEMPLATES, all_pairs=False)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)
