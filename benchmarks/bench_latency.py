"""3. Live latency: ``execute()`` to handler start, p50, p90 and p99.

Run it:  python benchmarks/bench_latency.py [--quick] [--count 1000] [--postgres auto|URL]
         [--spacing 5-20]

In-process on SQLite with ``synchronous=FULL`` (the default): one caller executes a
command, waits until the worker's handler has started, pauses 2 ms, and repeats.
Latency is ``perf_counter()`` at handler start minus ``perf_counter()`` just before
``execute``. On PostgreSQL the same with ``--postgres`` (``auto`` starts a throwaway
server as the tests do; it runs with ``fsync=off`` and ``synchronous_commit=off``),
each run on a fresh schema.

Across two processes, on the same SQLite file (and, with ``--postgres``, the same
PostgreSQL schema): a child process (this program with ``--follower``) serves an app
with one ``PatternWorker`` whose handler records ``time.monotonic()`` at its start, per
message id; this process serves an app with no workers and executes the commands one
at a time, each after a random pause of 5-20 ms (``--spacing``), recording
``time.monotonic()`` just before each ``execute``. Both apps have ``leases=False``.
CLOCK_MONOTONIC is one clock for the whole machine on Linux, so the two processes'
readings subtract. The child reports its times on stdout when it has seen them all.
The follower learns of the appends by itself: on SQLite from ``PRAGMA data_version``,
looked at when the write-ahead log file is written (inotify); on PostgreSQL from
LISTEN/NOTIFY.

Baselines in the same run: the latency of one durable commit (``BEGIN IMMEDIATE``, one
``INSERT``, ``COMMIT`` under WAL and ``synchronous=FULL``) on the same disk, the floor
under any durable append. On PostgreSQL: the latency of one commit of one ``INSERT``
with psycopg (autocommit, a prepared statement) on the same server, paced the same way.
The cross-process figures are compared with the in-process ones of the same run
(ratio of the p50s). The first 10 commands of every run warm caches and code paths and
are not counted.
Targets: p50 <= 2 ms and p99 <= 20 ms on SQLite FULL, in-process.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import attrs
import orjson
import trio

import petrock_trio as pt
from petrock_trio.testing import serving

WARMUP = 10  # commands per run that warm caches and code paths, not counted
PROGRAM = str(Path(__file__).resolve())  # the child runs this file with --follower
FOLLOWER_DATABASE = "PETROCK_BENCH_FOLLOWER_DATABASE"  # not argv: a URL may hold a password


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
        for _ in range(count + WARMUP):
            started = trio.Event()
            await app.execute(Ping(time.perf_counter()))
            await started.wait()
            await trio.sleep(0.002)
    return samples[WARMUP:]


# --- across two processes ----------------------------------------------------------------


async def follow(database: str, expect: int) -> dict[int, float]:
    """The child: handler start times (``time.monotonic()``) by message id, once
    ``expect`` messages were handled."""
    app = pt.App(database=database, leases=False)
    app.register_command(Ping)
    worker: pt.PatternWorker[None] = pt.PatternWorker("latency")
    started: dict[int, float] = {}
    done = trio.Event()

    @worker.on_command("bench/ping")
    async def ping(ctx: pt.HandlerContext, cmd: Ping, state: Any) -> None:  # noqa: ARG001
        started[ctx.message.id] = time.monotonic()
        if len(started) >= expect:
            done.set()

    app.register_worker(worker)
    async with serving(app):
        print("ready", flush=True)
        await done.wait()
    return started


def follower_main(expect: int) -> int:
    c.quiet_logging()
    started = c.run(functools.partial(follow, os.environ[FOLLOWER_DATABASE], expect))
    sys.stdout.write(orjson.dumps({str(k): v for k, v in started.items()}).decode() + "\n")
    return 0


class Lines:
    """Lines from a child's stdout, read in Trio."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError(self.buffer.decode(errors="replace"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


async def cross_latency(
    database: str, count: int, spacing: tuple[float, float], seed: int
) -> list[float]:
    """Execute in this process, handle in a child process; seconds per command."""
    app = pt.App(database=database, leases=False)
    app.register_command(Ping)
    rng = random.Random(seed)
    total = count + WARMUP
    sent: dict[int, float] = {}
    async with serving(app):  # creates the schema (and the write-ahead log) first
        proc = await trio.lowlevel.open_process(
            [sys.executable, PROGRAM, "--follower", "--expect", str(total)],
            stdout=subprocess.PIPE,
            env={**os.environ, FOLLOWER_DATABASE: database},
        )
        try:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            with trio.fail_after(60):
                ready = await lines.line()
            if ready != b"ready":
                raise SystemExit(f"follower: unexpected first line {ready!r}")
            await trio.sleep(0.1)  # let its watch settle
            for _ in range(total):
                await trio.sleep(rng.uniform(*spacing))
                before = time.monotonic()
                message = await app.execute(Ping(before))
                sent[message.id] = before
            with trio.fail_after(60):
                report = await lines.line()
                code = await proc.wait()
            if code != 0:
                raise SystemExit(f"follower exited with {code}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    started = {int(k): v for k, v in orjson.loads(report).items()}
    return [started[i] - sent[i] for i in sorted(sent)][WARMUP:]


# --- baselines ---------------------------------------------------------------------------


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


# --- reporting ---------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def line(label: str, samples: list[float]) -> str:
    return (
        f"{label}: p50 {ms(percentile(samples, 0.5))}, p90 {ms(percentile(samples, 0.9))}, "
        f"p99 {ms(percentile(samples, 0.99))}, max {ms(max(samples))} ({len(samples)} samples)"
    )


@attrs.define
class Figures:
    """One kind of samples, run by run; medians of the per-run percentiles."""

    p50s: list[float] = attrs.Factory(list)
    p90s: list[float] = attrs.Factory(list)
    p99s: list[float] = attrs.Factory(list)
    samples: list[float] = attrs.Factory(list)

    def add(self, samples: list[float]) -> None:
        self.p50s.append(percentile(samples, 0.5))
        self.p90s.append(percentile(samples, 0.9))
        self.p99s.append(percentile(samples, 0.99))
        self.samples.extend(samples)

    @property
    def p50(self) -> float:
        return c.median(self.p50s)

    def summary(self) -> dict[str, Any]:
        return {
            "p50": self.p50,
            "p90": c.median(self.p90s),
            "p99": c.median(self.p99s),
            "max": max(self.samples),
            "samples": self.samples,
        }


@attrs.define
class Runs:
    """In-process, across two processes and the raw commit on one store."""

    label: str
    engine: Figures = attrs.Factory(Figures)
    raw: Figures = attrs.Factory(Figures)
    cross: Figures = attrs.Factory(Figures)

    def summary(self, spacing: tuple[float, float]) -> dict[str, Any]:
        engine, raw, cross = self.engine.summary(), self.raw.summary(), self.cross.summary()
        p50, raw50, cross50 = engine["p50"], raw["p50"], cross["p50"]
        print(
            f"{self.label} in-process: p50 {p50 * 1000:.3f} ms, p90 {engine['p90'] * 1000:.3f}"
            f" ms, p99 {engine['p99'] * 1000:.3f} ms; raw commit p50 {raw50 * 1000:.3f} ms;"
            f" ratio p50 / raw commit {p50 / raw50:.2f}"
        )
        print(
            f"{self.label} across two processes: p50 {cross50 * 1000:.3f} ms, p90 "
            f"{cross['p90'] * 1000:.3f} ms, p99 {cross['p99'] * 1000:.3f} ms; in-process p50 "
            f"{p50 * 1000:.3f} ms; ratio p50 / in-process p50 {cross50 / p50:.2f}"
        )
        return {
            "p50": p50,
            "p90": engine["p90"],
            "p99": engine["p99"],
            "raw_commit_p50": raw50,
            "raw_commit_p99": raw["p99"],
            "samples": engine["samples"],
            "two_processes": {
                **cross,
                "ratio_p50_to_in_process": cross50 / p50,
                "spacing_ms": [s * 1000 for s in spacing],
            },
        }


def spacing_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low) / 1000, float(high or low) / 1000


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--count", type=int, default=None)
    p.add_argument(
        "--spacing",
        type=spacing_range,
        default=(0.005, 0.020),
        metavar="MIN-MAX",
        help="random pause before each command across two processes, ms (default 5-20)",
    )
    p.add_argument("--follower", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    c.add_postgres_options(p)
    args = p.parse_args()
    if args.follower:
        return follower_main(args.expect)
    count = args.count or (50 if args.quick else 1000)
    c.header("live latency: execute() to handler start", args)
    low, high = args.spacing
    print(f"across two processes: a pause of {low * 1000:g}-{high * 1000:g} ms before each command")
    c.quiet_logging()
    results: dict[str, Any] = {}
    sqlite = Runs("sqlite FULL")
    postgresql = Runs("postgresql")
    with c.postgres(args) as pg, tempfile.TemporaryDirectory() as tmp:
        settings = pg.describe() if pg is not None else None
        for k in range(c.repeats(args)):
            raw = commit_latency(str(Path(tmp) / f"raw-{k}.db"), count)
            database = str(Path(tmp) / f"latency-{k}.db")
            samples: list[float] = c.run(functools.partial(engine_latency, database, count))
            database = str(Path(tmp) / f"cross-{k}.db")
            cross: list[float] = c.run(
                functools.partial(cross_latency, database, count, args.spacing, k)
            )
            print(line(f"run {k + 1} sqlite FULL, in-process    ", samples))
            print(line(f"run {k + 1} sqlite FULL, two processes ", cross))
            print(line(f"run {k + 1} raw durable commit         ", raw))
            sqlite.engine.add(samples)
            sqlite.cross.add(cross)
            sqlite.raw.add(raw)
            if pg is None:
                continue
            with pg.schema() as url:
                raw = pg_commit_latency(url, count)
            with pg.schema() as url:
                samples = c.run(functools.partial(engine_latency, url, count))
            with pg.schema() as url:
                cross = c.run(functools.partial(cross_latency, url, count, args.spacing, k))
            print(line(f"run {k + 1} postgresql, in-process     ", samples))
            print(line(f"run {k + 1} postgresql, two processes  ", cross))
            print(line(f"run {k + 1} postgresql raw commit      ", raw))
            postgresql.engine.add(samples)
            postgresql.cross.add(cross)
            postgresql.raw.add(raw)
    results["sqlite"] = sqlite.summary(args.spacing)
    if settings is not None:
        results["postgres"] = {"settings": settings, **postgresql.summary(args.spacing)}
    p50, p99 = results["sqlite"]["p50"], results["sqlite"]["p99"]
    c.target_line("p50, SQLite FULL", f"{p50 * 1000:.3f} ms", "<= 2 ms", p50 <= 0.002)
    c.target_line("p99, SQLite FULL", f"{p99 * 1000:.3f} ms", "<= 20 ms", p99 <= 0.020)
    c.save("latency", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
