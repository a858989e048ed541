"""The import rule: proxy → prompts ← optimizer; only drpo (the CLI) sees both sides.

Checked statically over every ``.py`` file of each package, so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, frozenset[str]] = {
    "proxy": frozenset({"optimizer", "drpo"}),
    "optimizer": frozenset({"proxy", "drpo"}),
    "prompts": frozenset({"proxy", "optimizer", "drpo"}),
}


def imported_packages(source: str, filename: str = "<string>", package: str | None = None) -> set[str]:
    """Top-level package names a module imports (relative imports resolve to ``package``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                names.add(package)
            elif node.module:
                names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def violations(package: str, root: Path = REPO) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        imported = imported_packages(path.read_text(encoding="utf-8"), str(path), package)
        for name in sorted(imported & FORBIDDEN[package]):
            found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_import_rule(package: str) -> None:
    assert (REPO / package / "__init__.py").is_file()
    assert violations(package) == []


def test_checker_sees_every_import_form() -> None:
    source = """
import os
import proxy.app
from optimizer.search import run
from . import sibling
import importlib
def later():
    from drpo import cli
    importlib.import_module("proxy.server")
"""
    assert imported_packages(source, package="prompts") == {"os", "proxy", "optimizer", "prompts", "drpo", "importlib"}


def test_checker_reports_a_violation(tmp_path: Path) -> None:
    (tmp_path / "prompts" / "sub").mkdir(parents=True)
    (tmp_path / "prompts" / "__init__.py").write_text("")
    (tmp_path / "prompts" / "sub" / "bad.py").write_text("def f():\n    import optimizer.x\n")
    (tmp_path / "prompts" / "ok.py").write_text("import prompts.artifact\nimport orjson\n")
    assert violations("prompts", tmp_path) == [f"{Path('prompts/sub/bad.py')} imports optimizer"]
