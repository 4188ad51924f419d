"""Teacher vs distilled students on the 8-D anisotropic Gaussian-mixture task, measured in one run.

    python benchmarks/gmm.py                       # every configs/gmm/*.yaml except teacher.yaml
    python benchmarks/gmm.py --jobs 2              # two distillations at a time (one thread each)
    python benchmarks/gmm.py --objectives consistency --max-steps 3000

Each objective's student is distilled from the exact analytic teacher with its config by ``unidistill fit``
in a child process (``--jobs`` at a time, one thread each; the child's CPU time is read from the kernel, so
parallel runs do not inflate it). Then, in this one process, the teacher rows (1, 2, 4 and 64 NFE) and every
student's rows (1, 2, 4 NFE) are scored with sliced Wasserstein / MMD / mode coverage against the same
held-out mixture samples (``--samples`` per measurement, averaged over ``--seeds``). Writes
``benchmarks/results/gmm.json`` and prints a table plus the issues' target ratios. ``--reuse`` keeps a student
distilled earlier from the same config (comments ignored) and budget (``runs/bench/gmm/<name>/distill.json`` records its
key, date and times) and only redoes the scoring, so the teacher and every student are still measured together.
The key does not cover the library's code: after changing an objective, distil again (drop ``--reuse``).
Each student is judged against the teacher it distils, measured in the same run: the analytic mixture or the
shipped MLP (adversarial distillation needs a network's features), guided when the objective distils
classifier-free guidance (``guidance_scale`` != 1; a guided step costs 2 NFE, so the 1-NFE student meets the
teacher's 1-step, 2-NFE row). ``sw_vs_analytic_64`` also puts every row against the exact teacher at 64 NFE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidistill.bench import compare, format_table, write_results  # noqa: E402
from unidistill.runs import build, load_checkpoint, reference_batch  # noqa: E402

TEACHER_RUNS = [("ddim", 1), ("ddim", 2), ("ddim", 4), ("heun", 64), ("dpm_solver_pp_2m", 64)]
# The issues' targets: (objective, NFE, at least this much better than the teacher at that NFE, at most this
# times the 64-NFE teacher); every mode must be covered. #2 core, #3 trajectory family, #4 distribution family.
TARGETS = [
    ("consistency", 1, 5.0, None), ("consistency", 4, None, 2.0),
    *((name, 1, 5.0, 2.5) for name in ("scm", "reflow", "flow_map", "regression", "progressive")),
    ("phased", 2, 5.0, 2.5),
    *((name, 1, 5.0, 2.5) for name in ("dmd2", "decoupled_dmd", "fdiv", "sid", "adversarial")),
]


def fit_command(config: Path, steps: int | None, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "unidistill.cli", "fit", "--config", str(config),
           f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
           "--trainer.val_check_interval=100000", "--trainer.logger=false"]
    return cmd + ([f"--trainer.max_steps={steps}"] if steps else [])


def config_key(config: Path, steps: int | None) -> str:
    """What a distilled student depends on: the parsed config (comments and layout ignored) and the budget."""
    settings = json.dumps(yaml.safe_load(config.read_text()), sort_keys=True)
    return hashlib.sha256(f"{settings}\nmax_steps={steps}".encode()).hexdigest()


def distil_all(names: list[str], steps: int | None, jobs: int, reuse: bool = False) -> dict[str, dict]:
    """Run ``unidistill fit`` per config, ``jobs`` at a time; returns wall and CPU minutes and the checkpoint per
    name. With ``reuse``, a student distilled earlier from the same config (comments ignored) and step budget is kept
    (its recorded times with it) instead of distilled again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done: dict[str, dict] = {}
    pending: list[tuple[str, Path, str]] = []
    for name in names:
        out = ROOT / "runs" / "bench" / "gmm" / name
        config = ROOT / "configs" / "gmm" / f"{name}.yaml"
        key = config_key(config, steps)
        record = out / "distill.json"
        if reuse and record.is_file() and json.loads(record.read_text())["key"] == key:
            done[name] = json.loads(record.read_text()) | {"ckpt": out / "checkpoints" / "last.ckpt", "reused": True}
            print(f"{name}: reusing the student distilled {done[name]['date']}", flush=True)
        else:
            pending.append((name, out, key))
    running: dict[int, tuple] = {}
    while pending or running:
        while pending and len(running) < jobs:
            name, out, key = pending.pop(0)
            shutil.rmtree(out, ignore_errors=True)  # Lightning would write last-v1.ckpt beside an old last.ckpt
            out.mkdir(parents=True)
            log = open(out / "fit.log", "w")
            proc = subprocess.Popen(fit_command(ROOT / "configs" / "gmm" / f"{name}.yaml", steps, out),
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (name, out, key, log, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, out, key, log, start = running.pop(pid)
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"distilling {name!r} failed; see {out / 'fit.log'}")
        record = {"key": key, "date": time.strftime("%Y-%m-%d %H:%M"), "wall": (time.perf_counter() - start) / 60,
                  "cpu": (usage.ru_utime + usage.ru_stime) / 60}
        (out / "distill.json").write_text(json.dumps(record))
        done[name] = record | {"ckpt": out / "checkpoints" / "last.ckpt", "reused": False}
        print(f"{name}: distilled in {record['cpu']:.1f} CPU min ({record['wall']:.1f} wall)", flush=True)
    return done


def teacher_key(module) -> tuple[str, float | None]:
    """(teacher source, guidance) the student distils: the analytic mixture or an MLP weights file, and the
    objective's classifier-free guidance when it is not 1."""
    source = module.modality.teacher_source
    w = getattr(module.objective, "guidance_scale", 1.0)
    return ("analytic" if source == "analytic" else Path(source).stem), (None if w == 1.0 else float(w))


def add_ratios(rows: list[dict]) -> None:
    """Each row against the teacher it distils (same source and guidance): at the same number of sequential
    steps (a guided call costs 2 NFE) and at its best 64-step-budget run; speed-up against the unguided
    64-NFE Heun run of the analytic teacher."""
    def teacher_rows(key):
        return [r for r in rows if r["model"] == "teacher" and (r["teacher"], r.get("guidance")) == key]

    plain = teacher_rows(("analytic", None))
    ref64 = min((r for r in plain if r["nfe"] >= 63), key=lambda r: r["sliced_wasserstein"])
    for r in rows:
        key = (r["teacher"], r.get("guidance"))
        cost = 1 if key[1] is None else 2
        same = r if r["model"] == "teacher" else next(
            (t for t in teacher_rows(key) if t["nfe"] == cost * r["nfe"] and t["solver"] == "ddim"), None)
        best = min((t for t in teacher_rows(key) if t["nfe"] >= 63 * cost), key=lambda t: t["sliced_wasserstein"])
        r["sw_vs_teacher_same_nfe"] = same["sliced_wasserstein"] / r["sliced_wasserstein"] if same else None
        r["sw_vs_teacher_64"] = r["sliced_wasserstein"] / best["sliced_wasserstein"]
        r["sw_vs_analytic_64"] = r["sliced_wasserstein"] / ref64["sliced_wasserstein"]
        r["speedup_vs_teacher"] = ref64["ms_per_sample"] / r["ms_per_sample"]


def target_report(rows: list[dict]) -> list[str]:
    lines = []
    for name, nfe, better, worse in TARGETS:
        r = next((r for r in rows if r["model"] == name and r["nfe"] == nfe), None)
        if r is None:
            continue
        ok = ((better is None or r["sw_vs_teacher_same_nfe"] >= better)
              and (worse is None or r["sw_vs_teacher_64"] <= worse) and r["mode_coverage"] == 1.0)
        guided = "" if r.get("guidance") is None else f", guided w={r['guidance']}"
        against = f" (teacher {r['teacher']}{guided})"
        lines.append(f"{name} @ {nfe} NFE{against}: {r['sw_vs_teacher_same_nfe']:.1f}x better than teacher "
                     f"same NFE{'' if better is None else f' (target >= {better}x)'}, {r['sw_vs_teacher_64']:.2f}x "
                     f"teacher-64{'' if worse is None else f' (target <= {worse}x)'}, modes "
                     f"{r['mode_coverage']:.2f}: {'met' if ok else 'MISSED'}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="*", help="config names under configs/gmm (default: all but teacher)")
    p.add_argument("--max-steps", type=int, help="override each config's trainer.max_steps")
    p.add_argument("--jobs", type=int, default=1, help="distillations run at the same time")
    p.add_argument("--reuse", action="store_true",
                   help="keep students distilled earlier from the same config and budget (scoring is redone)")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gmm.json"))
    args = p.parse_args()
    names = args.objectives or sorted(c.stem for c in (ROOT / "configs" / "gmm").glob("*.yaml") if c.stem != "teacher")
    trained = distil_all(names, args.max_steps, args.jobs, args.reuse)
    rows, measured = [], set()
    for name in names:
        module, dm = build(ROOT / "configs" / "gmm" / f"{name}.yaml")
        load_checkpoint(module, trained[name]["ckpt"])
        module = module.eval()
        module._sync_teacher_device()
        x, cond = reference_batch(module, dm, args.samples)
        key = teacher_key(module)  # each student is judged against its own teacher, guided as it distils it
        runs = []
        if key not in measured:
            measured.add(key)
            guided = [("ddim", 2 * k, key[1]) for k in (1, 2, 4)] + [("heun", 128, key[1])]
            runs = TEACHER_RUNS if key[1] is None else guided
        part = compare(module, cond, x, student_nfes=[1, 2, 4], teacher_runs=runs,
                       seeds=range(args.seeds), model_name=name)
        for r in part:
            r["teacher"] = key[0]
            if key[1] is not None:
                r["guidance"] = key[1]
            if r["model"] != "teacher":
                r["distill_cpu_minutes"] = trained[name]["cpu"]
                r["distill_wall_minutes"] = trained[name]["wall"]
                r["distilled"] = trained[name]["date"]
                r["distill_steps"] = int(module.iteration)
        rows += part
    add_ratios(rows)
    print(format_table(rows))
    report = target_report(rows)
    print("\n".join(report))
    command = "python benchmarks/gmm.py " + " ".join(sys.argv[1:])
    path = write_results(
        Path(args.out).stem,
        command,
        rows,
        Path(args.out).parent,
        {
            "task": "gmm dim=8, 8 anisotropic components, exact analytic teacher",
            "targets": report,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
