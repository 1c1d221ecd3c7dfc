"""Smoke test of the benchmark programs: each runs at a tiny size and prints its ratio.

Not a timing test: the figures are printed, never asserted (speed is measured by
`just bench` on a quiet machine, not by the suite).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PROGRAMS = sorted(BENCHMARKS.glob("bench_*.py"))
NEEDS = {"bench_peer.py": "eventsourcing"}


def test_every_measurement_has_a_program() -> None:
    names = {p.stem for p in PROGRAMS}
    expected = {"catchup", "fanout", "latency", "idle", "append", "replay", "peer", "overhead"}
    expected |= {"partitions", "restart"}
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


def test_partitions_prints_both_tables(postgres_server: PostgresServer) -> None:
    """Both parts at tiny sizes, the CPU-bound one with real member processes on a
    PostgreSQL log: each prints its table, and every message was handled."""
    size = 300
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_partitions.py"),
            *("--quick", "--io-per-partition", "2", "--cpu-size", str(size)),
            *("--postgres", postgres_server.url("petrock")),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    io_table, cpu_table = out.split("I/O-bound handler", 1)[1].split("CPU-bound handler", 1)
    io_rows = re.findall(r"^\| ([a-z_, ]+) \| (\d+) \| ([\d,]+) \|", io_table, re.MULTILINE)
    assert io_rows == [
        ("exact", "1", "2"),
        ("exact", "8", "16"),
        ("exact", "64", "128"),
        ("commit_behind", "1", "2"),
        ("commit_behind", "64", "128"),
        ("batch_positions", "64", "128"),
        ("bare, commit before next", "1", "2"),
        ("bare, commit before next", "64", "128"),
        ("bare, commit behind", "1", "2"),
        ("bare, commit behind", "64", "128"),
    ], io_table
    cpu_rows = re.findall(r"^\| (\d) \|(?:[^|]*\|){4} ([\d,+ ]+) \|", cpu_table, re.MULTILINE)
    assert [count for count, _ in cpu_rows] == ["1", "2"], cpu_table
    for count, handled in cpu_rows:
        per_process = [int(h.replace(",", "")) for h in handled.split(" + ")]
        assert len(per_process) == int(count)
        # A partition handed over mid-message is handled again by its new holder.
        assert sum(per_process) >= size, cpu_table
    assert "target: I/O-bound, 64 partitions vs 1" in out
    assert "target: CPU-bound, 64 partitions, two processes vs one" in out
