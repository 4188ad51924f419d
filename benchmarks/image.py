"""Digits text-to-image: the teacher against distilled students, in one run.

    python benchmarks/image.py                                  # distil + score (see --objectives)
    python benchmarks/image.py --skip-train                     # score existing runs/bench_image/*/last.ckpt

Rows: the teacher at its full schedule (DDIM, 50 steps; its best fd_digits is unguided, see
tasks/digits/weights/teacher/report.json) and with DPM-Solver++ at 4, 8 and 16 NFE, then every student at 1, 2
and 4 NFE: ``fd_digits`` (Fréchet distance in the task classifier's features, samples for held-out captions
against all 1,797 real digits), ``prompt_accuracy``, k-NN precision/recall, milliseconds per image (median of
timed batches of 64) and speed-up over the full teacher. Each student's distillation budget (CPU minutes of its
``unidistill fit``) is recorded; a student post-trained from shipped distilled weights (``student_init``, e.g. the
adversarial one) also records the budget of those weights and the sum. Writes benchmarks/results/image.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidistill.bench import compare, format_table, write_results  # noqa: E402
from unidistill.runs import build, load_checkpoint, reference_batch  # noqa: E402

TEACHER_RUNS = [("ddim", 50), ("dpm_solver_pp_2m", 4), ("dpm_solver_pp_2m", 8), ("dpm_solver_pp_2m", 16)]


def children_cpu_minutes() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) / 60


def distil(objective: str, runs: Path, extra: list[str]) -> dict:
    out = runs / objective
    before, start = children_cpu_minutes(), time.perf_counter()
    cmd = [sys.executable, "-m", "unidistill.cli", "fit", "--config", f"configs/digits/{objective}.yaml",
           f"--trainer.default_root_dir={out}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           *extra]
    subprocess.run(cmd, check=True, cwd=ROOT)
    budget = {"cpu_minutes": children_cpu_minutes() - before, "wall_minutes": (time.perf_counter() - start) / 60,
              "command": " ".join(cmd[2:]).replace(f"{ROOT}/", ""), "threads": os.environ.get("OMP_NUM_THREADS")}
    (out / "budget.json").write_text(json.dumps(budget, indent=2))
    return budget


def init_budget(objective: str) -> dict | None:
    """The distillation budget of the student a config starts from (``student_init``), read from the
    ``report.json`` shipped beside those weights: a post-trained student's budget includes its initialisation's."""
    import yaml

    config = yaml.safe_load((ROOT / f"configs/digits/{objective}.yaml").read_text())
    init = config["model"]["modality"].get("init_args", {}).get("student_init")
    report = ROOT / str(init) / "report.json" if init else None
    if report is None or not report.is_file():
        return None
    return {"from": init, "cpu_minutes": json.loads(report.read_text())["cpu_minutes"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objectives", nargs="*", default=["consistency", "dmd2", "progressive", "regression", "reflow",
                                                       "adversarial"])
    p.add_argument("--samples", type=int, default=1797)
    p.add_argument("--runs", default="runs/bench_image")
    p.add_argument("--skip-train", action="store_true", help="score runs/<objective>/ as they are (budgets from "
                   "their budget.json)")
    p.add_argument("--extra", nargs="*", default=[], help="extra `unidistill fit` overrides for every student")
    args = p.parse_args()
    torch.manual_seed(0)
    runs = ROOT / args.runs
    budgets = {}
    for obj in args.objectives:
        if not args.skip_train:
            budgets[obj] = distil(obj, runs, args.extra)
            print(f"{obj}: {budgets[obj]['cpu_minutes']:.1f} CPU min")
        elif (runs / obj / "budget.json").is_file():
            budgets[obj] = json.loads((runs / obj / "budget.json").read_text())
        init = init_budget(obj)
        if init is not None and obj in budgets:
            budgets[obj]["init"] = init
            budgets[obj]["cpu_minutes_with_init"] = budgets[obj]["cpu_minutes"] + init["cpu_minutes"]
    module, dm = build(ROOT / "configs/digits/consistency.yaml")
    module.eval()
    x, cond = reference_batch(module, dm, args.samples)
    rows = compare(module, cond, x, [], TEACHER_RUNS, seeds=[0], timing_batch=64, timing_repeats=3)
    full_ms = rows[0]["ms_per_sample"]
    for obj in args.objectives:
        ckpt = runs / obj / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            print(f"skipping {obj}: no checkpoint at {ckpt}")
            continue
        m, _ = build(ROOT / f"configs/digits/{obj}.yaml")
        load_checkpoint(m, ckpt)
        m.eval()
        student_rows = compare(m, cond, x, [1, 2, 4], [], seeds=[0], timing_batch=64, timing_repeats=3,
                               model_name=obj)
        for r in student_rows:
            r["distill_cpu_minutes"] = budgets.get(obj, {}).get("cpu_minutes")
            if "init" in budgets.get(obj, {}):
                r["distill_cpu_minutes_with_init"] = budgets[obj]["cpu_minutes_with_init"]
        rows += student_rows
    for r in rows:
        r["speedup_vs_teacher"] = full_ms / r["ms_per_sample"]
    print(format_table(rows))
    teacher_fd = rows[0]["fd_digits"]
    students = [r for r in rows if r["model"] != "teacher"]
    dpm4 = next(r for r in rows if r["model"] == "teacher" and r["nfe"] == 4)
    summary = {
        "teacher_full_fd_digits": teacher_fd,
        "teacher_guidance": module.teacher_guidance,
        "best_1nfe_ratio": min((r["fd_digits"] / teacher_fd for r in students if r["nfe"] == 1), default=None),
        "best_2nfe_ratio": min((r["fd_digits"] / teacher_fd for r in students if r["nfe"] == 2), default=None),
        "every_1nfe_beats_teacher_dpm_4nfe": all(r["fd_digits"] < dpm4["fd_digits"] for r in students
                                                 if r["nfe"] == 1) if students else None,
    }
    print(summary)
    command = "python benchmarks/image.py " + " ".join(sys.argv[1:])
    path = write_results("image", command, rows, ROOT / "benchmarks/results",
                         {"budgets": budgets, "summary": summary, "threads": os.environ.get("OMP_NUM_THREADS")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
