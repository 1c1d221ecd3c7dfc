"""Smoke test of the benchmark programs: each runs at a tiny size and prints its ratio.

Not a timing test: the figures are printed, never asserted (speed is measured by
`just bench` on a quiet machine, not by the suite).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PROGRAMS = sorted(BENCHMARKS.glob("bench_*.py"))
NEEDS = {"bench_peer.py": "eventsourcing"}


def test_every_measurement_has_a_program() -> None:
    names = {p.stem for p in PROGRAMS}
    expected = {"catchup", "fanout", "latency", "idle", "append", "replay", "peer", "overhead"}
    assert names == {f"bench_{n}" for n in expected}


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_program_runs_quick_and_prints_a_ratio(program: Path) -> None:
    needed = NEEDS.get(program.name)
    if needed is not None and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{needed} is not installed (the `bench` extra)")
    done = subprocess.run(
        [sys.executable, str(program), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio" in done.stdout, done.stdout
    assert "target" in done.stdout or program.name == "bench_replay.py", done.stdout
