"""House rules from DESIGN.md and STYLE.md, checked mechanically."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ["paths.py", "denoiser.py", "solvers.py", "timesteps.py", "metrics.py", "objectives"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        p = ROOT / "unidistill" / part
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


@pytest.mark.parametrize("path", _files(""), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_plugins_or_tasks(path):
    assert not _imports(path) & {"modalities", "tasks"}, f"{path} imports a plugin or task"


@pytest.mark.parametrize("path", _files(*PURE), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_math_and_objectives_never_import_lightning(path):
    assert not _imports(path) & {"lightning", "pytorch_lightning"}, f"{path} imports Lightning"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    cmd = [ruff, "check", "--no-cache", "unidistill", "modalities", "tasks", "benchmarks", "tests"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
