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
import sys

import torch

from unidistill.bench import run_bench
from unidistill.runs import UnidistillCLI, build, build_cache, check_config_files, load_checkpoint

log = logging.getLogger("unidistill")


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
    from unidistill.demo import main as demo

    demo(argv)


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
