"""Lightning callbacks that guard distributed training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class RankAgreementCheck(L.Callback):
    """Fail fast when data-parallel ranks disagree on the student's weights.

    Every ``every_n_batches`` batches, each rank reduces a float64 checksum of the student parameters and
    compares it with rank 0's; DDP should keep them identical bit for bit. Off the critical path for
    single-process runs.
    """

    def __init__(self, every_n_batches: int = 1) -> None:
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size == 1 or (batch_idx + 1) % self.every_n_batches:
            return
        params = torch.cat([p.detach().double().reshape(-1) for p in pl_module.student.parameters()])
        checksum = torch.stack(
            [params.sum(), (params * torch.arange(1, params.numel() + 1, dtype=torch.float64)).sum()]
        )
        reference = trainer.strategy.broadcast(checksum.clone(), src=0)
        if not torch.equal(checksum, reference):
            raise RuntimeError(
                f"rank {trainer.global_rank} student weights diverged from rank 0 at batch {batch_idx} "
                f"(checksum {checksum.tolist()} vs {reference.tolist()})"
            )
