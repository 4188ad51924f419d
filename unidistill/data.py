"""A DataLoader that Lightning can checkpoint mid-epoch, so a resumed run sees exactly the same batches.

Lightning restores any train DataLoader that has ``state_dict``/``load_state_dict``. Lightning prefetches
one batch ahead, so the loader cannot count consumption itself; ``DistillationModule`` reports the
number of batches the training step has consumed through ``mark_consumed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochPermutationSampler(Sampler[int]):
    """A per-epoch permutation drawn from ``(seed, epoch)``, sharded by rank, able to start mid-epoch."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch, self.start = 0, 0
        self.start_epoch: int | None = None  # the epoch ``start`` belongs to (None: the next iterated epoch)

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        rank, world = self._rank_world()
        per_rank = self.length // world
        return order[rank * per_rank : (rank + 1) * per_rank]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A resume position applies only to the epoch it was saved in: a checkpoint taken after the last
        # batch of an epoch restarts in the next epoch (Lightning moves on without iterating the finished one),
        # which must then start from its beginning, not skip ``start`` samples of it.
        start = self.start if self.start_epoch in (None, self.epoch) else 0
        self.start, self.start_epoch = 0, None
        return iter(self.indices()[start:])

    def __len__(self) -> int:
        return self.length // self._rank_world()[1]


class ResumableDataLoader(DataLoader):
    """A shuffling DataLoader whose position is checkpointed (``{"epoch", "consumed"}`` batches)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("drop_last", True)
        sampler = EpochPermutationSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.consumed = 0

    def mark_consumed(self, epoch: int, batches: int) -> None:
        self.sampler.set_epoch(epoch)
        self.consumed = batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "consumed": int(self.consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        self.consumed = int(state["consumed"])
        self.sampler.start = self.consumed * int(self.batch_size or 1)
        self.sampler.start_epoch = int(state["epoch"])
