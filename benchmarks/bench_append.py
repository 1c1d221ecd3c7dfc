"""5. Append: 100 concurrent ``execute()`` callers with group commit.

Run it:  python benchmarks/bench_append.py [--quick] [--count 20000] [--callers 100]

An app on a fresh SQLite file (``synchronous=FULL``, the default) with no workers;
100 tasks each call ``await app.execute(cmd)`` in a loop until ``--count`` commands
are in. ``execute`` returns once the command is committed and applied to state.

Baseline in the same run: raw batched inserts into the same schema on the same disk,
``executemany`` of 1000 rows per transaction, same names and payloads, same
``synchronous=FULL``. Target: execute() reaches at least 50% of the raw inserts.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import trio

from petrock_trio.stores._sqlite import _SCHEMA
from petrock_trio.testing import serving


async def engine_append(database: str, count: int, callers: int) -> tuple[float, int]:
    """(seconds, transactions) for ``count`` commands from ``callers`` tasks."""
    app = c.new_app(database)
    classes = [c.COMMANDS[name] for name in c.NAMES]
    share = count // callers

    async def caller(k: int) -> None:
        for i in range(k * share, (k + 1) * share):
            await app.execute(classes[i % len(classes)](i))

    async with serving(app):
        batches = app.log.batches
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(callers):
                nursery.start_soon(caller, k)
        seconds = time.perf_counter() - started
        batches = app.log.batches - batches
    return seconds, batches


def raw_inserts(database: str, count: int, batch: int = 1000) -> float:
    conn = c.connect(database)
    conn.executescript(_SCHEMA)
    conn.execute("PRAGMA synchronous=FULL")
    try:
        started = time.perf_counter()
        for start in range(1, count + 1, batch):
            now = time.time()
            rows = [
                (i, now, c.NAMES[i % len(c.NAMES)], c.payload(i))
                for i in range(start, min(start + batch, count + 1))
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--callers", type=int, default=100)
    args = p.parse_args()
    count = args.count or (1_000 if args.quick else 20_000)
    count -= count % args.callers
    c.header(f"append: {args.callers} concurrent execute() callers, {count:,} commands", args)
    c.quiet_logging()
    engines: list[float] = []
    raws: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(c.repeats(args)):
            raw_s = raw_inserts(str(Path(tmp) / f"raw-{k}.db"), count)
            database = str(Path(tmp) / f"append-{k}.db")
            seconds, batches = c.run(
                functools.partial(engine_append, database, count, args.callers)
            )
            engines.append(count / seconds)
            raws.append(count / raw_s)
            ratios.append(raw_s / seconds)
            print(
                f"run {k + 1}: execute() {count / seconds:>9,.0f} commands/s "
                f"({batches} transactions, {count / max(batches, 1):.1f} commands each); "
                f"raw executemany {count / raw_s:>9,.0f} rows/s"
            )
    engine, raw, ratio = c.median(engines), c.median(raws), c.median(ratios)
    print(
        f"execute(): {engine:,.0f} commands/s; raw batched inserts {raw:,.0f} rows/s; "
        f"ratio {ratio:.3f}"
    )
    c.target_line(
        "group-committed execute() vs raw inserts", f"ratio {ratio:.3f}", ">= 0.50", ratio >= 0.5
    )
    c.save("append", args, {"count": count, "engine": engine, "raw": raw, "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
