"""``unidistill regress``: the fast tier over the whole matrix, then the quality tier per modality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unidistill.modality import available_modalities
from unidistill.regress.matrix import _error, build_matrix, format_matrix, objective_classes, run_fast
from unidistill.regress.quality import Budget, format_quality, quality_configs, quality_dirs, run_quality


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unidistill regress", description=__doc__)
    p.add_argument("--modality", nargs="*", help="registered modality names (default: all)")
    p.add_argument("--objective", nargs="*", help="objective class names (fast tier) or config stems / class "
                   "names (quality tier); default: all")
    p.add_argument("--tier", choices=["fast", "quality", "all"], default="all")
    p.add_argument("--update-goldens", action="store_true", help="(re)write <goldens>/<modality>.json")
    p.add_argument("--max-steps", type=int, default=None, help="quality budget (default: the goldens' budget)")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--configs", default=None, help="folder of the quality tier's YAML configs (default: the plugin's "
                   "quality_configs_dir, or this repository's configs/ for the plugins it ships)")
    p.add_argument("--goldens", default=None, help="folder of <modality>.json goldens (default: the plugin's "
                   "quality_goldens_dir, or this repository's benchmarks/goldens/)")
    p.add_argument("--workdir", default=str(Path("runs") / "regress"), help="where quality runs train")
    return p


def _check_names(args: argparse.Namespace) -> list[str]:
    """Unknown modality or objective names are errors that list the valid ones (a typo never runs everything)."""
    known = available_modalities()
    unknown = [m for m in args.modality or [] if m not in known]
    if unknown:
        raise SystemExit(f"unidistill regress: unknown modality {unknown}; registered: {', '.join(known)}")
    names = args.modality or known
    if args.objective:
        classes = objective_classes()
        stems: set[str] = set()
        if args.tier in ("quality", "all"):
            for name in names:
                try:
                    stems |= {p.stem for p in quality_configs(name, None, quality_dirs(name, args.configs).configs)}
                except Exception:  # noqa: S112 - a modality without a quality tier offers no stems
                    continue
        bad = [o for o in args.objective if o not in classes and o not in stems]
        if bad:
            raise SystemExit(f"unidistill regress: unknown objective {bad}; objective classes: {', '.join(classes)}"
                             + (f"; config stems: {', '.join(sorted(stems))}" if stems else ""))
    return names


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    command = "unidistill regress " + " ".join(argv)
    names = _check_names(args)
    failed = 0
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
        for name in names:
            try:
                dirs = quality_dirs(name, args.configs, args.goldens)
                quality_configs(name, args.objective, dirs.configs)
            except Exception as err:
                print(f"quality tier, {name}: cannot run ({_error(err)})")
                failed += 1
                continue
            gpath = dirs.goldens / f"{name}.json"
            budget = Budget()
            if gpath.is_file():
                budget = Budget(**json.loads(gpath.read_text()).get("budget", {}))
            if args.max_steps:
                budget.max_steps = args.max_steps
            if args.samples:
                budget.samples = args.samples
            if not gpath.is_file() and not args.update_goldens:
                print(f"quality tier, {name}: no goldens at {gpath}; create them with `unidistill regress --tier "
                      f"quality --modality {name} --update-goldens --goldens {dirs.goldens}`")
                failed += 1
                continue
            rows, regressions = run_quality(name, budget, args.objective, args.update_goldens, command,
                                            Path(args.workdir), dirs)
            print(f"quality tier, {name} (golden budget {budget.max_steps} optimizer steps, "
                  f"{budget.samples} samples, seed {budget.seed}):")
            print(format_quality(rows))
            print(f"{regressions} regression(s)\n")
            failed += regressions
    return 1 if failed else 0
