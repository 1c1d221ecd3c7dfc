"""3. Live latency: ``execute()`` to handler start, p50 and p99.

Run it:  python benchmarks/bench_latency.py [--quick] [--count 1000] [--no-postgres]

In-process on SQLite with ``synchronous=FULL`` (the default): one caller executes a
command, waits until the worker's handler has started, pauses 2 ms, and repeats.
Latency is ``perf_counter()`` at handler start minus ``perf_counter()`` just before
``execute``. On PostgreSQL the same, when the server binaries are installed (a
throwaway server as the tests start one; it runs with ``fsync=off``).

Across two processes on one SQLite file: not measured, the engine does not watch a
SQLite file for appends made by another process (``SQLiteStore.watch`` only sleeps).

Baseline in the same run: the latency of one durable commit (``BEGIN IMMEDIATE``, one
``INSERT``, ``COMMIT`` under WAL and ``synchronous=FULL``) on the same disk, the floor
under any durable append. Targets: p50 <= 2 ms and p99 <= 20 ms on SQLite FULL.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c
import attrs
import trio

import petrock_trio as pt
from petrock_trio.testing import serving


@pt.command("bench/ping")
@attrs.frozen
class Ping:
    sent: float


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def engine_latency(database: str, count: int) -> list[float]:
    app = pt.App(database=database)
    app.register_command(Ping)
    worker: pt.PatternWorker[None] = pt.PatternWorker("latency")
    samples: list[float] = []
    started = trio.Event()

    @worker.on_command("bench/ping")
    async def ping(ctx: pt.HandlerContext, cmd: Ping, state: Any) -> None:  # noqa: ARG001
        samples.append(time.perf_counter() - cmd.sent)
        started.set()

    app.register_worker(worker)
    async with serving(app):
        for _ in range(count + 10):
            started = trio.Event()
            await app.execute(Ping(time.perf_counter()))
            await started.wait()
            await trio.sleep(0.002)
    return samples[10:]  # the first few warm caches and code paths


def commit_latency(database: str, count: int) -> list[float]:
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, payload BLOB)")
    samples = []
    try:
        for i in range(count):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw VALUES (?, ?)", (i, c.payload(i)))
            conn.execute("COMMIT")
            samples.append(time.perf_counter() - started)
            time.sleep(0.002)
    finally:
        conn.close()
    return samples


@contextmanager
def postgres() -> Iterator[str | None]:
    """A URL on a throwaway server, or None (and why) when there is none."""
    try:
        import psycopg  # noqa: PLC0415 - optional

        from tests.postgres_server import find_binaries, running_server  # noqa: PLC0415
    except ImportError:
        print("postgresql: skipped (psycopg is not installed)")
        yield None
        return
    bindir = find_binaries()
    if bindir is None:
        print("postgresql: skipped (no initdb/pg_ctl found)")
        yield None
        return
    with running_server(bindir) as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield server.url("bench")


def line(label: str, samples: list[float]) -> str:
    return (
        f"{label}: p50 {percentile(samples, 0.5) * 1000:7.3f} ms, "
        f"p99 {percentile(samples, 0.99) * 1000:7.3f} ms, "
        f"max {max(samples) * 1000:7.3f} ms ({len(samples)} samples)"
    )


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    count = args.count or (50 if args.quick else 1000)
    c.header("live latency: execute() to handler start", args)
    c.quiet_logging()
    results: dict[str, Any] = {}
    p50s: list[float] = []
    p99s: list[float] = []
    raw50s: list[float] = []
    engine_all: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(c.repeats(args)):
            raw = commit_latency(str(Path(tmp) / f"raw-{k}.db"), count)
            database = str(Path(tmp) / f"latency-{k}.db")
            samples: list[float] = c.run(functools.partial(engine_latency, database, count))
            print(line(f"run {k + 1} sqlite FULL, in-process", samples))
            print(line(f"run {k + 1} raw durable commit    ", raw))
            p50s.append(percentile(samples, 0.5))
            p99s.append(percentile(samples, 0.99))
            raw50s.append(percentile(raw, 0.5))
            engine_all.extend(samples)
    p50, p99, raw50 = c.median(p50s), c.median(p99s), c.median(raw50s)
    print(
        f"sqlite FULL in-process: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms; "
        f"raw durable commit p50 {raw50 * 1000:.3f} ms; ratio p50 / raw commit {p50 / raw50:.2f}"
    )
    results["sqlite"] = {"p50": p50, "p99": p99, "raw_commit_p50": raw50, "samples": engine_all}
    print(
        "sqlite across two processes: skipped (the engine does not watch a SQLite file "
        "for appends by another process)"
    )
    if args.quick or args.no_postgres:
        print("postgresql: skipped (--quick or --no-postgres)")
    else:
        with postgres() as url:
            if url is not None:
                pg = c.run(functools.partial(engine_latency, url, count))
                print(line("postgresql (fsync=off), in-process", pg))
                results["postgres"] = {
                    "p50": percentile(pg, 0.5),
                    "p99": percentile(pg, 0.99),
                    "samples": pg,
                }
    c.target_line("p50, SQLite FULL", f"{p50 * 1000:.3f} ms", "<= 2 ms", p50 <= 0.002)
    c.target_line("p99, SQLite FULL", f"{p99 * 1000:.3f} ms", "<= 20 ms", p99 <= 0.020)
    c.save("latency", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
