"""Runs from YAML: the LightningCLI class, building a run's model and data without training, loading a
checkpoint's weights into it, its held-out reference batch, and the teacher cache a config names.

The ``unidistill`` command (``unidistill.cli``) dispatches to these; benchmarks, tasks and the regression
harness call them directly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from unidistill.checkpoint import safe_torch_load
from unidistill.conditions import cat_cond, cond_size, index_cond, slice_cond
from unidistill.module import DistillationModule, check_run_identity

# keys of the ``fit`` subcommand that Lightning writes into a run's config.yaml but that mean nothing without one
RUN_ONLY_KEYS = ("ckpt_path", "weights_only")


class UnidistillCLI(LightningCLI):
    """LightningCLI over ``DistillationModule`` and any ``LightningDataModule``, with unidistill's trainer
    defaults: atomic checkpoint I/O, a last checkpoint, no sanity validation, and no distributed sampler (the
    ``ResumableDataLoader`` shards by rank itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = {
            "plugins": [{"class_path": "unidistill.checkpoint.AtomicCheckpointIO"}],
            "use_distributed_sampler": False,
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

    def _parse_ckpt_path(self) -> None:
        """On ``fit --ckpt_path``: the configuration given now defines the run (Lightning would overlay any
        hyperparameters saved in the checkpoint, silently ignoring a changed setting). The file is read here so an
        unreadable or corrupted one is an error naming it; the module refuses a checkpoint of another objective or
        modality and reports every optimizer setting that differs (``DistillationModule.on_train_start``)."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path!r}: no such checkpoint file")
        safe_torch_load(ckpt_path)

    def after_fit(self) -> None:
        """Print the last validation metrics of the run (they are also in the logger's files, e.g. metrics.csv)."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and self.trainer.is_global_zero:
            width = max(len(k) for k in metrics)
            lines = [f"  {k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items())]
            print(f"last validation (iteration {int(self.model.iteration)}):\n" + "\n".join(lines), flush=True)


def check_config_files(argv: list[str]) -> None:
    """Fail early, naming the file and the position, when a ``--config`` file is missing or not valid YAML."""
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


def build(config: str | Path, overrides: list[str] | None = None) -> tuple[DistillationModule, L.LightningDataModule]:
    """Instantiate the model and data of a YAML config without running anything. Accepts the ``config.yaml``
    Lightning saves in a run's folder (with every command-line override applied) as well as a hand-written one."""
    check_config_files(["--config", str(config)])
    data = yaml.safe_load(Path(config).read_text()) or {}
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(data, dict) and any(k in data for k in RUN_ONLY_KEYS):
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump({k: v for k, v in data.items() if k not in RUN_ONLY_KEYS}))
        cli = UnidistillCLI(args=["--config", str(config), *(overrides or [])], run=False)
    return cli.model, cli.datamodule


def load_checkpoint(module: DistillationModule, ckpt: str | Path) -> None:
    """Load the trainable roles, EMA and target of a unidistill checkpoint into ``module`` (strictly)."""
    state = safe_torch_load(ckpt)
    if "state_dict" not in state:
        raise ValueError(f"{str(ckpt)!r} is not a unidistill/Lightning checkpoint (no 'state_dict')")
    check_run_identity(state, module, f"checkpoint {str(ckpt)!r}")
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(ckpt)!r} does not match the configured model: {err}") from err


def reference_batch(module: DistillationModule, datamodule: L.LightningDataModule, limit: int | None) -> Any:
    """The first ``limit`` held-out examples as ``(latents, conditions)``, in the validation loader's order."""
    datamodule.setup("validate")
    parts = [module.modality.to_batch(b) for b in datamodule.val_dataloader()]
    x = torch.cat([p.x0 for p in parts])[:limit]
    return x, slice_cond(cat_cond([p.cond for p in parts]), limit)


def configured_cache_root(config: str | Path) -> str | None:
    """The ``root`` of the objective's ``cache`` in a YAML config, if it names one."""
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


def build_cache(config: str | Path, out: str | Path | None = None, samples: int = 4096, solver: str = "heun",
                steps: int = 32, guidance: float | None = None, trajectory_steps: int | None = None,
                shard_size: int = 1024, pool_size: int = 4096, seed: int = 0) -> Path:
    """Solve the config's teacher from seeded noise for conditions of its training data and write the teacher
    cache the config reads (default: its objective's ``cache.root``); returns the manifest's path.

    ``guidance`` defaults to the objective's ``guidance_scale`` (else 1); ``trajectory_steps`` to the student grid
    the objective reads (``Objective.cache_trajectory_steps``)."""
    from unidistill.cache import generate_cache

    root = configured_cache_root(config)
    out = out or root
    if out is None:
        raise ValueError(f"{str(config)!r} names no model.objective.init_args.cache.init_args.root; pass --out")
    # the configured cache does not exist yet: build the run without it
    module, dm = build(config, ["--model.objective.init_args.cache=null"] if root is not None else [])
    if module.teacher is None:
        raise ValueError(f"{str(config)!r} has no teacher to cache")
    teacher, modality = module.teacher, module.modality
    guidance = guidance if guidance is not None else getattr(module.objective, "guidance_scale", 1.0)
    pool = condition_pool(module, dm, pool_size, seed)

    def conditions(n: int, g: torch.Generator) -> Any:
        if pool is None:
            return None
        return index_cond(pool, torch.randint(0, cond_size(pool), (n,), generator=g))

    steps_grid = module.objective.cache_trajectory_steps if trajectory_steps is None else trajectory_steps
    times = modality.path.time_grid(steps_grid).tolist()[1:-1] if steps_grid > 1 else None
    return generate_cache(teacher, out, samples, modality.latent_shape, solver=solver, steps=steps, seed=seed,
                          shard_size=shard_size, conditions=conditions, guidance=guidance,
                          null_condition=modality.null_condition, trajectory_times=times)
