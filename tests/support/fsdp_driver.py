"""Run by integration/test_fsdp.py as ranks 0 and 1 of a 2-process group the test creates (like torchrun): the same
DMD2 gmm run three times, under Lightning's DDP (unsharded reference), under ``ModelParallelStrategy`` with FSDP2
``fully_shard`` (student and fake score sharded, teacher replicated), and the same with the teacher sharded too.

    python tests/support/fsdp_driver.py OUT_DIR STEPS

Each rank writes ``OUT_DIR/<run>/rank<r>.json``: the losses logged after every batch, for every parameter of
the student, fake score, teacher and the student's EMA its local and global element counts (a sharded one holds
half), the EMA's gathered parameters (sum and sum of squares per tensor) and a few samples drawn from the EMA.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from unidistill.cli import quiet_known_warnings  # noqa: E402
from unidistill.runs import UnidistillCLI  # noqa: E402


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append({k: float(v) for k, v in sorted(trainer.callback_metrics.items())
                            if k.startswith("train/")})


def shards(module) -> dict[str, list[int]]:
    out = {}
    for prefix, mod in (("student", module.student), ("fake_score", module.aux["fake_score"]),
                        ("teacher", module.teacher), ("ema", module.ema.module)):
        for name, p in mod.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            out[f"{prefix}.{name}"] = [local.numel(), p.numel()]
    return out


def summary(net) -> dict[str, list[float]]:
    out = {}
    for name, p in net.named_parameters():
        full = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double()
        out[name] = [float(full.sum()), float((full * full).sum())]
    return out


def ema_samples(module) -> list[float]:
    with torch.no_grad():
        out = module.sample_student(torch.arange(8) % 4, 8, 2, torch.Generator().manual_seed(0))
    return out.x.flatten().tolist()


RUNS = {
    "ddp": ["--trainer.strategy=ddp_find_unused_parameters_true"],
    "fsdp2": ["--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
              "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1"],
    "fsdp2_teacher": ["--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
                      "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
                      "--model.shard_teacher=true"],
}


def main() -> None:
    quiet_known_warnings()
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    for run, extra in RUNS.items():
        recorder = LossRecorder()
        cli = UnidistillCLI(
            args=["fit", "--config", str(ROOT / "configs" / "distributed" / "fsdp2.yaml"),
                  "--data.init_args.train_size=1024", "--data.init_args.val_size=64",
                  "--data.init_args.batch_size=64", "--data.init_args.val_batch_size=64",
                  "--trainer.devices=2", "--trainer.accelerator=cpu", f"--trainer.max_steps={steps}",
                  "--trainer.enable_checkpointing=false", "--trainer.logger=false",
                  "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=3",
                  "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1",
                  "--model.ema_decay=0.5", f"--trainer.default_root_dir={out / run}", *extra],
            trainer_defaults={"callbacks": [recorder]},
        )
        rank = cli.trainer.global_rank
        (out / run).mkdir(parents=True, exist_ok=True)
        (out / run / f"rank{rank}.json").write_text(json.dumps(
            {"losses": recorder.losses, "shards": shards(cli.model), "iteration": int(cli.model.iteration),
             "ema": summary(cli.model.ema.module),
             "student": summary(cli.model.student), "ema_samples": ema_samples(cli.model)}))


if __name__ == "__main__":
    main()
