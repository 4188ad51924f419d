"""The ``unidistill`` command: LightningCLI's ``fit/validate/test/predict`` from YAML, plus

* ``bench``  teacher vs student table (quality per NFE and measured speed) for a config and checkpoint;
* ``cache``  the teacher cache of ODE pairs (noise, condition, sample, trajectory points) a config reads;
* ``export`` the student (EMA when kept) through the modality's exporter (safetensors + config by default);
* ``demo``   the README's main job: distil the default task, then print the teacher vs student table.
* ``regress`` every objective x every modality (fast tier), and quality against ``benchmarks/goldens``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import lightning as L
import torch

from unidistill.bench import compare, format_table, write_results
from unidistill.module import DistillationModule
from unidistill.runs import UnidistillCLI, build, build_cache, check_config_files, load_checkpoint, reference_batch

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "digits" / "consistency.yaml"
log = logging.getLogger("unidistill")


def parse_teacher_runs(specs: list[str]) -> list[tuple[str, int]]:
    """``SOLVER:NFE`` strings -> ``(solver, nfe)``; an unknown solver or an NFE below 1 is an error naming it."""
    from unidistill.solvers import SOLVERS

    runs = []
    for spec in specs:
        solver, _, nfe = spec.partition(":")
        if solver not in SOLVERS:
            raise ValueError(f"teacher run {spec!r}: unknown solver {solver!r}; valid: {', '.join(sorted(SOLVERS))}")
        if not nfe.isdigit() or int(nfe) < 1:
            raise ValueError(f"teacher run {spec!r} must look like SOLVER:NFE with NFE >= 1, e.g. heun:64")
        runs.append((solver, int(nfe)))
    return runs


def run_bench(module: DistillationModule, datamodule: L.LightningDataModule, teacher: list[str], nfes: list[int],
              samples: int | None, seeds: int, out: str | None, command: str, extra: dict | None = None,
              timing_batch: int = 256, timing_repeats: int = 9) -> list[dict]:
    """Score the teacher runs and the student NFEs on held-out references (see ``unidistill.bench.compare``), print
    the table and how many samples it used, and refuse a non-finite metric (after printing it)."""
    runs = parse_teacher_runs(teacher)
    bad = [n for n in nfes if n < 1]
    if bad or (samples is not None and samples < 1) or seeds < 1:
        raise ValueError(f"bench needs student NFEs >= 1 (got {nfes}), --samples >= 1 (got {samples}) and "
                         f"--seeds >= 1 (got {seeds})")
    module.eval()
    module._sync_teacher_device()
    x, cond = reference_batch(module, datamodule, samples)
    n = x.shape[0]
    capped = f" (the validation set holds only {n}; asked for {samples})" if samples is not None and n < samples else ""
    print(f"scoring {n} held-out samples per row{capped}, {seeds} seed(s)")
    rows = compare(module, cond, x, nfes, runs if module.teacher is not None else [], seeds=range(seeds),
                   timing_batch=timing_batch, timing_repeats=timing_repeats)
    print(format_table(rows))
    nonfinite = [f"{r['model']} {r['solver']} {r['nfe']} NFE: {k}={v}" for r in rows for k, v in r.items()
                 if isinstance(v, float) and not math.isfinite(v)]
    if nonfinite:
        raise FloatingPointError(f"non-finite metrics, nothing written: {'; '.join(nonfinite)}")
    if out:
        path = write_results(Path(out).stem, command, rows, Path(out).parent, extra)
        print(f"wrote {path}")
    return rows


def _bench_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", required=True, help="the YAML file used for `unidistill fit`")
    p.add_argument("--ckpt", help="checkpoint to evaluate (default: the config's freshly built model)")
    p.add_argument("--teacher", nargs="*", default=["ddim:1", "ddim:2", "ddim:4", "heun:64"],
                   help="teacher runs as SOLVER:NFE")
    p.add_argument("--nfes", nargs="*", type=int, default=[1, 2, 4], help="student NFEs")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", help="write results JSON here (e.g. benchmarks/results/mine.json)")
    return p


def bench_main(argv: list[str]) -> None:
    args = _bench_parser("unidistill bench").parse_args(argv)
    module, dm = build(args.config)
    if args.ckpt:
        load_checkpoint(module, args.ckpt)
    run_bench(module, dm, args.teacher, args.nfes, args.samples, args.seeds, args.out,
              "unidistill bench " + " ".join(argv))


def cache_main(argv: list[str]) -> None:
    """``unidistill cache``: solve the config's teacher from seeded noise for conditions of its training data."""
    p = argparse.ArgumentParser(prog="unidistill cache", description=cache_main.__doc__)
    p.add_argument("--config", required=True, help="the YAML file used for `unidistill fit`")
    p.add_argument("--out", help="cache folder (default: the objective's cache root in the config)")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--solver", default="heun")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--guidance", type=float, help="default: the objective's guidance_scale, else 1")
    p.add_argument("--trajectory-steps", type=int,
                   help="also store the teacher's states at the interior times of this student step grid "
                        "(default: the grid the config's objective reads, e.g. CausVid's student_steps; 0: none)")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--condition-pool", type=int, default=4096, help="training conditions to draw from")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    manifest = build_cache(args.config, args.out, args.samples, args.solver, args.steps, args.guidance,
                           args.trajectory_steps, args.shard_size, args.condition_pool, args.seed)
    print(f"wrote {manifest}")


def export_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="unidistill export")
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true", help="export the raw student instead of its EMA")
    p.add_argument("--name", default="student", help="file stem of the weights and their card (e.g. teacher for a "
                   "teacher recipe: teacher.safetensors + teacher.json)")
    args = p.parse_args(argv)
    module, _ = build(args.config)
    load_checkpoint(module, args.ckpt)
    student = module.ema.module if (module.ema is not None and not args.no_ema) else module.student
    files = module.modality.export(student, args.out, args.name)
    print("\n".join(str(f) for f in files))


def demo_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="unidistill demo", description="distil the default task and compare")
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--samples", type=int, default=1000, help="reference samples scored per row")
    p.add_argument("--teacher", nargs="*", default=["ddim:50", "dpm_solver_pp_2m:4", "dpm_solver_pp_2m:8"],
                   help="teacher runs as SOLVER:NFE (a guided step costs 2 NFE)")
    p.add_argument("--nfes", nargs="*", type=int, default=[1, 2, 4], help="student NFEs")
    args, overrides = p.parse_known_args(argv)
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"demo config not found at {args.config!r}; run from a source checkout")
    cli = UnidistillCLI(args=["fit", "--config", args.config, f"--trainer.default_root_dir={args.out}", *overrides])
    module, dm = cli.model, cli.datamodule
    print(f"\nteacher vs student ({type(module.objective).__name__}, {module.modality.name}):")
    run_bench(module, dm, args.teacher, args.nfes, args.samples, 1, str(Path(args.out) / "demo.json"),
              "unidistill demo " + " ".join(argv), timing_batch=64, timing_repeats=3)
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


def regress_main(argv: list[str]) -> None:
    """``unidistill regress``: the objective x modality matrix (fast tier) and quality against the goldens."""
    from unidistill.regress.command import main as regress

    code = regress(argv)
    if code:
        raise SystemExit(code)


def quiet_known_warnings() -> None:
    """Silence third-party notices that say nothing about the user's run."""
    import warnings

    for pattern in (".*tensorboardX.*", ".*LeafSpec.*", ".*LightningCLI's args parameter.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_known_warnings()
    torch.set_float32_matmul_precision("high")
    commands = {"bench": bench_main, "cache": cache_main, "export": export_main, "demo": demo_main,
                "regress": regress_main}
    check_config_files(argv)
    if argv and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    UnidistillCLI(args=None if argv == sys.argv[1:] else argv)


if __name__ == "__main__":
    main()
