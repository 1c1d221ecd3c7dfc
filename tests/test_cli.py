"""The command line, run as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("petrock-trio") or str(Path(sys.executable).parent / "petrock-trio")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_help_on_every_command(tmp_path: Path) -> None:
    for args in (["--help"], ["demo", "--help"]):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout


def test_demo_runs_to_completion_and_replays(tmp_path: Path) -> None:
    first = run("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created 6 items, 0 already there" in first.stdout
    assert "6/6" in first.stdout
    assert "healthy" in first.stdout
    assert (tmp_path / "petrock-demo.db").exists()

    second = run("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "created 0 items, 6 already there" in second.stdout


@pytest.mark.parametrize("args", [["nope"], ["demo", "--timeout", "soon"]])
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Error" in result.stderr
