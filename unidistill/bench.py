"""Teacher-versus-student comparison: quality and measured speed at several NFEs, in one run (``compare``), and
the ``unidistill bench`` table around it (``run_bench``).

Used by ``unidistill bench``, the README's main job and ``benchmarks/``. Rows follow the shape docs/design.md §5.3
fixes for ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unidistill.conditions import slice_cond
from unidistill.metrics import time_call
from unidistill.runs import reference_batch


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
    known_teacher: dict[tuple[str, int], dict[str, Any]] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score teacher runs ``(solver, nfe)`` or ``(solver, nfe, guidance)`` and student NFEs on the same
    conditions; metrics are averaged over ``seeds``; ``ms_per_sample`` is the median of repeated timed calls on
    ``timing_batch`` samples. A guided teacher row carries its ``guidance`` (the others use the run's default).

    ``known_teacher`` maps ``(solver, nfe)`` to metrics measured earlier on the same references and seeds (a
    verified reference file): those teacher runs are only timed, and their rows say where the quality came from.
    A progress bar names the row being measured."""
    from tqdm.auto import tqdm

    n = reference.shape[0] if reference is not None else int(cond.shape[0])
    timing_batch = min(timing_batch, n)
    rows: list[dict[str, Any]] = []
    runs: list[tuple[str, str, int, float | None]] = []
    for solver, nfe, *guidance in teacher_runs:  # guidance is optional in a teacher run
        runs.append(("teacher", solver, nfe, guidance[0] if guidance else None))
    runs += [(model_name or module.objective.name, module.objective.student_solver, nfe, None) for nfe in student_nfes]
    sub_cond = slice_cond(cond, timing_batch)
    bar = tqdm(runs, desc="bench", unit="row", disable=not progress)
    for who, solver, nfe, guidance in bar:
        bar.set_description(f"bench: {who} {solver} {nfe} NFE")
        def draw(c: Any, k: int, seed: int, who: str = who, solver: str = solver, nfe: int = nfe,
                 guidance: float | None = guidance) -> Any:
            g = torch.Generator(module.device).manual_seed(seed)
            if who == "teacher":
                return module.sample_teacher(c, k, nfe, g, solver=solver, guidance=guidance)
            return module.sample_student(c, k, nfe, g)

        metrics: dict[str, list[float]] = {}
        spent = 0
        known = (known_teacher or {}).get((solver, nfe)) if who == "teacher" and guidance is None else None
        if known is not None:
            spent = int(known["nfe"])
            metrics = {k: [float(v)] for k, v in known["metrics"].items()}
        for seed in seeds if known is None else ():
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
        if known is not None:
            row["quality_from"] = str(known.get("source", "reference"))
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


def run_bench(module: Any, datamodule: Any, teacher: list[str], nfes: list[int],
              samples: int | None, seeds: int, out: str | None, command: str, extra: dict | None = None,
              timing_batch: int = 256, timing_repeats: int = 9, known_teacher: dict | None = None,
              out_rows: list | None = None) -> list[dict]:
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
                   timing_batch=timing_batch, timing_repeats=timing_repeats, known_teacher=known_teacher)
    if out_rows is not None:
        out_rows.extend(rows)
    print(format_table(rows))
    nonfinite = [f"{r['model']} {r['solver']} {r['nfe']} NFE: {k}={v}" for r in rows for k, v in r.items()
                 if isinstance(v, float) and not math.isfinite(v)]
    if nonfinite:
        raise FloatingPointError(f"non-finite metrics, nothing written: {'; '.join(nonfinite)}")
    if out:
        path = write_results(Path(out).stem, command, rows, Path(out).parent, extra)
        print(f"wrote {path}")
    return rows
