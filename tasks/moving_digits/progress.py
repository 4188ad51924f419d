"""A plain-text progress line every few optimizer steps (tqdm bars do not reach redirected logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L


class StepLog(L.Callback):
    def __init__(self, every_n_batches: int = 25) -> None:
        self.every = every_n_batches
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.every:
            return
        logs = {k: f"{float(v):.4f}" for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        sys.stderr.write(f"batch {batch_idx + 1} step {trainer.global_step} {time.perf_counter() - self.start:.0f}s "
                         f"{logs}\n")
        sys.stderr.flush()
