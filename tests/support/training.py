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


def build_trained(local: Any, shipped_text: str, tmp: Any, solver: str, cache_args: tuple[str, ...] = ()) -> Any:
    """Build a local copy of a shipped config as the CLI does, with one fake-score update per student where it has
    several, and a tiny CLI-written teacher cache where it names one; train two steps. Returns the module and the
    batch it trained on."""
    from unidistill.cli import main
    from unidistill.runs import build

    extra = ["--model.objective.init_args.fake_updates_per_student=1"] if "fake_updates" in shipped_text else []
    if "TeacherCache" in shipped_text:
        root = tmp / "cache"
        main(["cache", "--config", str(local), "--out", str(root), "--samples", "4", "--steps", "2",
              "--shard-size", "4", "--solver", solver, *cache_args])
        extra.append(f"--model.objective.init_args.cache.init_args.root={root}")
    torch.manual_seed(0)
    module, dm = build(local, extra)
    return module, train_two_steps(module, dm)
