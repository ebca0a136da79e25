"""The layers (issue 16): naturelm_core imports nothing of gradio, evaluation or ui; evaluation imports nothing of
gradio or ui; ui may import anything. Cycles are tests/test_sweep_package.py's.

Every import counts, wherever it stands: a function-local or type-checking import is a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("naturelm_core", "evaluation", "ui")
# package -> the top-level packages its modules may not import
FORBIDDEN = {
    "naturelm_core": frozenset({"gradio", "evaluation", "ui"}),
    "evaluation": frozenset({"gradio", "ui"}),
    "ui": frozenset(),
}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import statement in `source` names, anywhere in it; relative imports made absolute."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in found if name}


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """'module imports target' for each import of `source` (the code of `module`) that its layer forbids."""
    forbidden = FORBIDDEN.get(module.split(".")[0], frozenset())
    bad = {target for target in imported_modules(source, module, is_package) if target.split(".")[0] in forbidden}
    # `from ui.text import X` is one violation, ui.text, not one more for X too
    return sorted(f"{module} imports {t}" for t in bad if not any(t.startswith(f"{other}.") for other in bad))


def layer_violations(root: Path) -> tuple[list[str], dict[str, int]]:
    """Every forbidden import under `root`'s layer packages, and how many modules each package has."""
    found: list[str] = []
    counts = {}
    for package in LAYERS:
        paths = sorted((root / package).rglob("*.py"))
        counts[package] = len(paths)
        for path in paths:
            name = _module_name(path, root)
            found += violations(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    return found, counts


def test_each_layer_imports_only_the_layers_below_it():
    found, counts = layer_violations(ROOT)
    assert all(count >= 5 for count in counts.values()), counts  # the scan read the real packages
    assert found == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("naturelm_core.model", "import gradio as gr\n"),
        ("naturelm_core.model", "from evaluation.sweep import SweepSpec\n"),
        ("naturelm_core.model", "def f():\n    from ui import text\n    return text\n"),
        ("naturelm_core.model", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ui.text\n"),
        ("evaluation.presets", "import gradio.themes\n"),
        ("evaluation.presets", "class A:\n    def f(self):\n        from ui.sweep_figures import add_baselines\n"),
    ],
)
def test_a_forbidden_import_is_found_wherever_it_stands(module, source):
    assert violations(source, module)


def test_allowed_imports_pass():
    assert violations("import numpy\nfrom naturelm_core.alphas import MergeRecipe\n", "naturelm_core.x") == []
    assert violations("from naturelm_core.audio import load_audio\nimport plotly\n", "evaluation.x") == []
    assert violations("import gradio as gr\nfrom evaluation.sweep import SweepSpec\n", "ui.x") == []
    relative = "from . import plan\nfrom .store import SweepFolder\nfrom .. import presets\n"
    assert imported_modules(relative, "evaluation.sweep.queue") >= {
        "evaluation.sweep.plan",
        "evaluation.sweep.store.SweepFolder",
        "evaluation.presets",
    }
    assert imported_modules("from .plan import x\n", "evaluation.sweep", is_package=True) >= {"evaluation.sweep.plan"}
    assert violations(relative, "evaluation.sweep.queue") == []


def test_a_planted_violation_in_a_module_tree_fails_the_scan(tmp_path):
    """The scan itself (files, packages, nesting) catches a violation, so the real check cannot pass vacuously."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text('"""A layer."""\n')
    (tmp_path / "ui" / "tab.py").write_text("import gradio as gr\nfrom evaluation import presets\n")
    (tmp_path / "evaluation" / "deep").mkdir()
    (tmp_path / "evaluation" / "deep" / "__init__.py").write_text("")
    clean, _ = layer_violations(tmp_path)
    assert clean == []
    (tmp_path / "evaluation" / "deep" / "plots.py").write_text("def draw():\n    from ui.sweep_figures import x\n")
    (tmp_path / "naturelm_core" / "__init__.py").write_text("import evaluation.presets\n")
    found, counts = layer_violations(tmp_path)
    assert counts == {"naturelm_core": 1, "evaluation": 3, "ui": 2}
    assert sorted(found) == [
        "evaluation.deep.plots imports ui.sweep_figures",
        "naturelm_core imports evaluation.presets",
    ]
