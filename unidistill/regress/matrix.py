"""The regression matrix's fast tier: every objective x every registered modality.

Both axes come from registries, so nothing here names a modality or an objective:

* objectives: every concrete ``Objective`` subclass defined in ``unidistill/objectives/`` (found by importing
  each submodule), each through ``Objective.tiny_variants(modality)``; an objective without tiny defaults
  is an ``error`` cell, never left out;
* modalities: every name in the ``unidistill.modalities`` entry-point group (plus in-process
  registrations), each through ``Modality.tiny()``. A plugin that fails to import, or whose ``tiny()``
  raises, is one ``error`` cell carrying the exception; ``tiny() -> None`` is an ``unavailable`` cell.

A cell whose objective refuses the modality (``unsupported_reason``, or ``tiny`` raising ``Unsupported``)
is an ``unsupported`` cell with that reason; it is listed, not skipped.

``run_fast_cell`` runs a few iterations on the real ``DistillationModule`` roles and checks: finite losses,
gradients only where the plan says, the teacher bit-for-bit unchanged, and checkpoint save -> reload -> one
more step identical to an uninterrupted run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unidistill.engine import logs_to_floats
from unidistill.modality import Modality, available_modalities, get_modality_class
from unidistill.objectives.base import Objective, Unsupported, update_roles


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
    opts = module.engine.make_optimizers(module.learning_rate)
    return module, opts


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _state(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _one_iteration(module: Any, opts: dict[str, Any], batch_size: int, checks: dict[str, Any] | None) -> dict:
    """One iteration of the objective's plan through ``Engine.step``, the step ``DistillationModule`` trains with
    (gradient clipping, EMA/target after a student step); with ``checks``, every backward is inspected."""
    objective, it = module.objective, int(module.iteration)
    batch = module.modality.example_batch(batch_size, torch.Generator().manual_seed(1_000 + it))
    plan = list(objective.plan(it))
    pending = list(plan)
    trainable = {r: module.role_module(r) for r in objective.trainable_roles}
    frozen = {k: v for k, v in module.roles().items() if k in ("teacher", "target")}

    def backward(loss: torch.Tensor) -> None:
        update = pending.pop(0)
        loss.backward()
        if checks is None:
            return
        own: list[torch.nn.Parameter] = []
        for role in update_roles(update):
            mine = [p for p in trainable[role].parameters() if p.requires_grad]
            grads = [p.grad for p in mine if p.grad is not None]
            if not grads:
                raise CellFailure(f"iteration {it}: the {update!r} update produced no gradient on {role!r}")
            if not all(torch.isfinite(g).all() for g in grads):
                raise CellFailure(f"iteration {it}: non-finite gradient on {role!r}")
            checks["grad_norm"].setdefault(role, []).append(float(torch.norm(torch.stack([g.norm() for g in grads]))))
            own += mine
        own_ids = {id(p) for p in own}
        for other, mod in trainable.items():
            if other in update_roles(update):
                continue
            leaked = [n for n, p in mod.named_parameters()
                      if id(p) not in own_ids and p.grad is not None and bool(p.grad.abs().sum() > 0)]
            if leaked:
                checks["leaks"].add(f"{update}->{other}")
        for name, mod in frozen.items():
            bad = [n for n, p in mod.named_parameters() if p.grad is not None or p.requires_grad]
            if bad:
                raise CellFailure(f"iteration {it}: the frozen {name} has trainable/gradient parameters {bad[:3]}")

    logs = module.engine.step(batch, it, opts, grad_clip=module.grad_clip, backward=backward)
    module.iteration += 1
    if checks is not None:
        checks["planned"].update(r for update in plan for r in update_roles(update))
    return logs_to_floats(logs)


def run_fast_cell(cell: Cell, iterations: int = 4, batch_size: int = 8) -> dict[str, Any]:
    """Run the fast-tier checks of one ready cell; raises ``CellFailure`` (an AssertionError) naming what broke.

    Returns measured facts: per-iteration logs, which roles stepped, cross-role gradient leaks (a loss that
    reaches another role's parameters; the engine clears them before that role's own update), seconds.
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
