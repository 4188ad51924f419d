"""The shapes task's data: a bank of procedural shapes (surface points, structure, structured latents, captions)
and the DataModule that serves it as point clouds, stage-1 structures or stage-2 latents.

Training shapes come from seeds ``0, 1, 2, ...`` with training captions; validation and evaluation shapes from a
disjoint seed range with held-out captions. A bank is generated once (about 10 ms a shape) and cached as
safetensors under ``cache_dir`` (default ``$UNIDISTILL_CACHE`` or ``~/.cache/unidistill``), keyed by everything
that changes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path as FilePath

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from modalities.shape.structure import VoxelGrid
from tasks.shapes.catalog import CONCEPTS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES, make_mesh, sample_surface
from tasks.shapes.text import caption_embeddings, caption_index
from unidistill.data import ResumableDataLoader

log = logging.getLogger(__name__)
#: first seed of the held-out shapes (training shapes use seeds below it)
HELD_OUT_SEED = 10_000_000
VERSION = 1
REPRESENTATIONS = ("points", "structure", "latent")
#: shapes per cache file
BLOCK = 512


@dataclass
class ShapeBank:
    """``n`` shapes: surface points ``[n, P, 3]``, occupancy ``[n, G^3]`` (bool), structured latents
    ``[n, G^3, F]``, concept and caption indices ``[n]`` (into ``catalog.all_captions()``)."""

    points: Tensor
    occupancy: Tensor
    latents: Tensor
    concepts: Tensor
    captions: Tensor

    FIELDS = ("points", "occupancy", "latents", "concepts", "captions")

    def __len__(self) -> int:
        return self.points.shape[0]

    def structures(self, grid: int) -> Tensor:
        """Occupancy as stage-1 latents ``[n, G, G, G]``: +1 active, -1 empty."""
        return self.occupancy.reshape(-1, grid, grid, grid).float() * 2 - 1


def _shape(seed: int, held_out: bool, grid: VoxelGrid, num_points: int, dense: int) -> tuple:
    mesh, concept = make_mesh(seed)
    surface = sample_surface(mesh, dense, seed)
    occ, latents = grid.encode(surface)
    rng = np.random.default_rng(seed + 1)
    phrase = int(rng.integers(len(CONCEPTS[concept].phrases)))
    if held_out:
        text = HELDOUT_TEMPLATES[int(rng.integers(len(HELDOUT_TEMPLATES)))].format(p=CONCEPTS[concept].phrases[0])
    else:
        text = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))].format(p=CONCEPTS[concept].phrases[phrase])
    return torch.from_numpy(surface[:num_points]), occ, latents, concept, caption_index(text)


def make_bank(start: int, count: int, held_out: bool, grid: VoxelGrid, num_points: int = 1024,
              dense: int = 8192) -> ShapeBank:
    """Shapes ``start .. start + count - 1`` (seeds), each from its own seed only."""
    parts = [_shape(start + i, held_out, grid, num_points, dense) for i in range(count)]
    return ShapeBank(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]),
                     torch.stack([p[2] for p in parts]), torch.tensor([p[3] for p in parts]),
                     torch.tensor([p[4] for p in parts]))


def cache_root(cache_dir: str | None = None) -> FilePath:
    return FilePath(cache_dir or os.environ.get("UNIDISTILL_CACHE") or FilePath.home() / ".cache" / "unidistill")


def load_bank(start: int, count: int, held_out: bool, grid: VoxelGrid, num_points: int = 1024,
              dense: int = 8192, cache_dir: str | None = None) -> ShapeBank:
    """``make_bank`` through the on-disk cache (``cache_dir=""`` disables it), which stores blocks of ``BLOCK``
    consecutive seeds, so banks of any size or offset share what was generated before."""
    if cache_dir == "":
        return make_bank(start, count, held_out, grid, num_points, dense)
    first, last = start // BLOCK, (start + count - 1) // BLOCK
    blocks = [_cached_block(b * BLOCK, held_out, grid, num_points, dense, cache_dir) for b in range(first, last + 1)]
    lo = start - first * BLOCK
    return ShapeBank(*(torch.cat([getattr(b, f) for b in blocks])[lo:lo + count] for f in ShapeBank.FIELDS))


def _cached_block(start: int, held_out: bool, grid: VoxelGrid, num_points: int, dense: int,
                  cache_dir: str | None) -> ShapeBank:
    from safetensors.torch import load_file, save_file

    key = {"v": VERSION, "start": start, "count": BLOCK, "held_out": held_out, "grid": grid.grid,
           "ppv": grid.points_per_voxel, "points": num_points, "dense": dense, "concepts": [c.name for c in CONCEPTS]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "shapes" / f"bank_{digest}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return ShapeBank(t["points"].float(), t["occupancy"], t["latents"].float(), t["concepts"], t["captions"])
    log.info("generating shapes %d..%d (cached in %s)", start, start + BLOCK - 1, path.parent)
    bank = make_bank(start, BLOCK, held_out, grid, num_points, dense)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"points": bank.points.half(), "occupancy": bank.occupancy, "latents": bank.latents.half(),
               "concepts": bank.concepts, "captions": bank.captions}, str(tmp))
    os.replace(tmp, path)
    return ShapeBank(bank.points.half().float(), bank.occupancy, bank.latents.half().float(), bank.concepts,
                     bank.captions)


class ShapeItems(Dataset):
    """A bank as training/validation items of one representation (see ``ShapesDataModule``). With ``repeats``,
    item ``i`` is shape ``i % n`` and its point subset is drawn from seed ``i`` (a fresh subset per pass, yet
    every item is a pure function of its index, so a resumed run sees the same data)."""

    def __init__(self, bank: ShapeBank, representation: str, grid: VoxelGrid, num_points: int,
                 repeats: int = 1, random_subsets: bool = True) -> None:
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {representation!r}; valid: {', '.join(REPRESENTATIONS)}")
        if num_points > bank.points.shape[1]:
            raise ValueError(f"num_points {num_points} exceeds the {bank.points.shape[1]} points stored per shape")
        self.bank, self.representation, self.grid, self.num_points = bank, representation, grid, num_points
        self.repeats, self.random_subsets = repeats, random_subsets
        self.embeddings = caption_embeddings()
        self.structures = bank.structures(grid.grid)

    def __len__(self) -> int:
        return len(self.bank) * self.repeats

    def __getitem__(self, i: int) -> dict:
        k = i % len(self.bank)
        cond = self.embeddings[int(self.bank.captions[k])]
        if self.representation == "points":
            pts = self.bank.points[k]
            if self.random_subsets:
                pts = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(i))[:self.num_points]]
            return {"x": pts[:self.num_points], "cond": cond}
        if self.representation == "structure":
            return {"x": self.structures[k], "cond": cond}
        mask = self.bank.occupancy[k].float()
        return {"x": self.bank.latents[k], "cond": {"text": cond, "mask": mask}, "mask": mask}


def reference_set(representation: str, count: int, grid: VoxelGrid | None = None, num_points: int = 256,
                  cache_dir: str | None = None, offset: int = 0) -> tuple[Tensor, object, ShapeBank]:
    """Held-out shapes ``offset .. offset + count - 1`` as latents of ``representation`` with their conditions
    (the validation order), and the bank they come from."""
    grid = grid or VoxelGrid()
    bank = load_bank(HELD_OUT_SEED + offset, count, True, grid, cache_dir=cache_dir)
    items = ShapeItems(bank, representation, grid, num_points, random_subsets=False)
    rows = [items[i] for i in range(count)]
    x = torch.stack([r["x"] for r in rows])
    if representation == "latent":
        cond = {"text": torch.stack([r["cond"]["text"] for r in rows]), "mask": torch.stack([r["mask"] for r in rows])}
    else:
        cond = torch.stack([r["cond"] for r in rows])
    return x, cond, bank


class ShapesDataModule(L.LightningDataModule):
    """Captioned procedural shapes as one representation:

    * ``points``: ``{"x": [num_points, 3], "cond": [384]}`` (a random subset of the stored surface points);
    * ``structure``: ``{"x": [G, G, G] in {-1, +1}, "cond": [384]}``;
    * ``latent``: ``{"x": [G^3, F], "cond": {"text": [384], "mask": [G^3]}, "mask": [G^3]}`` (the occupancy is
      both the stage-2 network's input and the batch's token mask).
    """

    def __init__(self, representation: str = "points", train_size: int = 8000, val_size: int = 256,
                 batch_size: int = 32, val_batch_size: int = 256, num_points: int = 256, grid: int = 8,
                 points_per_voxel: int = 4, repeats: int = 16, seed: int = 0, cache_dir: str | None = None) -> None:
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {representation!r}; valid: {', '.join(REPRESENTATIONS)}")
        self.representation, self.train_size, self.val_size = representation, train_size, val_size
        self.batch_size, self.val_batch_size, self.num_points = batch_size, val_batch_size, num_points
        self.grid, self.repeats, self.seed, self.cache_dir = VoxelGrid(grid, points_per_voxel), repeats, seed, cache_dir

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_set"):
            train = load_bank(0, self.train_size, False, self.grid, cache_dir=self.cache_dir)
            val = load_bank(HELD_OUT_SEED, self.val_size, True, self.grid, cache_dir=self.cache_dir)
            self.train_set = ShapeItems(train, self.representation, self.grid, self.num_points, self.repeats)
            self.val_set = ShapeItems(val, self.representation, self.grid, self.num_points, random_subsets=False)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)

