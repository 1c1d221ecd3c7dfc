"""9. Restart: time until serve is ready, with and without snapshots, by log length.

Run it:  python benchmarks/bench_restart.py [--quick] [--sizes 10000,100000,1000000]

For each size, a SQLite file holds that many messages of one command (a key among
1,000 and a number). The app has one worker summing the numbers by key and a state
projection doing the same; the worker's saved position is the head. Each figure is
taken in a fresh child process, from building the app until
``nursery.start(serve, app)`` returns (workers replayed, projection applied), with its
peak resident memory (from building the app, after the imports):

- full: no snapshots, every start replays the whole log (worker and projection);
- snapshots: ``snapshot_every`` on both (10,000; 1,000 with --quick). A first start
  with snapshots on replays the whole log and writes them as it goes; then half an
  interval of messages is appended after them (a tail, as a running app leaves one),
  and the restarts measured load the latest snapshot and replay that tail only.

Both modes run on copies of the same files in the same run (each start on a fresh
copy, so that one which writes a snapshot does not shorten the next one's tail), and
each start checks that the state it rebuilt sums to what the log holds. Targets: with
snapshots, the largest log restarts within 1.5 times the smallest's time, and at least
20 times faster than a full replay of the largest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import attrs
import orjson

import petrock_trio as pt
from petrock_trio.stores._sqlitesql import SCHEMA as SQLITE_SCHEMA
from petrock_trio.testing import serving

KEYS = 1000
MODES = ("full", "snapshots")


@pt.command("bench/sum")
@attrs.frozen
class Sum:
    key: str
    n: int


@attrs.define
class Sums:
    totals: dict[str, int] = attrs.Factory(dict)


def _apply(state: Sums, cmd: Sum, message: pt.Message) -> None:  # noqa: ARG001
    state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.n


def build(database: str, every: int | None) -> tuple[pt.App, pt.PatternWorker[Sums], Sums]:
    app = pt.App(database=database, snapshot_every=every)
    projected = Sums()
    app.register_command(Sum, _apply, state=projected)
    worker: pt.PatternWorker[Sums] = pt.PatternWorker("summer", state=Sums(), snapshot_every=every)

    @worker.on_command(Sum)
    async def add(ctx: pt.HandlerContext, cmd: Sum, state: Sums) -> None:  # noqa: ARG001
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.n

    app.register_worker(worker)
    return app, worker, projected


def fill(database: str, first: int, count: int) -> int:
    """Append ``count`` messages with ids from ``first``, and set the worker's saved
    position to the new head (so they are replayed, not handled live); the head."""
    conn = c.connect(database)
    try:
        conn.executescript(SQLITE_SCHEMA)
        conn.execute("PRAGMA synchronous=OFF")
        now = time.time()
        chunk = 100_000
        for start in range(first, first + count, chunk):
            stop = min(start + chunk, first + count)
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO messages (id, timestamp, name, payload) VALUES (?, ?, ?, ?)",
                (
                    (i, now, "bench/sum", orjson.dumps({"key": f"k{i % KEYS}", "n": i}))
                    for i in range(start, stop)
                ),
            )
            conn.execute("COMMIT")
        head = first + count - 1
        conn.execute(
            "INSERT INTO positions VALUES ('summer', ?, ?) ON CONFLICT (worker) DO UPDATE"
            " SET position = excluded.position",
            (head, now),
        )
    finally:
        conn.close()
    return head


async def start(database: str, every: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    app, worker, projected = build(database, every)
    async with serving(app):
        seconds = time.perf_counter() - started
        report = app.inspect()
        snapshot = report["workers"]["summer"]["snapshot"]
        return {
            "seconds": seconds,
            "total": sum(worker.state.totals.values()),
            "projected": sum(projected.totals.values()),
            "rows_read": report["pump"]["rows_read"],
            "replayed": app.totals.snapshot()["summer"].replayed,
            "loaded_from": None if snapshot is None else snapshot["loaded_from"],
        }


def child(database: str, every: int | None) -> None:
    c.quiet_logging("warning")
    result = c.run(lambda: start(database, every))
    print(json.dumps({**result, "rss": c.max_rss_mib()}))


def measure(database: str, every: int | None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", database, str(every or 0)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def copy_of(database: str, target: Path) -> str:
    """A copy of a SQLite file closed by its last writer (WAL checkpointed first)."""
    conn = c.connect(database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(database, target)
    return str(target)


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--sizes", default=None, help="comma-separated log lengths")
    p.add_argument("--child", nargs=2, metavar=("DATABASE", "EVERY"), help="internal")
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]) or None)
        return 0
    default = "1000,3000,10000" if args.quick else "10000,100000,1000000"
    sizes = [int(s) for s in (args.sizes or default).split(",")]
    every = 1000 if args.quick else 10_000
    c.header(f"restart: {', '.join(f'{s:,}' for s in sizes)} messages, SQLite", args)
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            database = str(Path(tmp) / f"restart-{size}.db")
            fill(database, 1, size)
            primed = measure(database, every)  # a full replay that writes snapshots
            tail = every // 2
            head = fill(database, size + 1, tail)
            expected = head * (head + 1) // 2
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for _ in range(c.repeats(args)):
                # Each start on a copy: one that writes a snapshot (its replay passed
                # another interval) must not hand the next one a shorter tail.
                for mode, option in (("full", None), ("snapshots", every)):
                    copy = copy_of(database, Path(tmp) / "run.db")
                    runs[mode].append(measure(copy, option))
            for mode, measured in runs.items():
                for r in measured:
                    assert r["total"] == r["projected"] == expected, (mode, r, expected)
                assert all(r["loaded_from"] is None for r in runs["full"])
            loaded = runs["snapshots"][0]["loaded_from"]
            results[size] = {
                mode: {
                    "seconds": c.median(r["seconds"] for r in measured),
                    "rss_mib": c.median(r["rss"] for r in measured),
                    "rows_read": c.median(r["rows_read"] for r in measured),
                    "replayed": c.median(r["replayed"] for r in measured),
                }
                for mode, measured in runs.items()
            }
            full, snap = results[size]["full"], results[size]["snapshots"]
            print(
                f"{size:>9,} messages (+{tail:,} after the snapshot at {loaded:,}): "
                f"full {full['seconds']:7.3f} s, {full['rss_mib']:6.1f} MiB peak; "
                f"snapshots {snap['seconds']:6.3f} s, {snap['rss_mib']:6.1f} MiB peak, "
                f"{snap['replayed']:,.0f} replayed; ratio full/snapshots "
                f"{full['seconds'] / snap['seconds']:.1f} (first start writing them "
                f"{primed['seconds']:.2f} s)"
            )
    small, large = results[sizes[0]], results[sizes[-1]]
    growth = large["snapshots"]["seconds"] / small["snapshots"]["seconds"]
    speedup = large["full"]["seconds"] / large["snapshots"]["seconds"]
    lines = [
        c.target_line(
            f"with snapshots, {sizes[-1]:,} messages against {sizes[0]:,}",
            f"{growth:.2f}x",
            "<= 1.5x",
            growth <= 1.5,  # the target
        ),
        c.target_line(
            f"full replay against snapshots at {sizes[-1]:,}",
            f"{speedup:.1f}x faster",
            ">= 20x",
            speedup >= 20,  # the target
        ),
    ]
    by_size = {str(size): figures for size, figures in results.items()}
    c.save("restart", args, {"every": every, "sizes": by_size, "targets": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
