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
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from unidistill.bench import compare, format_table, write_results
from unidistill.checkpoint import safe_torch_load
from unidistill.conditions import cat_cond, cond_size, index_cond, slice_cond
from unidistill.module import DistillationModule

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "digits" / "consistency.yaml"
log = logging.getLogger("unidistill")


class UnidistillCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = {
            "plugins": [{"class_path": "unidistill.checkpoint.AtomicCheckpointIO"}],
            "use_distributed_sampler": False,  # ResumableDataLoader shards by rank itself
            "num_sanity_val_steps": 0,
            "callbacks": [ModelCheckpoint(save_last=True, every_n_train_steps=None)],
        }
        defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        super().__init__(
            DistillationModule,
            L.LightningDataModule,
            *args,
            subclass_mode_data=True,
            trainer_defaults=defaults,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )


def check_config_files(argv: list[str]) -> None:
    """Fail early, naming the file and the position, when a ``--config`` file is missing or not valid YAML."""
    import yaml

    for flag, value in zip(argv, argv[1:], strict=False):
        if flag not in ("--config", "-c"):
            continue
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {value!r}")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config file {value!r} is not valid YAML: {err}") from err


# keys of the ``fit`` subcommand that Lightning writes into a run's config.yaml but that mean nothing without one
RUN_ONLY_KEYS = ("ckpt_path", "weights_only")


def build(config: str | Path, overrides: list[str] | None = None) -> tuple[DistillationModule, L.LightningDataModule]:
    """Instantiate the model and data of a YAML config without running anything. Accepts the ``config.yaml``
    Lightning saves in a run's folder (with every command-line override applied) as well as a hand-written one."""
    import tempfile

    import yaml

    check_config_files(["--config", str(config)])
    data = yaml.safe_load(Path(config).read_text()) or {}
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(data, dict) and any(k in data for k in RUN_ONLY_KEYS):
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump({k: v for k, v in data.items() if k not in RUN_ONLY_KEYS}))
        cli = UnidistillCLI(args=["--config", str(config), *(overrides or [])], run=False)
    return cli.model, cli.datamodule


def load_weights(module: DistillationModule, ckpt: str | Path) -> None:
    state = safe_torch_load(ckpt)
    if "state_dict" not in state:
        raise ValueError(f"{str(ckpt)!r} is not a unidistill/Lightning checkpoint (no 'state_dict')")
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the configured model: {err}") from err


def reference_batch(module: DistillationModule, datamodule: L.LightningDataModule, limit: int | None) -> Any:
    datamodule.setup("validate")
    parts = [module.modality.to_batch(b) for b in datamodule.val_dataloader()]
    x = torch.cat([p.x0 for p in parts])[:limit]
    return x, slice_cond(cat_cond([p.cond for p in parts]), limit)


def run_bench(module: DistillationModule, datamodule: L.LightningDataModule, teacher: list[str], nfes: list[int],
              samples: int | None, seeds: int, out: str | None, command: str, extra: dict | None = None,
              timing_batch: int = 256, timing_repeats: int = 9) -> list[dict]:
    module.eval()
    module._sync_teacher_device()
    x, cond = reference_batch(module, datamodule, samples)
    runs = []
    for spec in teacher:
        solver, _, nfe = spec.partition(":")
        if not nfe.isdigit():
            raise ValueError(f"teacher run {spec!r} must look like SOLVER:NFE, e.g. heun:64")
        runs.append((solver, int(nfe)))
    rows = compare(module, cond, x, nfes, runs if module.teacher is not None else [], seeds=range(seeds),
                   timing_batch=timing_batch, timing_repeats=timing_repeats)
    print(format_table(rows))
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
        load_weights(module, args.ckpt)
    run_bench(module, dm, args.teacher, args.nfes, args.samples, args.seeds, args.out,
              "unidistill bench " + " ".join(argv))


def configured_cache_root(config: str | Path) -> str | None:
    """The ``root`` of the objective's ``cache`` in a YAML config, if it names one."""
    import yaml

    args = (yaml.safe_load(Path(config).read_text()) or {}).get("model", {}).get("objective", {}).get("init_args", {})
    cache = (args or {}).get("cache")
    if isinstance(cache, dict):
        return (cache.get("init_args") or {}).get("root")
    return None


def condition_pool(module: DistillationModule, datamodule: L.LightningDataModule, size: int, seed: int) -> Any:
    """Conditions of the first ``size`` training examples (the loader's order under ``seed``)."""
    torch.manual_seed(seed)
    datamodule.setup("fit")
    parts, n = [], 0
    for b in datamodule.train_dataloader():
        cond = module.modality.to_batch(b).cond
        if cond is None:
            return None
        parts.append(cond)
        n += cond_size(cond)
        if n >= size:
            break
    return slice_cond(cat_cond(parts), size)


def cache_main(argv: list[str]) -> None:
    """``unidistill cache``: solve the config's teacher from seeded noise for conditions of its training data."""
    from unidistill.cache import generate_cache

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
    root = configured_cache_root(args.config)
    out = args.out or root
    if out is None:
        raise ValueError(f"{args.config!r} names no model.objective.init_args.cache.init_args.root; pass --out")
    # the configured cache does not exist yet: build the run without it
    module, dm = build(args.config, ["--model.objective.init_args.cache=null"] if root is not None else [])
    if module.teacher is None:
        raise ValueError(f"{args.config!r} has no teacher to cache")
    teacher, modality = module.teacher, module.modality
    guidance = args.guidance if args.guidance is not None else getattr(module.objective, "guidance_scale", 1.0)
    pool = condition_pool(module, dm, args.condition_pool, args.seed)

    def conditions(n: int, g: torch.Generator) -> Any:
        if pool is None:
            return None
        return index_cond(pool, torch.randint(0, cond_size(pool), (n,), generator=g))

    steps = module.objective.cache_trajectory_steps if args.trajectory_steps is None else args.trajectory_steps
    times = modality.path.time_grid(steps).tolist()[1:-1] if steps > 1 else None
    manifest = generate_cache(teacher, out, args.samples, modality.latent_shape, solver=args.solver,
                              steps=args.steps, seed=args.seed, shard_size=args.shard_size, conditions=conditions,
                              guidance=guidance, null_condition=modality.null_condition, trajectory_times=times)
    print(f"wrote {manifest}")


def export_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="unidistill export")
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true", help="export the raw student instead of its EMA")
    args = p.parse_args(argv)
    module, _ = build(args.config)
    load_weights(module, args.ckpt)
    student = module.ema.module if (module.ema is not None and not args.no_ema) else module.student
    files = module.modality.export(student, args.out)
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
    from unidistill.regression import main as regress

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
