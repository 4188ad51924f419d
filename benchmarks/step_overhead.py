"""Per-update overhead of ``unidistill fit`` (Lightning: hooks, logging, progress bar, optimizer wrappers) against
the bare engine loop on the same network, objective and batches, measured in one run with alternating rounds.

    python benchmarks/step_overhead.py                        # DMD2 and consistency on the digits teacher
    python benchmarks/step_overhead.py --batch 64 --rounds 5

Each round times ``--iterations`` training iterations (after ``--warmup`` untimed ones) twice: through a real
``unidistill fit`` (``UnidistillCLI`` with the config's trainer settings, progress bar and CSV logger on) and
through a plain loop over the same data loader calling ``Engine.step`` with plain AdamW. The time of an iteration
is the wall time from the end of one to the end of the next, so data loading, ``to_batch``, hooks, logging and the
optimizer steps are all inside it. The ratio is the median over rounds of (fit time / bare time) of the same round,
so a machine that slows down for a while slows both. Writes ``benchmarks/results/step_overhead.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidistill.bench import format_table, write_results  # noqa: E402
from unidistill.metrics import paired_ratio  # noqa: E402
from unidistill.runs import UnidistillCLI, build  # noqa: E402

CONFIGS = {"dmd2": "configs/digits/dmd2.yaml", "consistency": "configs/digits/consistency.yaml"}


class IterationClock(L.Callback):
    """Wall time between consecutive ``on_train_batch_end`` calls (the first ``warmup`` are dropped)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.stamps = warmup, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())

    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[self.warmup:], self.stamps[self.warmup + 1:], strict=False)]


def overrides(batch: int, fake_updates: int | None) -> list[str]:
    extra = [f"--data.init_args.batch_size={batch}", "--trainer.limit_val_batches=0",
             "--trainer.val_check_interval=1000000", "--trainer.enable_checkpointing=false"]
    if fake_updates is not None:
        extra.append(f"--model.objective.init_args.fake_updates_per_student={fake_updates}")
    return extra


def fit_round(config: str, extra: list[str], iterations: int, warmup: int, workdir: Path) -> float:
    clock = IterationClock(warmup)
    UnidistillCLI(args=["fit", "--config", config, *extra, f"--trainer.default_root_dir={workdir}",
                        f"--model.max_iterations={iterations + warmup + 1}", "--trainer.max_steps=-1",
                        "--trainer.enable_progress_bar=true", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                        f"--trainer.logger.save_dir={workdir}"],
                  trainer_defaults={"callbacks": [clock]})
    return sum(clock.seconds()[:iterations])


def bare_round(module, datamodule, iterations: int, warmup: int) -> float:
    engine, modality = module.engine, module.modality
    opts = engine.make_optimizers(module.learning_rate, module.role_learning_rates, module.betas, module.weight_decay)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    stamps, it = [], 0
    while len(stamps) < warmup + iterations + 1:
        for data in loader:
            batch = modality.to_batch(data)
            engine.set_learning_rates(opts, it, module.schedule)
            engine.step(batch, it, opts, grad_clip=module.grad_clip)
            it += 1
            stamps.append(time.perf_counter())
            if len(stamps) >= warmup + iterations + 1:
                break
    return stamps[-1] - stamps[warmup]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectives", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--fake-updates", type=int, default=5, help="DMD2 fake-score updates per student update")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per round and side")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/step_overhead.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.objectives:
            extra = overrides(args.batch, args.fake_updates if name == "dmd2" else None)
            module, dm = build(CONFIGS[name], [a for a in extra if a.startswith(("--model", "--data"))])
            module.train()
            fit_s, bare_s = [], []
            for r in range(args.rounds):
                fit_s.append(fit_round(CONFIGS[name], extra, args.iterations, args.warmup, Path(tmp) / f"{name}{r}"))
                bare_s.append(bare_round(module, dm, args.iterations, args.warmup))
                print(f"[step_overhead] {name} round {r}: fit {1000 * fit_s[-1] / args.iterations:.1f} ms, "
                      f"bare {1000 * bare_s[-1] / args.iterations:.1f} ms per iteration", flush=True)
            for who, times in (("fit", fit_s), ("bare engine loop", bare_s)):
                rows.append({"model": name, "solver": who, "nfe": 0, "batch": args.batch,
                             "ms_per_iteration": 1000 * statistics.median(times) / args.iterations})
            rows[-2]["fit_vs_bare"] = paired_ratio(fit_s, bare_s)
    print(format_table(rows))
    path = write_results(Path(args.out).stem, "python " + " ".join(sys.argv), rows, Path(args.out).parent,
                         {"quality_metric": None, "rounds": args.rounds, "iterations": args.iterations,
                          "threads": args.threads})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
