"""The cross-modality regression matrix: every objective x every registered modality.

Both axes come from registries, so nothing here names a modality or an objective:

* objectives: every concrete ``Objective`` subclass defined in ``unidistill/objectives/`` (found by importing
  each submodule), each through ``Objective.tiny_variants(modality)``; an objective without tiny defaults
  is an ``error`` cell, never left out;
* modalities: every name in the ``unidistill.modalities`` entry-point group (plus in-process
  registrations), each through ``Modality.tiny()``. A plugin that fails to import, or whose ``tiny()``
  raises, is one ``error`` cell carrying the exception; ``tiny() -> None`` is an ``unavailable`` cell.

A cell whose objective refuses the modality (``unsupported_reason``, or ``tiny`` raising ``Unsupported``)
is an ``unsupported`` cell with that reason; it is listed, not skipped.

**Fast tier** (``run_fast_cell``): a few iterations through ``run_iteration`` on the real
``DistillationModule`` roles; finite losses, gradients only where the plan says, the teacher bit-for-bit
unchanged, and checkpoint save -> reload -> one more step identical to an uninterrupted run.

**Quality tier** (``run_quality``): per modality, each ``configs/<task>/<objective>.yaml`` whose modality
is that plugin (teacher recipes, i.e. ``DenoisingObjective`` configs, excluded) is distilled for a fixed
budget with fixed seeds; the student's metric at each validation NFE is compared with the goldens in
``benchmarks/goldens/<modality>.json``. The metric is the plugin's ``regression_metric = ("name",
lower_is_better)`` (a metric it does not report is an error); without one, the first metric it reports, lower
is better.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unidistill.modality import Modality, available_modalities, get_modality_class
from unidistill.objectives.base import Objective, Unsupported, run_iteration

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "benchmarks" / "goldens"
CONFIGS = ROOT / "configs"


# --- the two registries -----------------------------------------------------------------------------
def objective_classes() -> dict[str, type[Objective]]:
    """Every concrete Objective subclass defined in ``unidistill.objectives``, by class name."""
    import unidistill.objectives as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    found: dict[str, type[Objective]] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__.startswith(pkg.__name__ + ".") and not inspect.isabstract(sub):
                found[sub.__name__] = sub
            walk(sub)

    walk(Objective)
    return dict(sorted(found.items()))


def _error(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


@dataclass
class Cell:
    """One (modality, objective variant) entry of the matrix."""

    modality: str
    objective: str
    status: str  # "ready" | "unsupported" | "unavailable" | "error"
    reason: str = ""
    objective_class: str = ""
    make: Callable[[], tuple[Modality, Objective]] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.modality}-{self.objective}"


def build_matrix(modalities: list[str] | None = None, objectives: list[str] | None = None) -> list[Cell]:
    """All cells; never raises for a broken plugin or objective (the cell says what went wrong)."""
    names = modalities or available_modalities()
    classes = objective_classes()
    if objectives:
        unknown = [o for o in objectives if o not in classes]
        if unknown:
            raise KeyError(f"unknown objective(s) {unknown}; known: {', '.join(classes)}")
        classes = {k: v for k, v in classes.items() if k in objectives}
    cells: list[Cell] = []
    for name in names:
        try:
            mcls = get_modality_class(name)
            tiny = mcls.tiny()
        except Exception as err:  # a half-built or broken plugin is a failed cell, not a crash
            cells.append(Cell(name, "*", "error", f"plugin failed to load or build tiny(): {_error(err)}"))
            continue
        if tiny is None:
            cells.append(Cell(name, "*", "unavailable", f"{mcls.__name__}.tiny() returns None (no tiny instance)"))
            continue
        for oname, ocls in classes.items():
            try:
                variants = ocls.tiny_variants(tiny)
            except Unsupported as why:
                cells.append(Cell(name, oname, "unsupported", str(why), oname))
                continue
            except Exception as err:
                cells.append(Cell(name, oname, "error", f"tiny defaults: {_error(err)}", oname))
                continue
            for vname, obj in variants.items():
                reason = obj.unsupported_reason(tuple(tiny.latent_shape), bool(getattr(tiny, "causal", False)))
                make = _maker(mcls, ocls, vname)
                cells.append(Cell(name, vname, "unsupported" if reason else "ready", reason or "", oname, make))
    return cells


def _maker(mcls: type[Modality], ocls: type[Objective], vname: str) -> Callable[[], tuple[Modality, Objective]]:
    def make() -> tuple[Modality, Objective]:
        modality = mcls.tiny()
        return modality, ocls.tiny_variants(modality)[vname]

    return make


def format_matrix(cells: list[Cell], results: dict[str, str] | None = None) -> str:
    """A table with one line per cell: status and reason (or the fast-tier result)."""
    results = results or {}
    w1 = max([len("modality")] + [len(c.modality) for c in cells])
    w2 = max([len("objective")] + [len(c.objective) for c in cells])
    lines = [f"{'modality':<{w1}}  {'objective':<{w2}}  {'status':<11}  detail", "-" * (w1 + w2 + 30)]
    for c in cells:
        status = results.get(c.id, c.status)
        detail = c.reason if c.status != "ready" else results.get(c.id + ":detail", "")
        lines.append(f"{c.modality:<{w1}}  {c.objective:<{w2}}  {status:<11}  {detail}")
    return "\n".join(lines)


# --- fast tier ----------------------------------------------------------------------------------------
class CellFailure(AssertionError):
    pass


def _build_module(make: Callable[[], tuple[Modality, Objective]], init_seed: int = 0) -> Any:
    from unidistill.module import DistillationModule

    torch.manual_seed(init_seed)  # networks a tiny() builds from the global RNG come out the same every time
    modality, objective = make()
    module = DistillationModule(modality, objective, learning_rate=1e-3, ema_decay=0.9, grad_clip=1.0, seed=0,
                                val_nfes=[1], save_val_samples=False)
    opts = dict(zip(objective.trainable_roles, module.configure_optimizers(), strict=True))
    return module, opts


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _state(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _one_iteration(module: Any, opts: dict[str, Any], batch_size: int, checks: dict[str, Any] | None) -> dict:
    """One iteration of the objective's plan through ``run_iteration``, as ``DistillationModule`` runs it
    (gradient clipping, EMA/target after a student step); with ``checks``, every backward is inspected."""
    objective, it = module.objective, int(module.iteration)
    batch = module.modality.example_batch(batch_size, torch.Generator().manual_seed(1_000 + it))
    ctx = module.context(it)
    plan = list(objective.plan(it))
    pending = list(plan)
    trainable = {r: module.role_module(r) for r in objective.trainable_roles}
    frozen = {k: v for k, v in module.roles().items() if k in ("teacher", "target")}

    def backward(loss: torch.Tensor) -> None:
        role = pending.pop(0)
        loss.backward()
        if checks is None:
            return
        own = [p for p in trainable[role].parameters() if p.requires_grad]
        grads = [p.grad for p in own if p.grad is not None]
        if not grads:
            raise CellFailure(f"iteration {it}: the {role!r} update produced no gradient on {role!r}")
        if not all(torch.isfinite(g).all() for g in grads):
            raise CellFailure(f"iteration {it}: non-finite gradient on {role!r}")
        checks["grad_norm"].setdefault(role, []).append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
        for other, mod in trainable.items():
            if other == role:
                continue
            own_ids = {id(p) for p in own}
            leaked = [n for n, p in mod.named_parameters()
                      if id(p) not in own_ids and p.grad is not None and bool(p.grad.abs().sum() > 0)]
            if leaked:
                checks["leaks"].add(f"{role}->{other}")
        for name, mod in frozen.items():
            bad = [n for n, p in mod.named_parameters() if p.grad is not None or p.requires_grad]
            if bad:
                raise CellFailure(f"iteration {it}: the frozen {name} has trainable/gradient parameters {bad[:3]}")

    logs = run_iteration(objective, batch, ctx, opts, grad_clip=module.grad_clip, backward=backward)
    if "student" in plan:
        module._update_averages()
    module.iteration += 1
    if checks is not None:
        checks["planned"].update(plan)
    return logs


def run_fast_cell(cell: Cell, iterations: int = 4, batch_size: int = 8) -> dict[str, Any]:
    """Run the fast-tier checks of one ready cell; raises ``CellFailure`` (an AssertionError) naming what broke.

    Returns measured facts: per-iteration logs, which roles stepped, cross-role gradient leaks (a loss that
    reaches another role's parameters; ``run_iteration`` clears them before that role's own update), seconds.
    """
    if cell.status != "ready" or cell.make is None:
        raise ValueError(f"cell {cell.id} is {cell.status}: {cell.reason}")
    start = time.perf_counter()
    module, opts = _build_module(cell.make)
    teacher = module.teacher
    teacher_before = _params(teacher) if teacher is not None else {}
    if teacher is not None and teacher.training:
        raise CellFailure("the teacher is in training mode")
    initial = {r: _params(module.role_module(r)) for r in module.objective.trainable_roles}
    checks: dict[str, Any] = {"grad_norm": {}, "leaks": set(), "planned": set()}
    logs = [_one_iteration(module, opts, batch_size, checks) for _ in range(iterations)]

    # every trainable role was planned and moved
    for role, before in initial.items():
        if role not in checks["planned"]:
            raise CellFailure(f"role {role!r} never appeared in the plan of {iterations} iterations")
        after = _params(module.role_module(role))
        if all(torch.equal(before[k], after[k]) for k in before):
            raise CellFailure(f"role {role!r} was planned but its parameters never changed")
    # the teacher: bit-for-bit unchanged and never in the checkpoint
    if teacher is not None:
        after = _params(teacher)
        changed = [k for k in teacher_before if not torch.equal(teacher_before[k], after[k])]
        if changed:
            raise CellFailure(f"the teacher changed during training: {changed[:5]}")
    state = module.state_dict()
    if any(k.startswith("teacher") or k.startswith("_teacher") for k in state):
        raise CellFailure("teacher weights are in the module state dict (they would land in checkpoints)")

    # checkpoint save -> reload into a fresh module -> one more step == uninterrupted
    from unidistill.checkpoint import atomic_torch_save, safe_torch_load

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cell.ckpt"
        atomic_torch_save({"state_dict": module.state_dict(),
                           "optimizers": {r: o.state_dict() for r, o in opts.items()}}, path)
        straight_logs = _one_iteration(module, opts, batch_size, None)
        straight = _state(module)
        fresh, fresh_opts = _build_module(cell.make, init_seed=1)  # a different init, fully overwritten by the load
        ckpt = safe_torch_load(path)
        fresh.load_state_dict(ckpt["state_dict"])
        for role, opt in fresh_opts.items():
            opt.load_state_dict(ckpt["optimizers"][role])
    resumed_logs = _one_iteration(fresh, fresh_opts, batch_size, None)
    resumed = _state(fresh)
    if straight.keys() != resumed.keys():
        raise CellFailure(f"resumed state has different keys: {sorted(straight.keys() ^ resumed.keys())[:5]}")
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    if differ:
        raise CellFailure(f"checkpoint -> reload -> one step differs from the uninterrupted run in {differ[:5]}")
    if straight_logs != resumed_logs:
        raise CellFailure(f"resumed losses {resumed_logs} differ from uninterrupted {straight_logs}")
    return {"logs": logs + [straight_logs], "leaks": sorted(checks["leaks"]), "grad_norm": checks["grad_norm"],
            "seconds": time.perf_counter() - start}


def run_fast(cells: list[Cell], iterations: int = 4) -> tuple[dict[str, str], int]:
    """Run every ready cell; returns per-cell results for ``format_matrix`` and the number of failures
    (errors count as failures; unsupported/unavailable cells do not)."""
    results: dict[str, str] = {}
    failures = 0
    for cell in cells:
        if cell.status == "error":
            failures += 1
            results[cell.id] = "FAIL"
        if cell.status != "ready":
            continue
        try:
            out = run_fast_cell(cell, iterations)
        except Exception as err:
            failures += 1
            results[cell.id], results[cell.id + ":detail"] = "FAIL", _error(err)
            continue
        leaks = f"; loss reaches {', '.join(out['leaks'])}" if out["leaks"] else ""
        results[cell.id], results[cell.id + ":detail"] = "ok", f"{out['seconds']:.1f}s{leaks}"
    return results, failures


# --- quality tier -------------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _resolve(class_path: str) -> Any:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def quality_configs(modality: str, objectives: list[str] | None = None) -> list[Path]:
    """The distillation configs under ``configs/`` whose modality is the plugin registered as ``modality``."""
    import yaml

    mcls = get_modality_class(modality)
    found = []
    for path in sorted(CONFIGS.glob("*/*.yaml")):
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
    from unidistill.cli import UnidistillCLI, configured_cache_root, reference_batch
    from unidistill.cli import main as cli_main

    extra = []
    if configured_cache_root(config):  # a config that trains from a teacher cache: a small seeded one per run
        cache = workdir / "teacher_cache"
        cli_main(["cache", "--config", str(config), "--out", str(cache), "--samples", "512", "--solver",
                  "dpm_solver_pp_2m", "--steps", "8", "--shard-size", "512", "--seed", str(budget.seed)])
        extra = [f"--model.objective.init_args.cache.init_args.root={cache}"]
    args = ["fit", "--config", str(config), f"--trainer.default_root_dir={workdir}",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.val_check_interval=1000000", "--trainer.enable_model_summary=false", *budget.overrides(),
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
        rows.append({"key": f"{config.parent.name}/{config.stem}@nfe{nfe}", "config": str(config.relative_to(ROOT)),
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


def goldens_path(modality: str) -> Path:
    return GOLDENS / f"{modality}.json"


def run_quality(modality: str, budget: Budget, objectives: list[str] | None, update: bool, command: str,
                workdir: Path, goldens_dir: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    path = (goldens_dir or GOLDENS) / f"{modality}.json"
    goldens = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
    if not update and goldens.get("budget") and Budget(**goldens["budget"]) != budget:
        print(f"[regress] warning: budget {budget} differs from the goldens' {goldens['budget']}; "
              "differences are not regressions of the code", flush=True)
    configs = quality_configs(modality, objectives)
    if not configs:
        raise FileNotFoundError(f"no distillation configs under {CONFIGS} use the modality {modality!r}")
    rows: list[dict[str, Any]] = []
    for config in configs:
        print(f"[regress] {modality}: {config.relative_to(ROOT)} ({budget.max_steps} steps)", flush=True)
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
        stamp = {"command": command, "commit": git_commit(), "date": now}
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


def main(argv: list[str]) -> int:
    """``unidistill regress``: the fast tier over the whole matrix, then the quality tier per modality."""
    import argparse

    p = argparse.ArgumentParser(prog="unidistill regress", description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", nargs="*", help="registered modality names (default: all)")
    p.add_argument("--objective", nargs="*", help="objective class names (fast tier) or config stems / class "
                   "names (quality tier); default: all")
    p.add_argument("--tier", choices=["fast", "quality", "all"], default="all")
    p.add_argument("--update-goldens", action="store_true", help="rewrite benchmarks/goldens/<modality>.json")
    p.add_argument("--max-steps", type=int, default=None, help="quality budget (default: the goldens' budget)")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "regress"))
    p.add_argument("--goldens-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    command = "unidistill regress " + " ".join(argv)
    failed = 0
    names = args.modality or available_modalities()
    if args.tier in ("fast", "all"):
        classes = objective_classes()
        fast_objectives = [o for o in (args.objective or []) if o in classes] or None
        cells = build_matrix(names, fast_objectives)
        results, failures = run_fast(cells)
        print("fast tier (objective x modality):")
        print(format_matrix(cells, results))
        counts = {s: sum(c.status == s for c in cells) for s in ("ready", "unsupported", "unavailable", "error")}
        print(f"{counts['ready']} ready ({failures - counts['error']} failed), {counts['unsupported']} unsupported, "
              f"{counts['unavailable']} unavailable, {counts['error']} errors\n")
        failed += failures
    if args.tier in ("quality", "all"):
        gdir = Path(args.goldens_dir) if args.goldens_dir else GOLDENS
        for name in names:
            try:
                quality_configs(name, args.objective)
            except Exception as err:
                print(f"quality tier, {name}: cannot run ({_error(err)})")
                failed += 1
                continue
            gpath = gdir / f"{name}.json"
            budget = Budget()
            if gpath.is_file():
                budget = Budget(**json.loads(gpath.read_text()).get("budget", {}))
            if args.max_steps:
                budget.max_steps = args.max_steps
            if args.samples:
                budget.samples = args.samples
            if not gpath.is_file() and not args.update_goldens:
                print(f"quality tier, {name}: no goldens at {gpath}; run with --update-goldens to create them")
                continue
            rows, regressions = run_quality(name, budget, args.objective, args.update_goldens, command,
                                            Path(args.workdir), gdir)
            print(f"quality tier, {name} (golden budget {budget.max_steps} optimizer steps, "
                  f"{budget.samples} samples, seed {budget.seed}):")
            print(format_quality(rows))
            print(f"{regressions} regression(s)\n")
            failed += regressions
    return 1 if failed else 0
