"""Imports run one way: commands sit above callbacks, and both write results through actmatch.results."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "actmatch"


def imported_modules(path: Path, package: str = "") -> set[str]:
    """The modules ``path`` (in ``package``, for relative imports) imports, at the top or inside
    functions; ``from X import y`` gives X and X.y."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] if node.level else [])
            module = ".".join(filter(None, [base, node.module or ""]))
            modules.add(module)
            modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def imports_from(path: Path, target: str, package: str | None = None) -> list[str]:
    """The modules under ``target`` that ``path`` imports (``package``: where the file sits, default:
    from its place under actmatch/)."""
    package = package or ".".join(path.relative_to(PACKAGE.parent).parent.parts)
    return sorted(m for m in imported_modules(path, package) if m == target or m.startswith(target + "."))


@pytest.mark.parametrize("path", sorted((PACKAGE / "callbacks").rglob("*.py")), ids=lambda p: p.name)
def test_no_callback_imports_a_command(path):
    assert imports_from(path, "actmatch.commands") == []


def test_the_results_module_imports_neither_commands_nor_callbacks():
    path = PACKAGE / "results.py"
    assert imports_from(path, "actmatch.commands") == [] and imports_from(path, "actmatch.callbacks") == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "callback.py"
    path.write_text(
        "def f():\n    from actmatch.commands import explain\n    import actmatch.commands.study\n"
        "    from ..commands.benchmark import main\n"
    )
    assert imports_from(path, "actmatch.commands", "actmatch.callbacks") == [
        "actmatch.commands",
        "actmatch.commands.benchmark",
        "actmatch.commands.benchmark.main",
        "actmatch.commands.explain",
        "actmatch.commands.study",
    ]
