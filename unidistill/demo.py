"""``unidistill demo``: the README's main job. Distil the default task (digits consistency distillation), then print
the teacher against the student and write the comparison images, saying where the time went.

The teacher's quality at its full schedule is the slow part of the table and does not change between runs of the
same teacher: it is measured once (``unidistill demo --write-teacher-reference``) and shipped beside the teacher's
weights as ``teacher_reference.json``. Each demo re-measures a small ``check`` subset and uses the file only when
that subset reproduces it and the teacher's fingerprint matches; otherwise it measures the teacher in the run.
Timing is always measured in the run, teacher and student alike.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from unidistill.bench import parse_teacher_runs, run_bench, write_results
from unidistill.module import DistillationModule
from unidistill.runs import UnidistillCLI, build, reference_batch

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits" / "consistency.yaml"

DEMO_TEACHER_REFERENCE = Path("tasks/digits/weights/teacher/teacher_reference.json")


def teacher_quality(module: DistillationModule, datamodule: L.LightningDataModule, specs: list[str], samples: int,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each teacher run's NFE and metrics on the first ``samples`` held-out references (one seed)."""
    module.eval()
    module._sync_teacher_device()
    x, cond = reference_batch(module, datamodule, samples)
    out = {}
    for (solver, nfe), spec in zip(parse_teacher_runs(specs), specs, strict=True):
        result = module.sample_teacher(cond, x.shape[0], nfe, torch.Generator().manual_seed(seed), solver=solver)
        with torch.no_grad():
            metrics = module.modality.metrics(result.x, cond, x)
        out[spec] = {"nfe": result.nfe, "metrics": {k: float(v) for k, v in metrics.items()}}
        print(f"  teacher {spec}: {', '.join(f'{k} {v:.4g}' for k, v in metrics.items())}", flush=True)
    return out


def write_teacher_reference(module: DistillationModule, datamodule: L.LightningDataModule, specs: list[str],
                            samples: int, check_samples: int, path: Path, command: str) -> None:
    from unidistill.cache import teacher_fingerprint

    print(f"teacher reference: {samples} samples per run, then the {check_samples}-sample check", flush=True)
    payload = {"command": command, "teacher": teacher_fingerprint(module.teacher), "samples": samples, "seed": 0,
               "runs": teacher_quality(module, datamodule, specs, samples),
               "check": {"samples": check_samples, "runs": teacher_quality(module, datamodule, specs, check_samples)}}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def verified_teacher_reference(module: DistillationModule, datamodule: L.LightningDataModule, specs: list[str],
                               samples: int, path: Path, rtol: float = 0.05) -> tuple[dict | None, str]:
    """The shipped teacher numbers as ``compare(known_teacher=...)`` takes them, if the file is for this teacher,
    these runs and sample count, and a fresh ``check`` subset reproduces its stored values; else ``None`` and why."""
    from unidistill.cache import teacher_fingerprint

    if not path.is_file():
        return None, f"no teacher reference at {path}"
    ref = json.loads(path.read_text())
    if ref.get("teacher") != teacher_fingerprint(module.teacher):
        return None, f"{path} was measured for another teacher"
    if ref.get("samples") != samples or any(spec not in ref["runs"] for spec in specs):
        return None, f"{path} holds {ref.get('samples')} samples of {sorted(ref['runs'])}, not {samples} of {specs}"
    check = ref["check"]
    print(f"re-checking the shipped teacher numbers ({path}) on {check['samples']} samples:", flush=True)
    fresh = teacher_quality(module, datamodule, specs, check["samples"])
    for spec in specs:
        for key, want in check["runs"][spec]["metrics"].items():
            have = fresh[spec]["metrics"].get(key)
            if have is None or abs(have - want) > rtol * abs(want) + 1e-3:
                return None, f"{path} is stale: teacher {spec} {key} is {have} now, {want} in the file"
    known = {(solver, nfe): {**ref["runs"][spec], "source": str(path)}
             for (solver, nfe), spec in zip(parse_teacher_runs(specs), specs, strict=True)}
    return known, f"shipped teacher numbers verified on {check['samples']} samples"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="unidistill demo", description="distil the default task and compare")
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--samples", type=int, default=1000, help="reference samples scored per row")
    p.add_argument("--teacher", nargs="*", default=["ddim:50", "dpm_solver_pp_2m:4", "dpm_solver_pp_2m:8"],
                   help="teacher runs as SOLVER:NFE (a guided step costs 2 NFE)")
    p.add_argument("--nfes", nargs="*", type=int, default=[1, 2, 4], help="student NFEs")
    p.add_argument("--teacher-reference", default=str(DEMO_TEACHER_REFERENCE),
                   help="the teacher's numbers measured once (timing is always measured in this run)")
    p.add_argument("--recompute-teacher", action="store_true", help="measure the teacher's quality in this run")
    p.add_argument("--write-teacher-reference", action="store_true",
                   help="only measure the teacher runs on --samples references and write --teacher-reference")
    p.add_argument("--check-samples", type=int, default=64)
    args, overrides = p.parse_known_args(argv)
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"demo config not found at {args.config!r}; run from a source checkout")
    parse_teacher_runs(args.teacher)
    reference = Path(args.teacher_reference)
    if args.write_teacher_reference:
        module, dm = build(args.config, overrides)
        write_teacher_reference(module, dm, args.teacher, args.samples, args.check_samples, reference,
                                "unidistill demo " + " ".join(argv))
        return
    phases: dict[str, float] = {}
    start = time.perf_counter()
    cli = UnidistillCLI(args=["fit", "--config", args.config, f"--trainer.default_root_dir={args.out}", *overrides])
    module, dm = cli.model, cli.datamodule
    phases["distillation (unidistill fit)"] = time.perf_counter() - start
    start = time.perf_counter()
    known, why = (None, "--recompute-teacher") if args.recompute_teacher else verified_teacher_reference(
        module, dm, args.teacher, args.samples, reference)
    print(f"teacher quality: {why}" + ("" if known else "; measuring it in this run"), flush=True)
    phases["teacher reference check"] = time.perf_counter() - start
    start = time.perf_counter()
    print(f"\nteacher vs student ({type(module.objective).__name__}, {module.modality.name}):")
    run_bench(module, dm, args.teacher, args.nfes, args.samples, 1, None, "", timing_batch=64, timing_repeats=3,
              known_teacher=known, out_rows=(rows := []))
    phases["teacher and student tables"] = time.perf_counter() - start
    start = time.perf_counter()
    x, cond = reference_batch(module, dm, 10)
    shown: dict[str, torch.Tensor] = {}
    for spec in args.teacher[:1]:
        solver, _, nfe = spec.partition(":")
        shown[f"teacher {solver} {nfe} NFE"] = module.sample_teacher(cond, x.shape[0], int(nfe),
                                                                     torch.Generator().manual_seed(0), solver=solver).x
    for nfe in args.nfes:
        shown[f"student {nfe} NFE"] = module.sample_student(cond, x.shape[0], nfe, torch.Generator().manual_seed(0)).x
    for f in module.modality.save_comparison(shown, cond, Path(args.out) / "comparison"):
        print(f"wrote {f}")
    phases["comparison images"] = time.perf_counter() - start
    print("\nwhere the time went:")
    for name, seconds in phases.items():
        print(f"  {name:<32} {seconds / 60:6.2f} min")
    path = write_results("demo", "unidistill demo " + " ".join(argv), rows, Path(args.out),
                         {"quality_metric": getattr(module.modality, "regression_metric", None) and
                          module.modality.regression_metric[0], "teacher_quality": why, "samples": args.samples,
                          "phases_minutes": {k: round(v / 60, 3) for k, v in phases.items()}})
    print(f"wrote {path}")
