"""Run every modality's benchmark, plot the results and regenerate the README's results section.

    python benchmarks/run_all.py               # run benchmarks/<modality>.py for each registered modality, then plot
    python benchmarks/run_all.py --no-run      # only re-plot and regenerate the README from benchmarks/results/*.json
    python benchmarks/run_all.py --only gmm    # run a subset (the README still shows every JSON present)

A modality's benchmark is ``benchmarks/<name>.py`` where ``<name>`` is a registered modality (``unidistill.modalities``
entry points); each writes ``benchmarks/results/<something>.json`` in the shared shape (docs/design.md §5.3).
For every JSON with NFE rows this writes ``<stem>_quality.png`` (the quality metric against NFE, one line per model and
solver: teacher, DPM-Solver, each student) and, when rows carry ``speedup_vs_teacher``, ``<stem>_speedup.png``
(bars). Plots use matplotlib when it is installed, else PIL. The README text between ``<!-- results:start -->`` and
``<!-- results:end -->`` is replaced by tables built only from those JSON files, stamped with this command and
the machine; nothing else in the README changes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
# keys that describe a row or its cost rather than its quality
NOT_QUALITY = {"nfe", "batch", "ms_per_sample", "speedup_vs_teacher", "seed", "seeds", "steps", "steps_per_chunk",
               "episodes", "repeats"}
LOWER_IS_BETTER_HINTS = ("wasserstein", "fd", "fid", "fvd", "mmd", "distance", "error", "mse", "drift", "loss")
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (100, 100, 255)]


# --- running ----------------------------------------------------------------------------------------
def benchmark_scripts(only: list[str] | None = None) -> list[Path]:
    """``benchmarks/<modality>.py`` for each registered modality that has one."""
    sys.path.insert(0, str(ROOT))
    from unidistill.modality import available_modalities

    names = only or available_modalities()
    return [ROOT / "benchmarks" / f"{n}.py" for n in names if (ROOT / "benchmarks" / f"{n}.py").is_file()]


def run_benchmarks(scripts: list[Path]) -> dict[str, int]:
    codes = {}
    for script in scripts:
        print(f"[run_all] python {script.relative_to(ROOT)}", flush=True)
        codes[script.stem] = subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode
        if codes[script.stem]:
            print(f"[run_all] {script.name} failed with exit code {codes[script.stem]}", flush=True)
    return codes


# --- reading ----------------------------------------------------------------------------------------
def load_results(results: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        if isinstance(data, dict) and isinstance(data.get("rows"), list) and data["rows"]:
            data["_stem"] = path.stem
            out.append(data)
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def quality_metric(rows: list[dict[str, Any]], declared: str | None = None) -> str | None:
    """The results file's own ``quality_metric`` when it names one; otherwise the first numeric column that
    is a quality measure (not NFE, timing, or a ratio to something)."""
    if declared is not None:
        if not any(_numeric(r.get(declared)) for r in rows):
            raise ValueError(f"the results declare quality_metric {declared!r}, but no row has a number there; "
                             f"columns: {', '.join(rows[0])}")
        return declared
    for key in rows[0]:
        cost = ("memory", "rss", "_mb", "ms_", "_ms", "params", "minutes", "seconds", "speedup", "ratio", "_vs_")
        if key in NOT_QUALITY or key.startswith("distill_") or any(c in key for c in cost):
            continue
        if any(_numeric(r.get(key)) for r in rows):
            return key
    return None


def lower_is_better(metric: str) -> bool:
    return any(h in metric.lower() for h in LOWER_IS_BETTER_HINTS)


def series(rows: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """(NFE, metric) points per model+solver, NFE ascending."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if _numeric(r.get("nfe")) and r["nfe"] > 0 and _numeric(r.get(metric)):  # NFE 0: e.g. a scripted expert
            model = str(r.get("model", "?"))
            if model == "teacher" and r.get("teacher"):  # benchmarks with several teachers name each
                model += f" {r['teacher']}" + ("" if r.get("guidance") is None else f" w={r['guidance']:g}")
            label = f"{model} ({r['solver']})" if r.get("solver") else model
            if r.get("task"):
                label = f"{r['task']}: {label}"
            lines.setdefault(label, []).append((float(r["nfe"]), float(r[metric])))
    return {k: sorted(v) for k, v in lines.items()}


# --- plotting -----------------------------------------------------------------------------------------
def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def plot_quality(lines: dict[str, list[tuple[float, float]]], metric: str, title: str, out: Path) -> Path:
    plt = _matplotlib()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in lines.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
    return _pil_lines(lines, metric, title, out)


def plot_speedup(bars: list[tuple[str, float]], title: str, out: Path) -> Path:
    plt = _matplotlib()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(bars) + 1.5))
        ax.barh([b[0] for b in bars], [b[1] for b in bars])
        ax.set_xlabel("speed-up vs teacher (measured, same run)")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
    return _pil_bars(bars, title, out)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _pil_lines(lines: dict[str, list[tuple[float, float]]], metric: str, title: str, out: Path) -> Path:
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 880, 480, 70, 310, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = _font()
    xs = [x for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts]
    lx0, lx1 = math.log2(min(xs)), math.log2(max(xs))
    if lx1 == lx0:
        lx0, lx1 = lx0 - 1, lx1 + 1
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (math.log2(x) - lx0) / (lx1 - lx0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(int(math.floor(lx0)), int(math.ceil(lx1)) + 1):
        if lx0 <= k <= lx1:
            x, _ = px(2.0**k, y0)
            d.line([x, h - bottom, x, h - bottom + 4], fill="black")
            d.text((x - 6, h - bottom + 6), str(2**k), fill="black", font=font)
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        _, yy = px(2.0**lx0, y)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{y:.3g}", fill="black", font=font)
    d.text((left, 10), title, fill="black", font=font)
    d.text(((w - right + left) // 2 - 10, h - 22), "NFE", fill="black", font=font)
    d.text((4, top - 16), metric, fill="black", font=font)
    for i, (label, pts) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        coords = [px(x, y) for x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=color, width=2)
        for cx, cy in coords:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        ly = top + 14 * i
        d.rectangle([w - right + 10, ly + 2, w - right + 20, ly + 10], fill=color)
        d.text((w - right + 24, ly), label[:46], fill="black", font=font)
    img.save(out)
    return out


def _pil_bars(bars: list[tuple[str, float]], title: str, out: Path) -> Path:
    from PIL import Image, ImageDraw

    left, row, w = 260, 18, 760
    h = 60 + row * len(bars)
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = _font()
    d.text((10, 10), title + ": speed-up vs teacher (measured in the same run)", fill="black", font=font)
    top = max(b[1] for b in bars) or 1.0
    for i, (label, value) in enumerate(bars):
        y = 36 + row * i
        d.text((10, y + 2), label[:40], fill="black", font=font)
        length = (w - left - 70) * value / top
        d.rectangle([left, y + 2, left + max(1.0, length), y + row - 4], fill=COLORS[0 if value >= 1 else 3])
        d.text((left + length + 6, y + 2), f"{value:.2f}x", fill="black", font=font)
    d.line([left, 30, left, h - 10], fill="black")
    img.save(out)
    return out


# --- README -------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def markdown_for(data: dict[str, Any], plots: list[Path], readme_dir: Path) -> str:
    rows = data["rows"]
    metric = quality_metric(rows, data.get("quality_metric"))
    named = ("task", "model", "teacher", "guidance", "solver", "nfe", "strategy")
    cols = [c for c in named if any(c in r for r in rows)]
    if metric:
        cols.append(metric)
    cols += [c for c in rows[0] if c not in cols and _numeric(rows[0].get(c)) and c != metric][:4]
    for c in ("ms_per_sample", "speedup_vs_teacher"):
        if c not in cols and any(c in r for r in rows):
            cols.append(c)
    machine = data.get("machine", {})
    mach = ", ".join(f"{k} {v}" for k, v in machine.items()) if isinstance(machine, dict) else str(machine)
    lines = [f"#### {data.get('benchmark', data['_stem'])}", "",
             f"`{data.get('command', '?')}` — {data.get('date', '?')}; machine: {mach}.", ""]
    if metric:
        better = "lower is better" if lower_is_better(metric) else "higher is better"
        lines += [f"Quality metric: `{metric}` ({better}).", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    for p in plots:
        lines += ["", f"![{p.stem}]({p.resolve().relative_to(readme_dir.resolve()).as_posix()})"]
    return "\n".join(lines)


def machine_line() -> str:
    import os

    try:
        import torch

        tv = torch.__version__
    except ImportError:
        tv = "?"
    ram = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        ram = f", {pages * size / 2**30:.1f} GiB RAM"
    except (ValueError, OSError):
        pass
    return f"{os.cpu_count()} CPU cores{ram}, {platform.machine()}, Python {platform.python_version()}, torch {tv}"


def regenerate_readme(readme: Path, results: Path, command: str) -> str:
    text = readme.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme} has no '{START}' ... '{END}' block; add both markers where the generated "
                         "results should go")
    sections = []
    for data in load_results(results):
        plots = [p for p in (results / f"{data['_stem']}_quality.png", results / f"{data['_stem']}_speedup.png")
                 if p.is_file()]
        sections.append(markdown_for(data, plots, readme.parent))
    stamp = (f"_Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"({machine_line()}) from the JSON files in `{results.resolve().relative_to(readme.parent.resolve())}`"
             "; edit those, not this block._")
    body = "\n\n".join([stamp, *sections]) if sections else stamp + "\n\nNo results yet."
    new = text[: text.index(START) + len(START)] + "\n" + body + "\n" + text[text.index(END):]
    readme.write_text(new)
    return new


def make_plots(results: Path) -> list[Path]:
    written = []
    for data in load_results(results):
        rows, stem = data["rows"], data["_stem"]
        metric = quality_metric(rows, data.get("quality_metric"))
        if metric:
            lines = series(rows, metric)
            if lines:
                written.append(plot_quality(lines, metric, f"{data.get('benchmark', stem)}: {metric} vs NFE",
                                            results / f"{stem}_quality.png"))
        bars = [(f"{r.get('task', '')} {r.get('model', '?')} {r.get('solver', '')} {_fmt(r.get('nfe', ''))}".strip(),
                 float(r["speedup_vs_teacher"])) for r in rows if _numeric(r.get("speedup_vs_teacher"))]
        if bars:
            written.append(plot_speedup(bars, str(data.get("benchmark", stem)), results / f"{stem}_speedup.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-run", action="store_true", help="only plot and regenerate the README from existing JSON")
    p.add_argument("--only", nargs="*", help="modality benchmarks to run (default: every registered modality)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    args = p.parse_args(argv)
    command = "python benchmarks/run_all.py" + ("" if not argv else " " + " ".join(argv))
    failed = 0
    if not args.no_run:
        codes = run_benchmarks(benchmark_scripts(args.only))
        failed = sum(1 for c in codes.values() if c)
    results = Path(args.results)
    for path in make_plots(results):
        print(f"[run_all] wrote {path}")
    regenerate_readme(Path(args.readme), results, command)
    print(f"[run_all] regenerated the results block of {args.readme}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
