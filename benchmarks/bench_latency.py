"""3. Live latency: ``execute()`` to handler start, p50 and p99.

Run it:  python benchmarks/bench_latency.py [--quick] [--count 1000] [--postgres auto|URL]

In-process on SQLite with ``synchronous=FULL`` (the default): one caller executes a
command, waits until the worker's handler has started, pauses 2 ms, and repeats.
Latency is ``perf_counter()`` at handler start minus ``perf_counter()`` just before
``execute``. On PostgreSQL the same with ``--postgres`` (``auto`` starts a throwaway
server as the tests do; it runs with ``fsync=off`` and ``synchronous_commit=off``),
each run on a fresh schema.

Across two processes on one SQLite file: not measured, the engine does not watch a
SQLite file for appends made by another process (``SQLiteStore.watch`` only sleeps).

Baseline in the same run: the latency of one durable commit (``BEGIN IMMEDIATE``, one
``INSERT``, ``COMMIT`` under WAL and ``synchronous=FULL``) on the same disk, the floor
under any durable append. On PostgreSQL: the latency of one commit of one ``INSERT``
with psycopg (autocommit, a prepared statement) on the same server, paced the same way.
Targets: p50 <= 2 ms and p99 <= 20 ms on SQLite FULL.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
import tempfile
import time
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


def pg_commit_latency(url: str, count: int) -> list[float]:
    samples = []
    with c.pg_connect(url) as conn:
        conn.execute("CREATE TABLE raw (id BIGINT PRIMARY KEY, payload BYTEA)")
        for i in range(count):
            started = time.perf_counter()
            conn.execute("INSERT INTO raw VALUES (%s, %s)", (i, c.payload(i)), prepare=True)
            samples.append(time.perf_counter() - started)
            time.sleep(0.002)
    return samples


def line(label: str, samples: list[float]) -> str:
    return (
        f"{label}: p50 {percentile(samples, 0.5) * 1000:7.3f} ms, "
        f"p99 {percentile(samples, 0.99) * 1000:7.3f} ms, "
        f"max {max(samples) * 1000:7.3f} ms ({len(samples)} samples)"
    )


@attrs.define
class Runs:
    """The engine's samples and the baseline's, run by run; medians of per-run figures."""

    label: str
    p50s: list[float] = attrs.Factory(list)
    p99s: list[float] = attrs.Factory(list)
    raw50s: list[float] = attrs.Factory(list)
    raw99s: list[float] = attrs.Factory(list)
    samples: list[float] = attrs.Factory(list)

    def add(self, samples: list[float], raw: list[float]) -> None:
        self.p50s.append(percentile(samples, 0.5))
        self.p99s.append(percentile(samples, 0.99))
        self.raw50s.append(percentile(raw, 0.5))
        self.raw99s.append(percentile(raw, 0.99))
        self.samples.extend(samples)

    def summary(self) -> dict[str, Any]:
        p50, p99, raw50 = c.median(self.p50s), c.median(self.p99s), c.median(self.raw50s)
        print(
            f"{self.label}: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms; raw commit p50 "
            f"{raw50 * 1000:.3f} ms; ratio p50 / raw commit {p50 / raw50:.2f}"
        )
        return {
            "p50": p50,
            "p99": p99,
            "raw_commit_p50": raw50,
            "raw_commit_p99": c.median(self.raw99s),
            "samples": self.samples,
        }


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--count", type=int, default=None)
    c.add_postgres_options(p)
    args = p.parse_args()
    count = args.count or (50 if args.quick else 1000)
    c.header("live latency: execute() to handler start", args)
    c.quiet_logging()
    results: dict[str, Any] = {}
    sqlite = Runs("sqlite FULL in-process")
    postgresql = Runs("postgresql in-process")
    with c.postgres(args) as pg, tempfile.TemporaryDirectory() as tmp:
        settings = pg.describe() if pg is not None else None
        for k in range(c.repeats(args)):
            raw = commit_latency(str(Path(tmp) / f"raw-{k}.db"), count)
            database = str(Path(tmp) / f"latency-{k}.db")
            samples: list[float] = c.run(functools.partial(engine_latency, database, count))
            print(line(f"run {k + 1} sqlite FULL, in-process", samples))
            print(line(f"run {k + 1} raw durable commit    ", raw))
            sqlite.add(samples, raw)
            if pg is None:
                continue
            with pg.schema() as url:
                raw = pg_commit_latency(url, count)
            with pg.schema() as url:
                samples = c.run(functools.partial(engine_latency, url, count))
            print(line(f"run {k + 1} postgresql, in-process  ", samples))
            print(line(f"run {k + 1} postgresql raw commit   ", raw))
            postgresql.add(samples, raw)
    results["sqlite"] = sqlite.summary()
    print(
        "sqlite across two processes: skipped (the engine does not watch a SQLite file "
        "for appends by another process)"
    )
    if settings is not None:
        results["postgres"] = {"settings": settings, **postgresql.summary()}
    p50, p99 = results["sqlite"]["p50"], results["sqlite"]["p99"]
    c.target_line("p50, SQLite FULL", f"{p50 * 1000:.3f} ms", "<= 2 ms", p50 <= 0.002)
    c.target_line("p99, SQLite FULL", f"{p99 * 1000:.3f} ms", "<= 20 ms", p99 <= 0.020)
    c.save("latency", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
