"""The sweeps package's shape: no import cycles anywhere in evaluation/ or naturelm_core/, importable without
torch, and the command line the README shows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import evaluation.sweep

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evaluation", "naturelm_core")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, modules: set[str]) -> set[str]:
    """Every module of `modules` that the code names in an import, wherever it stands: a function-local or
    type-checking import is a dependency too, and the old sweep <-> fork_config cycle ran through one."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules importing it runs: what it names, and the packages above those (their __init__),
    except packages the importer itself lies in (they are imported before it, or are being imported)."""
    paths = {_module_name(path, root): path for package in PACKAGES for path in (root / package).rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        edges = set()
        for target in _imported(ast.parse(path.read_text(encoding="utf-8")), modules):
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                package = ".".join(parts[:depth])
                if package in modules and not (name == package or name.startswith(package + ".")):
                    edges.add(package)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_of_evaluation_or_naturelm_core_imports_itself_round_a_loop():
    graph = import_graph(ROOT)
    assert {"evaluation.sweep", "evaluation.sweep.cli", "evaluation.fork_config"} <= set(graph)
    assert "evaluation.sweep" in graph["evaluation.fork_config"]  # the edge that used to close the loop
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_old_loop_through_a_function_local_import_is_found(tmp_path):
    """The shape the command line had before evaluation.sweep became a package."""
    files = {
        "evaluation/__init__.py": "",
        "evaluation/sweep.py": "def main():\n    from evaluation.fork_config import spec_from_yaml\n",
        "evaluation/fork_config.py": "from evaluation.sweep import SweepSpec\n",
        "naturelm_core/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert find_cycle(import_graph(tmp_path)) == [
        "evaluation.fork_config",
        "evaluation.sweep",
        "evaluation.fork_config",
    ]


def test_the_package_exports_what_it_lists_and_imports_without_torch_and_its_command_line_runs():
    assert all(hasattr(evaluation.sweep, name) for name in evaluation.sweep.__all__)
    code = (
        "import sys; import evaluation.sweep, evaluation.sweep.cli, evaluation.backend_choice; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    shown = subprocess.run(
        [sys.executable, "-m", "evaluation.sweep", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert shown.stdout.startswith("usage: python -m evaluation.sweep") and "--ray" in shown.stdout
