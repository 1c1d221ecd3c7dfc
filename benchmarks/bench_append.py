"""5. Append: 100 concurrent ``execute()`` callers with group commit.

Run it:  python benchmarks/bench_append.py [--quick] [--count 20000] [--callers 100]
                                           [--batch 1000] [--postgres auto|URL]

An app on a fresh SQLite file (``synchronous=FULL``, the default) with no workers;
100 tasks each call ``await app.execute(cmd)`` in a loop until ``--count`` commands
are in. ``execute`` returns once the command is committed and applied to state.

Baseline in the same run: raw batched inserts into the same schema on the same disk,
``executemany`` of 1000 rows per transaction, same names and payloads, same
``synchronous=FULL``. Target: execute() reaches at least 50% of the raw inserts.

The ``execute_many`` row: one caller appends the same commands ``--batch`` (1000) at
a time with ``await app.execute_many(batch)``, on a fresh file, against the same
baseline (1000 rows per transaction). Target: at least 50% of the raw inserts too.

PostgreSQL (``--postgres``): the same app on a fresh schema of the server (``auto``
starts a throwaway one, with ``fsync=off``), against raw batched inserts with psycopg
into the store's schema, in another fresh schema of the same server, 1000 rows per
transaction, same names and payloads: the baseline is one ``INSERT … SELECT FROM
unnest(arrays)`` per transaction (how the store itself writes a batch, and the faster
way); ``executemany`` (pipelined by psycopg, one ``INSERT`` per row) is printed too.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import trio

from petrock_trio.stores._postgres import _SCHEMA as PG_SCHEMA
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


async def engine_append_many(database: str, count: int, batch: int) -> tuple[float, int]:
    """(seconds, transactions) for ``count`` commands, ``batch`` per execute_many."""
    app = c.new_app(database)
    classes = [c.COMMANDS[name] for name in c.NAMES]
    # Built before the clock starts, as the raw loop's rows are built inside it: the
    # commands are the caller's, what is measured is what the engine does with them.
    batches = [
        [classes[i % len(classes)](i) for i in range(start, min(start + batch, count))]
        for start in range(0, count, batch)
    ]
    async with serving(app):
        before = app.log.batches
        started = time.perf_counter()
        for commands in batches:
            await app.execute_many(commands)
        seconds = time.perf_counter() - started
        transactions = app.log.batches - before
    return seconds, transactions


def sqlite_repeat(
    tmp: str, k: int, count: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """Seconds of one repeat on SQLite files: raw inserts, execute(), execute_many()."""
    raw_s = raw_inserts(str(Path(tmp) / f"raw-{k}.db"), count)
    database = str(Path(tmp) / f"append-{k}.db")
    seconds, batches = c.run(functools.partial(engine_append, database, count, args.callers))
    print(
        f"run {k + 1} sqlite    : execute() {count / seconds:>9,.0f} commands/s "
        f"({batches} transactions, {count / max(batches, 1):.1f} commands each); "
        f"raw executemany {count / raw_s:>9,.0f} rows/s"
    )
    database = str(Path(tmp) / f"append-many-{k}.db")
    batched_s, batches = c.run(functools.partial(engine_append_many, database, count, args.batch))
    print(
        f"run {k + 1} sqlite    : execute_many() {count / batched_s:>9,.0f} commands/s "
        f"({batches} transactions of {args.batch}); ratio {raw_s / batched_s:.3f}"
    )
    return raw_s, seconds, batched_s


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
            conn.executemany(
                "INSERT INTO messages (id, timestamp, name, payload) VALUES (?, ?, ?, ?)", rows
            )
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def pg_raw_inserts(url: str, count: int, batch: int = 1000, *, many: bool = False) -> float:
    """Seconds to insert ``count`` rows, ``batch`` per transaction: one multi-row
    ``INSERT`` from arrays, or with ``many`` an ``executemany`` of one row each."""
    one = (
        "INSERT INTO messages"
        " SELECT * FROM unnest(%s::int8[], %s::float8[], %s::text[], %s::bytea[])"
    )
    with c.pg_connect(url) as conn:
        for statement in PG_SCHEMA:
            conn.execute(statement)
        cur = conn.cursor()
        started = time.perf_counter()
        for start in range(1, count + 1, batch):
            now = time.time()
            ids = range(start, min(start + batch, count + 1))
            names = [c.NAMES[i % len(c.NAMES)] for i in ids]
            payloads = [c.payload(i) for i in ids]
            with conn.transaction():
                if many:
                    cur.executemany(
                        "INSERT INTO messages VALUES (%s, %s, %s, %s)",
                        [(i, now, n, d) for i, n, d in zip(ids, names, payloads, strict=True)],
                    )
                else:
                    cur.execute(one, (list(ids), [now] * len(ids), names, payloads), prepare=True)
        return time.perf_counter() - started


def report(
    label: str,
    baseline: str,
    engines: list[float],
    raws: list[float],
    ratios: list[float],
    *,
    engine: str = "execute()",
) -> float:
    rate, raw, ratio = c.median(engines), c.median(raws), c.median(ratios)
    print(
        f"{label}: {engine} {rate:,.0f} commands/s; {baseline} {raw:,.0f} rows/s; ratio {ratio:.3f}"
    )
    return ratio


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--callers", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000, help="commands per execute_many")
    c.add_postgres_options(p)
    args = p.parse_args()
    count = args.count or (1_000 if args.quick else 20_000)
    count -= count % args.callers
    c.header(f"append: {args.callers} concurrent execute() callers, {count:,} commands", args)
    c.quiet_logging()
    engines: list[float] = []
    raws: list[float] = []
    ratios: list[float] = []
    manys: list[float] = []
    pg_engines: list[float] = []
    pg_raws: list[float] = []
    pg_ratios: list[float] = []
    pg_batches: list[int] = []
    pg_manys: list[float] = []
    data: dict[str, object] = {"count": count}
    with c.postgres(args) as pg, tempfile.TemporaryDirectory() as tmp:
        settings = pg.describe() if pg is not None else None
        for k in range(c.repeats(args)):
            raw_s, seconds, batched_s = sqlite_repeat(tmp, k, count, args)
            engines.append(count / seconds)
            raws.append(count / raw_s)
            ratios.append(raw_s / seconds)
            manys.append(count / batched_s)
            if pg is None:
                continue
            with pg.schema() as raw_url:
                raw_s = pg_raw_inserts(raw_url, count)
            with pg.schema() as raw_url:
                many_s = pg_raw_inserts(raw_url, count, many=True)
            with pg.schema() as url:
                seconds, batches = c.run(functools.partial(engine_append, url, count, args.callers))
            pg_engines.append(count / seconds)
            pg_raws.append(count / raw_s)
            pg_ratios.append(raw_s / seconds)
            pg_batches.append(batches)
            pg_manys.append(count / many_s)
            print(
                f"run {k + 1} postgresql: execute() {count / seconds:>9,.0f} commands/s "
                f"({batches} transactions, {count / max(batches, 1):.1f} commands each); "
                f"raw INSERT from arrays {count / raw_s:>9,.0f} rows/s, "
                f"raw executemany {count / many_s:>9,.0f} rows/s"
            )
    ratio = report("sqlite", "raw batched inserts (executemany)", engines, raws, ratios)
    many_ratio = report(
        f"sqlite, {args.batch} a call",
        "raw batched inserts (executemany)",
        manys,
        raws,
        [many / raw for many, raw in zip(manys, raws, strict=True)],
        engine="execute_many()",
    )
    data.update(
        engine=c.median(engines),
        raw=c.median(raws),
        ratio=ratio,
        execute_many={"batch": args.batch, "engine": c.median(manys), "ratio": many_ratio},
    )
    if settings is not None:
        data["postgres"] = {
            "settings": settings,
            "engine": c.median(pg_engines),
            "raw": c.median(pg_raws),
            "ratio": report(
                "postgresql",
                "raw batched inserts (INSERT from arrays)",
                pg_engines,
                pg_raws,
                pg_ratios,
            ),
            "raw_executemany": c.median(pg_manys),
            "transactions": c.median(pg_batches),
        }
    c.target_line(
        "group-committed execute() vs raw inserts (SQLite)",
        f"ratio {ratio:.3f}",
        ">= 0.50",
        ratio >= 0.5,
    )
    c.target_line(
        f"execute_many() of {args.batch} vs raw inserts of 1000 (SQLite)",
        f"ratio {many_ratio:.3f}",
        ">= 0.50",
        many_ratio >= 0.5,
    )
    c.save("append", args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
