"""Code reduction of the migration: lines of code of the legacy and the pattern summary worker.

Run it:  python benchmarks/loc.py   (or `just loc`)

Counts non-blank lines that are neither comments nor docstrings, in the worker code of
each implementation (imports and the legacy example's demo `main` left out), and prints
how much smaller the PatternWorker is.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "examples" / "legacy_summary_worker.py"
PATTERN = ROOT / "features" / "items" / "workers" / "summary_worker.py"
SKIP = {"main"}  # the legacy example's runnable demo is not part of the worker


def _span(node: ast.AST) -> range:
    lineno = getattr(node, "lineno", 0)
    return range(lineno, (getattr(node, "end_lineno", None) or lineno) + 1)


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _worker_code(tree: ast.Module) -> set[int]:
    """Lines of top-level definitions, without imports, __all__ and the demo."""
    wanted: set[int] = set()
    for node in tree.body:
        skipped = (
            isinstance(node, ast.Import | ast.ImportFrom | ast.If)  # imports, __main__ guard
            or _is_docstring(node)
            or getattr(node, "name", None) in SKIP
            or (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__")
        )
        if not skipped:
            wanted.update(_span(node))
    return wanted


def code_lines(path: Path) -> int:
    source = path.read_text()
    tree = ast.parse(source)
    wanted = _worker_code(tree)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            wanted.difference_update(_span(body[0]))
    layout = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    counted: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in layout:
            counted.update(line for line in range(tok.start[0], tok.end[0] + 1) if line in wanted)
    return len(counted)


def main() -> int:
    legacy, pattern = code_lines(LEGACY), code_lines(PATTERN)
    reduction = 1 - pattern / legacy
    print(f"legacy worker  ({LEGACY.relative_to(ROOT)}): {legacy} lines of code")
    print(f"pattern worker ({PATTERN.relative_to(ROOT)}): {pattern} lines of code")
    print(f"reduction: {reduction:.0%} (target: at least 80%)")
    return 0 if reduction >= 0.80 else 1


if __name__ == "__main__":
    sys.exit(main())
