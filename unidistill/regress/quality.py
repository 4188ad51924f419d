"""The regression matrix's quality tier: distil every shipped config of a modality for a fixed budget with fixed
seeds and compare the student's quality metric at each validation NFE with stored goldens.

Per modality, each ``<configs>/<task>/<objective>.yaml`` whose modality is that plugin (teacher recipes, i.e.
``DenoisingObjective`` configs, excluded) is distilled; the metric is the plugin's ``regression_metric = ("name",
lower_is_better)`` (a metric it does not report is an error); without one, the first metric it reports, lower is
better. Where configs and goldens live: this repository's ``configs/`` and ``benchmarks/goldens/`` for the plugins
it ships; for an installed third-party plugin, its ``Modality.quality_configs_dir`` / ``quality_goldens_dir``
(or ``unidistill regress --configs DIR --goldens DIR``). Goldens are never written into an installed library.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unidistill.modality import Modality, get_modality_class

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "benchmarks" / "goldens"
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class QualityDirs:
    """Where one modality's quality configs are read from and its goldens read from and written to."""

    configs: Path
    goldens: Path


def _ships_with_this_repository(mcls: type[Modality]) -> bool:
    source = Path(sys.modules[mcls.__module__].__file__ or "").resolve()
    return CONFIGS.is_dir() and ROOT in source.parents


def quality_dirs(modality: str, configs: str | Path | None = None, goldens: str | Path | None = None) -> QualityDirs:
    """The folders of ``modality``'s quality tier: the arguments if given, else what the plugin declares
    (``quality_configs_dir``, ``quality_goldens_dir``), else this repository's for the plugins it ships.
    A third-party plugin that declares neither gets an error saying what to pass."""
    mcls = get_modality_class(modality)
    ours = _ships_with_this_repository(mcls)
    c = configs or getattr(mcls, "quality_configs_dir", None) or (CONFIGS if ours else None)
    g = goldens or getattr(mcls, "quality_goldens_dir", None) or (GOLDENS if ours else None)
    if c is None or g is None:
        missing = " and ".join(x for x, v in (("--configs DIR", c), ("--goldens DIR", g)) if v is None)
        raise ValueError(f"the {modality!r} plugin ({mcls.__module__}) is not part of this repository and declares no "
                         f"quality_configs_dir / quality_goldens_dir; pass {missing}")
    return QualityDirs(Path(c), Path(g))


def git_commit(where: Path = ROOT) -> str:
    """The commit of the git checkout holding ``where`` (``+dirty`` with uncommitted changes), else ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _resolve(class_path: str) -> Any:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def quality_configs(modality: str, objectives: list[str] | None = None, configs_dir: str | Path | None = None
                    ) -> list[Path]:
    """The distillation configs in ``configs_dir`` (``*.yaml`` and ``*/*.yaml``; default: the modality's
    ``quality_dirs``) whose modality is the plugin registered as ``modality``."""
    import yaml

    mcls = get_modality_class(modality)
    root = Path(configs_dir) if configs_dir is not None else quality_dirs(modality).configs
    found = []
    for path in sorted([*root.glob("*.yaml"), *root.glob("*/*.yaml")]):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            if (doc.get("trainer") or {}).get("strategy"):
                continue  # multi-process examples (configs/distributed) are not quality references
            model = doc.get("model") or {}
            mpath = model["modality"]["class_path"]
            opath = model["objective"]["class_path"]
        except (KeyError, TypeError, AttributeError, yaml.YAMLError):
            continue
        try:
            if _resolve(mpath) is not mcls:
                continue
            ocls = _resolve(opath)
        except Exception:
            continue
        if getattr(ocls, "needs_teacher", True) is False and ocls.__name__ == "DenoisingObjective":
            continue  # teacher recipes are not distillation
        if objectives and path.stem not in objectives and ocls.__name__ not in objectives:
            continue
        found.append(path)
    return found


@dataclass
class Budget:
    max_steps: int = 300
    samples: int = 4096
    seed: int = 0

    def overrides(self) -> list[str]:
        return [f"--trainer.max_steps={self.max_steps}", f"--model.seed={self.seed}",
                f"--seed_everything={self.seed}"]


def metric_choice(modality: Modality, metrics: dict[str, float]) -> tuple[str, bool]:
    choice = getattr(modality, "regression_metric", None)
    if not choice:
        return next(iter(metrics)), True
    name, lower = str(choice[0]), bool(choice[1])
    if name not in metrics:
        raise ValueError(f"modality {modality.name!r} names regression_metric {name!r}, but its metrics report "
                         f"only {sorted(metrics)}; set regression_metric to one of them")
    return name, lower


def distil_and_measure(config: Path, budget: Budget, workdir: Path) -> list[dict[str, Any]]:
    """Distil with ``config`` for the budget, then score the (EMA) student at each validation NFE."""
    from unidistill.runs import UnidistillCLI, build_cache, configured_cache_root, reference_batch

    extra = []
    if configured_cache_root(config):  # a config that trains from a teacher cache: a small seeded one per run
        cache = workdir / "teacher_cache"
        build_cache(config, cache, samples=512, solver="dpm_solver_pp_2m", steps=8, shard_size=512, seed=budget.seed)
        extra = [f"--model.objective.init_args.cache.init_args.root={cache}"]
    args = ["fit", "--config", str(config), f"--trainer.default_root_dir={workdir}",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.limit_val_batches=0", "--trainer.enable_model_summary=false",
            "--trainer.callbacks=[]",  # a config's own callbacks (e.g. periodic ModelCheckpoint) do not apply here
            *budget.overrides(),
            *extra]
    start = time.perf_counter()
    cli = UnidistillCLI(args=args, trainer_defaults={"callbacks": []})
    seconds = time.perf_counter() - start
    module = cli.model.eval()
    module._sync_teacher_device()
    x, cond = reference_batch(module, cli.datamodule, budget.samples)
    rows = []
    for nfe in module.val_nfes:
        g = torch.Generator(module.device).manual_seed(budget.seed + 7919 * nfe)
        with torch.no_grad():
            samples = module.sample_student(cond, x.shape[0], nfe, g).x
            metrics = module.modality.metrics(samples, cond, x)
        name, lower = metric_choice(module.modality, metrics)
        # the task folder is part of the key: one modality may have several tasks with the same objective configs
        rows.append({"key": f"{config.parent.name}/{config.stem}@nfe{nfe}", "config": _shown(config),
                     "objective": module.objective.name, "nfe": nfe, "metric": name, "lower_is_better": lower,
                     "value": float(metrics[name]), "all_metrics": {k: float(v) for k, v in metrics.items()},
                     "distill_seconds": seconds, "iterations": int(module.iteration)})
    return rows


def default_tolerance(value: float) -> float:
    """Allowed movement before a change counts: 25% of the golden value, at least 0.005 absolute. Runs with
    the same seeds on this machine reproduce to ~1e-6; the margin absorbs BLAS/thread-count differences
    between machines, which a few hundred optimizer steps amplify."""
    return max(0.25 * abs(value), 0.005)


def compare_goldens(rows: list[dict[str, Any]], goldens: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Attach golden value, tolerance and verdict to each row; returns rows and the number of regressions
    (a worse value beyond the tolerance, or a golden entry with no measurement)."""
    entries = goldens.get("entries", {})
    out, regressions = [], 0
    for r in rows:
        g = entries.get(r["key"])
        r = dict(r)
        if g is None:
            r.update(golden=None, tolerance=None, verdict="new (no golden)")
        else:
            delta = r["value"] - g["value"]
            worse = delta if r["lower_is_better"] else -delta
            r.update(golden=g["value"], tolerance=g["tolerance"], delta=delta)
            if worse > g["tolerance"]:
                r["verdict"], regressions = "REGRESSED", regressions + 1
            elif -worse > g["tolerance"]:
                r["verdict"] = "improved"
            else:
                r["verdict"] = "ok"
        out.append(r)
    measured = {r["key"] for r in rows}
    for key in entries:
        if key not in measured:
            out.append({"key": key, "metric": entries[key].get("metric", ""), "value": float("nan"),
                        "golden": entries[key]["value"], "tolerance": entries[key]["tolerance"],
                        "verdict": "MISSING"})
            regressions += 1
    return out, regressions


def format_quality(rows: list[dict[str, Any]]) -> str:
    w = max([len("config@nfe")] + [len(r["key"]) for r in rows])
    lines = [f"{'config@nfe':<{w}}  {'metric':<20} {'golden':>9} {'now':>9} {'delta':>9} {'tol':>8}  verdict",
             "-" * (w + 72)]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    for r in rows:
        lines.append(f"{r['key']:<{w}}  {r.get('metric', ''):<20} {f(r.get('golden')):>9} {f(r.get('value')):>9} "
                     f"{f(r.get('delta')):>9} {f(r.get('tolerance')):>8}  {r['verdict']}")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path as people read it in goldens and logs: relative to this repository or the working folder."""
    for base in (ROOT, Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def run_quality(modality: str, budget: Budget, objectives: list[str] | None, update: bool, command: str,
                workdir: Path, dirs: QualityDirs | None = None) -> tuple[list[dict[str, Any]], int]:
    dirs = dirs or quality_dirs(modality)
    path = dirs.goldens / f"{modality}.json"
    goldens = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
    if not update and goldens.get("budget") and Budget(**goldens["budget"]) != budget:
        print(f"[regress] warning: budget {budget} differs from the goldens' {goldens['budget']}; "
              "differences are not regressions of the code", flush=True)
    configs = quality_configs(modality, objectives, dirs.configs)
    if not configs:
        raise FileNotFoundError(f"no distillation configs under {_shown(dirs.configs)} use the modality {modality!r}")
    rows: list[dict[str, Any]] = []
    for config in configs:
        print(f"[regress] {modality}: {_shown(config)} ({budget.max_steps} steps)", flush=True)
        rows += distil_and_measure(config, budget, workdir / modality / config.parent.name / config.stem)
    if objectives:  # a partial run compares only what it measured
        keep = {r["key"] for r in rows}
        goldens = {**goldens, "entries": {k: v for k, v in goldens.get("entries", {}).items() if k in keep}}
    compared, regressions = compare_goldens(rows, goldens)
    if update:
        from unidistill.bench import machine

        # a partial run (--objective) rewrites its own entries, each stamped with the command that made it, and
        # keeps the rest and the file's stamp; a full one replaces them all
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stamp = {"command": command, "commit": git_commit(dirs.configs), "date": now}
        budget_now = json.loads(json.dumps(budget.__dict__))
        old = json.loads(path.read_text()) if path.is_file() and objectives else {}
        if old and old.get("budget") != budget_now:
            raise ValueError(f"a partial --update-goldens must use the budget {path} was made with, "
                             f"{old.get('budget')}; got {budget_now} (pass the same --max-steps/--samples, or "
                             "update every entry)")
        entries = dict(old.get("entries", {}))
        for r in rows:
            entries[r["key"]] = {"objective": r["objective"], "config": r["config"], "nfe": r["nfe"],
                                 "metric": r["metric"], "lower_is_better": r["lower_is_better"], "value": r["value"],
                                 "tolerance": default_tolerance(r["value"]), "all_metrics": r["all_metrics"],
                                 "distill_seconds": round(r["distill_seconds"], 1)}
            if old:
                entries[r["key"]]["updated"] = stamp
        payload = {**old, "entries": dict(sorted(entries.items()))} if old else {
            "modality": modality, **stamp, "machine": machine(), "budget": budget_now,
            "tolerance_rule": "max(0.25 * |golden|, 0.005) unless edited per entry",
            "entries": dict(sorted(entries.items()))}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"[regress] wrote {path}")
        regressions = 0
    return compared, regressions
