"""Teacher vs distilled students on the 8-D anisotropic Gaussian-mixture task, measured in one run.

    python benchmarks/gmm.py                       # every configs/gmm/*.yaml except teacher.yaml
    python benchmarks/gmm.py --objectives consistency --max-steps 3000

For each objective the student is distilled from the exact analytic teacher with its config (budget:
``--max-steps`` optimizer steps of the student, wall time recorded), then teacher rows (1, 2, 4 and 64
NFE) and student rows (1, 2, 4 NFE) are scored with sliced Wasserstein / MMD / mode coverage against
held-out mixture samples (``--samples`` per measurement, averaged over ``--seeds``). Writes
``benchmarks/results/gmm.json`` and prints a table plus the issue's target ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidistill.bench import compare, format_table, write_results  # noqa: E402
from unidistill.cli import UnidistillCLI, reference_batch  # noqa: E402

TEACHER_RUNS = [("ddim", 1), ("ddim", 2), ("ddim", 4), ("heun", 64), ("dpm_solver_pp_2m", 64)]


def distil(config: Path, steps: int | None, out: Path) -> tuple[UnidistillCLI, float]:
    args = [
        "fit",
        "--config",
        str(config),
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=100000",
        "--trainer.logger=false",
    ]
    if steps:
        args.append(f"--trainer.max_steps={steps}")
    start = time.perf_counter()
    cli = UnidistillCLI(args=args)
    return cli, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="*", help="config names under configs/gmm (default: all but teacher)")
    p.add_argument("--max-steps", type=int, help="override each config's trainer.max_steps")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gmm.json"))
    args = p.parse_args()
    names = args.objectives or sorted(c.stem for c in (ROOT / "configs" / "gmm").glob("*.yaml") if c.stem != "teacher")
    rows, budgets = [], {}
    for i, name in enumerate(names):
        cli, seconds = distil(
            ROOT / "configs" / "gmm" / f"{name}.yaml", args.max_steps, ROOT / "runs" / "bench" / "gmm" / name
        )
        module = cli.model.eval()
        module._sync_teacher_device()
        x, cond = reference_batch(module, cli.datamodule, args.samples)
        part = compare(
            module,
            cond,
            x,
            student_nfes=[1, 2, 4],
            teacher_runs=TEACHER_RUNS if i == 0 else [],
            seeds=range(args.seeds),
            model_name=name,
        )
        for r in part:
            if r["model"] != "teacher":
                r["distill_cpu_minutes"] = seconds / 60
                r["distill_steps"] = int(module.iteration)
        rows += part
        budgets[name] = seconds / 60
        print(f"{name}: distilled in {seconds / 60:.1f} min", flush=True)
    teacher = {r["nfe"]: r for r in rows if r["model"] == "teacher"}
    ref64 = min((r for r in rows if r["model"] == "teacher" and r["nfe"] >= 63), key=lambda r: r["sliced_wasserstein"])
    for r in rows:
        same = teacher.get(r["nfe"])
        r["sw_vs_teacher_same_nfe"] = same["sliced_wasserstein"] / r["sliced_wasserstein"] if same else None
        r["sw_vs_teacher_64"] = r["sliced_wasserstein"] / ref64["sliced_wasserstein"]
    # the shared teacher timing reference is the 64-NFE Heun run
    for r in rows:
        r["speedup_vs_teacher"] = ref64["ms_per_sample"] / r["ms_per_sample"]
    print(format_table(rows))
    command = "python benchmarks/gmm.py " + " ".join(sys.argv[1:])
    path = write_results(
        Path(args.out).stem,
        command,
        rows,
        Path(args.out).parent,
        {
            "task": "gmm dim=8, 8 anisotropic components, exact analytic teacher",
            "targets": "1-NFE student sw >= 5x better than teacher 1-NFE; 4-NFE student <= 2x teacher 64-NFE",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
