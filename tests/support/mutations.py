"""Mutation check: do the fast tests notice when an objective's formula is wrong?

Each ``Mutation`` is a one-line change of the library's source (file, the exact original text, which must occur
exactly once, its replacement, what it breaks) and the fast test files that should catch it. For each mutation this
script copies ``unidistill/`` to a temporary folder, applies the mutation to the copy (the real files are never
touched), runs ``pytest -x -q`` on the named test files with ``PYTHONPATH`` pointing at the copy (and ``python -P``, so
the working tree's own ``unidistill`` is not imported first), and calls the mutation *killed* when pytest fails.
It first checks that the copy is what gets imported and that the unmutated copy passes all the named tests.

    python tests/support/mutations.py                 # every mutation; exit code 1 if any survives
    python tests/support/mutations.py --only sCM      # the mutations whose description contains "sCM"
    python tests/support/mutations.py --tests tests/unit/test_objectives_core.py   # run other tests instead

Keep the list growing: a formula bug found in review becomes a mutation here and a test that kills it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # run as a script, ``support`` is not importable otherwise

from support.mutation_list import MUTATIONS, Mutation  # noqa: E402


@dataclass
class Result:
    mutation: Mutation
    killed: bool
    seconds: float
    detail: str


def copy_package(dest: Path, root: Path = ROOT) -> Path:
    shutil.copytree(root / "unidistill", dest / "unidistill", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def apply(copy: Path, m: Mutation) -> None:
    """Apply ``m`` to the copy; the original text must occur exactly once (a stale mutation is an error)."""
    path = copy / m.file
    text = path.read_text()
    count = text.count(m.original)
    if count != 1:
        raise ValueError(f"mutation {m.description!r}: {m.original!r} occurs {count} times in {m.file} (need 1)")
    path.write_text(text.replace(m.original, m.replacement))


def _env(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def check_import(copy: Path, python: str = sys.executable) -> None:
    """The copy, not the working tree (or an editable install), is what ``import unidistill`` finds. ``unidistill``
    is a namespace package, so its modules are checked: the copy must come first on its path."""
    code = "import unidistill.paths as p, unidistill.objectives.dmd as d; print(p.__file__); print(d.__file__)"
    out = subprocess.run(
        [python, "-P", "-c", code], cwd=ROOT, env=_env(copy), capture_output=True, text=True, check=True
    ).stdout.split()
    wrong = [f for f in out if not Path(f).resolve().is_relative_to(copy.resolve())]
    if wrong:
        raise RuntimeError(f"the mutated copy is not imported: {wrong} are not under {copy}")


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float, python: str = sys.executable) -> tuple[int, str]:
    cmd = [python, "-P", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc.returncode, (lines[-1] if lines else proc.stderr.strip()[-300:])


def run_mutation(m: Mutation, tests: tuple[str, ...] | None = None, timeout: float = 600.0) -> Result:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        copy = copy_package(Path(tmp))
        apply(copy, m)
        code, detail = run_tests(copy, tests or m.tests, timeout)
    # exit code 1: a test failed; 2/3/4: the mutant could not even be imported or collected; -1: a timeout
    return Result(m, code != 0, time.perf_counter() - start, detail)


def baseline(tests: tuple[str, ...], timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="unmutated-") as tmp:
        copy = copy_package(Path(tmp))
        check_import(copy)
        code, detail = run_tests(copy, tests, timeout)
    if code != 0:
        raise SystemExit(f"the unmutated copy fails its tests ({detail}); fix that before checking mutations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only mutations whose description or file contains this text")
    parser.add_argument("--tests", nargs="+", help="run these test files for every mutation instead of its own")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation")
    parser.add_argument("--skip-baseline", action="store_true", help="do not check the unmutated copy first")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.description or args.only in m.file]
    if args.list:
        for m in chosen:
            print(f"{m.file}: {m.description}")
        return 0
    if not args.skip_baseline:
        baseline(tuple(args.tests or sorted({t for m in chosen for t in m.tests})), args.timeout)
    results = []
    for i, m in enumerate(chosen, 1):
        r = run_mutation(m, tuple(args.tests) if args.tests else None, args.timeout)
        results.append(r)
        verdict = "killed  " if r.killed else "SURVIVED"
        print(
            f"[{i:>2}/{len(chosen)}] {verdict} {r.seconds:5.0f}s  {m.file}: {m.description}  ({r.detail})", flush=True
        )
    killed = sum(r.killed for r in results)
    print(f"\nkill rate: {killed}/{len(results)} = {killed / max(1, len(results)):.0%}")
    for r in results:
        if not r.killed:
            print(f"survived: {r.mutation.file}: {r.mutation.description}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
