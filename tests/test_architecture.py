"""The package's shape: layers without import circles, and small modules."""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

PACKAGE = Path(__file__).resolve().parent.parent / "petrock_trio"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
MAX_MODULE_LINES = 450
MAX_DECLARATION_LINES = 250


def test_layers_hold_and_nothing_imports_in_a_circle() -> None:
    """import-linter's contracts in pyproject.toml: each module imports only from the
    layers below it, and no two modules import each other, even indirectly."""
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0


def test_every_module_is_small() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {name: n for name, n in sizes.items() if n >= MAX_MODULE_LINES} == {}


def test_the_worker_declaration_is_small() -> None:
    """PatternWorker declares; what runs lives elsewhere (``_run``, ``_settle`` ...)."""
    tree = ast.parse((PACKAGE / "_worker.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PatternWorker"]
    assert cls.end_lineno is not None
    assert cls.end_lineno - cls.lineno + 1 < MAX_DECLARATION_LINES
