"""Shared checks for config tests: a config's real module trains (finite logs, the student moves)."""

from __future__ import annotations

from typing import Any

import torch


def train_two_steps(module: Any, datamodule: Any) -> Any:
    """Two engine steps on the first two training examples; asserts finite logs and a changed student, and
    returns the batch."""
    datamodule.setup("fit")
    data = next(iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=2)))
    batch = module.modality.to_batch(data)
    opts = module.engine.make_optimizers(module.learning_rate)
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    for it in range(2):
        logs = module.engine.step(batch, it, opts, grad_clip=1.0)
        assert logs and all(torch.isfinite(v) for v in logs.values())
    after = module.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    return batch
