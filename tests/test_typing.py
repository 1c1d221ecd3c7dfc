"""The public API's types as a user meets them: tests/typing checked by mypy and pyright.

``tests/typing/api.py`` must check clean; ``tests/typing/mistakes.py`` keeps each
mistake the types must catch behind a comment naming the expected error, and both
checkers fail on a comment that suppresses nothing: a mistake that stops being
caught fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_mypy(tmp_path: Path) -> None:
    """Strict, with warn_unused_ignores (pyproject.toml's [tool.mypy]). The package's
    own modules are read for their types, not reported on: that is the whole-project
    check's job (``just typing``)."""
    cache = str(tmp_path / "mypy")
    done = _run("mypy", "--cache-dir", cache, "--follow-imports=silent", str(TYPING))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 3 source files" in done.stdout


def test_the_whole_project(tmp_path: Path) -> None:
    """The package, the tests, the benchmarks and the example feature, strict, as
    ``just typing`` checks them (the files are pyproject.toml's)."""
    done = _run("mypy", "--cache-dir", str(tmp_path / "mypy"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_pyright() -> None:
    """Strict, reporting unnecessary ignores (tests/typing/pyrightconfig.json). The dev
    extra's pyright brings its own Node.js (``pyright[nodejs]``); the variable keeps it
    from asking PyPI whether a newer release exists, so it runs offline."""
    done = _run(
        "pyright",
        "-p",
        str(TYPING / "pyrightconfig.json"),
        "--pythonpath",
        sys.executable,
        env={"PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 errors, 0 warnings" in done.stdout
