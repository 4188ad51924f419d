"""Lightning callbacks that guard distributed training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


def _trainable_roles(pl_module: Any) -> dict[str, nn.Module]:
    """Every role that an optimizer steps (the student first); a module without an objective (any other
    LightningModule with a ``student``) is checked on its student alone."""
    roles = getattr(getattr(pl_module, "objective", None), "trainable_roles", ("student",))
    get = getattr(pl_module, "role_module", None)
    return {r: (get(r) if get is not None else getattr(pl_module, r)) for r in roles}


class RankAgreementCheck(L.Callback):
    """Fail fast when data-parallel ranks disagree on the weights of any trainable role.

    Every ``every_n_batches`` batches, each rank reduces a float64 checksum of the parameters of every
    trainable role (the student, and e.g. a fake score, a discriminator, a log-variance head) and compares
    it with rank 0's; DDP should keep them identical bit for bit. The roles' checksums go in one broadcast.
    Off the critical path for single-process runs.
    """

    def __init__(self, every_n_batches: int = 1) -> None:
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.world_size == 1 or (batch_idx + 1) % self.every_n_batches:
            return
        roles = _trainable_roles(pl_module)
        sums = []
        for module in roles.values():
            params = torch.cat([p.detach().double().reshape(-1) for p in module.parameters()])
            weights = torch.arange(1, params.numel() + 1, dtype=torch.float64, device=params.device)
            sums.append(torch.stack([params.sum(), (params * weights).sum()]))
        checksum = torch.stack(sums)
        reference = trainer.strategy.broadcast(checksum.clone(), src=0)
        for (role, mine), ref in zip(zip(roles, checksum, strict=True), reference, strict=True):
            if not torch.equal(mine, ref):
                raise RuntimeError(
                    f"rank {trainer.global_rank} {role} weights diverged from rank 0 at batch {batch_idx} "
                    f"(checksum {mine.tolist()} vs {ref.tolist()})"
                )
