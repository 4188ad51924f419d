"""House rules of docs/design.md (§2 layout and imports, §7 habits), checked mechanically."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ["paths.py", "denoiser.py", "solvers.py", "timesteps.py", "metrics.py", "seeds.py", "batch.py", "causal.py",
        "engine.py", "conditions.py", "objectives"]


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


def _core_import_graph() -> dict[str, set[str]]:
    """Module -> the ``unidistill`` modules it imports at module level (lazy imports inside functions excluded)."""
    core = ROOT / "unidistill"
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in core.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in names and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_has_no_import_cycles():
    cycle = _cycle(_core_import_graph())
    # a package importing its own submodules in __init__ is not a cycle unless a submodule imports the package back
    assert cycle is None, "import cycle in unidistill/: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_harness_and_the_cli_sit_outside_the_core_math():
    graph = _core_import_graph()
    math_modules = [m for m in graph if m.split(".")[1] in {"paths", "denoiser", "solvers", "timesteps", "batch",
                                                             "causal", "seeds", "engine", "objectives", "metrics"}]
    for module in math_modules:
        assert not {d for d in graph[module] if d.split(".")[1] in {"regress", "cli", "runs", "module"}}, module
