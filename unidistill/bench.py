"""Teacher-versus-student comparison: quality and measured speed at several NFEs, in one run.

Used by ``unidistill bench``, the README's main job and ``benchmarks/``. Rows follow the shape docs/design.md §5.3
fixes for ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unidistill.conditions import slice_cond
from unidistill.metrics import time_call


def machine() -> dict[str, Any]:
    mem = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cores": os.cpu_count(), "ram_gib": mem, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


def compare(
    module: Any,
    cond: Any,
    reference: torch.Tensor | None,
    student_nfes: Sequence[int],
    teacher_runs: Sequence[tuple[str, int] | tuple[str, int, float]] = (),
    seeds: Sequence[int] = (0, 1, 2),
    timing_batch: int = 256,
    model_name: str | None = None,
    timing_repeats: int = 9,
) -> list[dict[str, Any]]:
    """Score teacher runs ``(solver, nfe)`` or ``(solver, nfe, guidance)`` and student NFEs on the same
    conditions; metrics are averaged over ``seeds``; ``ms_per_sample`` is the median of repeated timed calls on
    ``timing_batch`` samples. A guided teacher row carries its ``guidance`` (the others use the run's default)."""
    n = reference.shape[0] if reference is not None else int(cond.shape[0])
    timing_batch = min(timing_batch, n)
    rows: list[dict[str, Any]] = []
    runs: list[tuple[str, str, int, float | None]] = []
    for solver, nfe, *guidance in teacher_runs:  # guidance is optional in a teacher run
        runs.append(("teacher", solver, nfe, guidance[0] if guidance else None))
    runs += [(model_name or module.objective.name, module.objective.student_solver, nfe, None) for nfe in student_nfes]
    sub_cond = slice_cond(cond, timing_batch)
    for who, solver, nfe, guidance in runs:
        def draw(c: Any, k: int, seed: int, who: str = who, solver: str = solver, nfe: int = nfe,
                 guidance: float | None = guidance) -> Any:
            g = torch.Generator(module.device).manual_seed(seed)
            if who == "teacher":
                return module.sample_teacher(c, k, nfe, g, solver=solver, guidance=guidance)
            return module.sample_student(c, k, nfe, g)

        metrics: dict[str, list[float]] = {}
        spent = 0
        for seed in seeds:
            out = draw(cond, n, seed)
            spent = out.nfe
            with torch.no_grad():
                scores = module.modality.metrics(out.x, cond, reference)
            for key, value in scores.items():
                metrics.setdefault(key, []).append(value)
        k = timing_batch
        seconds = time_call(lambda k=k: draw(sub_cond, k, 0), repeats=timing_repeats)
        row = {"model": who, "solver": solver, "nfe": spent} | ({} if guidance is None else {"guidance": guidance})
        row |= {key: statistics.fmean(v) for key, v in metrics.items()}
        row["ms_per_sample"] = 1000 * seconds / k
        rows.append(row)
    teacher_rows = [r for r in rows if r["model"] == "teacher"]
    if teacher_rows:
        ref = max(teacher_rows, key=lambda r: r["nfe"])["ms_per_sample"]
        for r in rows:
            r["speedup_vs_teacher"] = ref / r["ms_per_sample"]
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    cells = [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def portable_command(command: str) -> str:
    """``command`` as a reader can rerun it from the repository: this interpreter as ``python`` and paths under the
    working folder relative to it (no machine paths in results files)."""
    import sys

    return command.replace(sys.executable, "python").replace(f"{Path.cwd()}/", "")


def write_results(name: str, command: str, rows: Sequence[dict[str, Any]], out_dir: str | Path,
                  extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": portable_command(command), "machine": machine(),
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "rows": list(rows)}
    payload |= extra or {}
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
