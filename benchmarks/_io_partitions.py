"""The I/O-bound part of bench_partitions.py: one process, SQLite, partitions 1, 8, 64.

A worker whose handler awaits 10 ms of I/O (``trio.sleep(0.01)``, real time), keyed by
the command's ``n`` (a key per message), over a log filled beforehand with
``--io-per-partition`` messages per partition; timed from ``serve`` until
``app.caught_up()``. Each mode's ratio is to 1 partition in the same mode, same run:

- ``exact``, the default: a message's commit (emits and position) is written before
  its partition takes the next message (a crash re-handles at most one);
- ``commit_behind``: written while the next handlers run (at most three re-handled);
- ``batch_positions`` at 64, against 1 partition exact: positions in groups.

Beside them the floor of each shape, no engine: ``bare`` runs 64 (or 1) Trio tasks,
each sleeping 10 ms in a cancel scope of its own per message and then waiting for
(``commit before next``) or only queueing (``commit behind``) a commit of its position
through one group-commit task and a thread, on a SQLite file with the same durability.
Keys hash to partitions unevenly, so the busiest partition has more than its share:
``bound`` is the ratio that allows (messages over the busiest partition's).
"""

from __future__ import annotations

import argparse
import functools
import math
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common as c
import trio

import petrock_trio as pt
from petrock_trio._partition import stable_hash

__all__ = ["IO_DELAY", "io_part", "key"]

IO_PARTITIONS = (1, 8, 64)
IO_DELAY = 0.01  # the I/O each handler awaits, seconds
TOP = IO_PARTITIONS[-1]
TARGET = 50.0


def key(cmd: Any) -> int:
    """The partition key: the command's ``n``, one per message."""
    return int(cmd.n)


def shares(size: int, partitions: int) -> list[int]:
    """Messages of each partition when messages 1..size are keyed by their id
    (``fill_log`` writes ``n = id``)."""
    counts = Counter(stable_hash(i) % partitions for i in range(1, size + 1))
    return [counts[p] for p in range(partitions)]


async def io_run(database: str, partitions: int, size: int, *, mode: str = "exact") -> float:
    """Seconds to handle the log; ``mode``: exact, commit_behind or batch_positions."""
    c.reset_positions(database)
    handled = [0]
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "io",
        partitions=partitions,
        key=key,
        batch_positions=mode == "batch_positions",
        commit_behind=mode == "commit_behind",
    )

    async def wait_for_io(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:  # noqa: ARG001
        await trio.sleep(IO_DELAY)
        handled[0] += 1

    for name in c.NAMES:
        worker.on_command(name, wait_for_io)
    app = c.new_app(database)
    app.register_worker(worker)
    seconds = await c.time_catchup(app)
    if handled[0] != size:
        raise SystemExit(f"io, {partitions} partitions, {mode}: handled {handled[0]} of {size}")
    return seconds


class _BareWriter:
    """Group commit of positions on a SQLite file, through a thread, as the engine's."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS positions (name TEXT PRIMARY KEY, at INT)")
        self.send, self.receive = trio.open_memory_channel[tuple[str, int, trio.Event]](math.inf)

    def _write(self, batch: list[tuple[str, int, trio.Event]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO positions VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET at = excluded.at",
            [(name, position) for name, position, _ in batch],
        )
        self.conn.execute("COMMIT")

    async def run(self) -> None:
        async for first in self.receive:
            batch = [first]
            while True:
                try:
                    batch.append(self.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await trio.to_thread.run_sync(self._write, batch)
            for *_, done in batch:
                done.set()


async def bare_run(path: str, counts: list[int], *, behind: bool) -> float:
    """Seconds for the floor of the shape (see the module's docstring)."""
    log = _BareWriter(path)

    async def partition(index: int, count: int) -> None:
        previous: trio.Event | None = None
        for position in range(1, count + 1):
            with trio.move_on_after(5.0):  # the handler's deadline
                await trio.sleep(IO_DELAY)
            if behind and previous is not None:
                await previous.wait()
            previous = trio.Event()
            log.send.send_nowait((f"p{index}", position, previous))
            if not behind:
                await previous.wait()
        if previous is not None:
            await previous.wait()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run)
        async with trio.open_nursery() as partitions:
            for index, count in enumerate(counts):
                partitions.start_soon(partition, index, count)
        nursery.cancel_scope.cancel()
    log.conn.close()
    return time.perf_counter() - started


def io_part(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    per_partition = args.io_per_partition or (5 if args.quick else 400)
    sizes = {n: per_partition * n for n in IO_PARTITIONS}
    databases = {n: str(Path(tmp) / f"io-{n}.db") for n in IO_PARTITIONS}
    for n in IO_PARTITIONS:
        c.fill_log(databases[n], sizes[n])
    # (mode, partitions) -> messages/s of each repeat; ratios to 1 partition per repeat.
    runs: list[tuple[str, int]] = [("exact", n) for n in IO_PARTITIONS]
    runs += [("commit_behind", 1), ("commit_behind", TOP), ("batch_positions", TOP)]
    runs += [
        (f"bare, {shape}", n) for shape in ("commit before next", "commit behind") for n in (1, TOP)
    ]
    rates: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    ratios: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    for repeat in range(c.repeats(args)):
        for mode, n in runs:
            if mode.startswith("bare"):
                path = str(Path(tmp) / f"bare-{repeat}-{len(rates[mode, n])}-{n}.db")
                behind = mode.endswith("behind")
                seconds = c.run(
                    functools.partial(bare_run, path, shares(sizes[n], n), behind=behind)
                )
            else:
                seconds = c.run(functools.partial(io_run, databases[n], n, sizes[n], mode=mode))
            rates[mode, n].append(sizes[n] / seconds)
        for mode, n in runs:
            # batch_positions against 1 partition exact: what durability per message costs.
            base = "exact" if mode == "batch_positions" else mode
            ratios[mode, n].append(rates[mode, n][-1] / rates[base, 1][-1])
    print()
    print(f"I/O-bound handler (awaits {IO_DELAY * 1000:g} ms), one process, SQLite:")
    print("| Mode | Partitions | Messages | Seconds | Messages/s | Ratio to 1 | Busiest | Bound |")
    print("|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    for mode, n in runs:
        rate, ratio = c.median(rates[mode, n]), c.median(ratios[mode, n])
        most = max(shares(sizes[n], n))
        print(
            f"| {mode} | {n} | {sizes[n]:,} | {sizes[n] / rate:.2f} | {rate:,.0f} | "
            f"{ratio:.1f}x | {most:,} | {sizes[n] / most:.1f}x |"
        )
        rows.append(
            {
                "mode": mode,
                "partitions": n,
                "messages": sizes[n],
                "per_second": rate,
                "ratio": ratio,
                "busiest_partition": most,
                "bound": sizes[n] / most,
                "ratios_per_repeat": ratios[mode, n],
            }
        )
    exact, ahead = c.median(ratios["exact", TOP]), c.median(ratios["commit_behind", TOP])
    print(f"as declared by default (exact): 64 vs 1 {exact:.1f}x")
    each = ", ".join(f"{r:.1f}x" for r in ratios["commit_behind", TOP])
    print(f"commit_behind, 64 vs 1, each repeat: {each}")
    c.target_line(
        "I/O-bound, 64 partitions vs 1, messages/s (commit_behind, durable per message)",
        f"ratio {ahead:.1f}",
        f">= {TARGET:g}",
        ahead >= TARGET,
    )
    return {"delay": IO_DELAY, "per_partition": per_partition, "runs": rows}
