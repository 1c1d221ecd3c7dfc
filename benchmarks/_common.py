"""Shared helpers of the benchmark programs: logs to measure, the raw baseline, reporting.

Every program measures the engine and a baseline in the same run and prints the ratio,
so that figures from a loaded or slower machine still compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import structlog
import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/bench_x.py` puts only benchmarks/ there
    sys.path.insert(0, str(ROOT))

import petrock_trio as pt  # noqa: E402 - after the path fix above
from petrock_trio.stores import SQLiteStore  # noqa: E402
from petrock_trio.stores._sqlite import _SCHEMA  # noqa: E402 - the engine's own schema
from petrock_trio.testing import serving  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAGE = 1000  # the engine's default page size; the raw loop pages the same way


# --- commands ------------------------------------------------------------------------


def _make_command(name: str) -> type[Any]:
    cls = attrs.make_class(
        name.replace("/", "_"), {"n": attrs.field(type=int)}, frozen=True, slots=True
    )
    return pt.command(name)(cls)


NAMES: list[str] = [f"bench/c{k:02d}" for k in range(100)]
COMMANDS: dict[str, type[Any]] = {name: _make_command(name) for name in NAMES}


def payload(i: int) -> bytes:
    return orjson.dumps({"n": i})


# --- logs ------------------------------------------------------------------------------


def connect(database: str) -> sqlite3.Connection:
    uri = database.startswith("file:")
    conn = sqlite3.connect(database, isolation_level=None, uri=uri)
    if not uri:
        conn.execute("PRAGMA journal_mode=WAL")
    return conn


def fill_log(database: str, count: int, names: Sequence[str] = NAMES) -> None:
    """Append ``count`` messages cycling through ``names`` straight into the engine's schema
    (fast: the log is the input of the measurement, not what is measured)."""
    conn = connect(database)
    try:
        conn.executescript(_SCHEMA)
        conn.execute("PRAGMA synchronous=OFF")
        (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        now = time.time()
        chunk = 100_000
        for start in range(last + 1, last + count + 1, chunk):
            stop = min(start + chunk, last + count + 1)
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?)",
                ((i, now, names[i % len(names)], payload(i)) for i in range(start, stop)),
            )
            conn.execute("COMMIT")
    finally:
        conn.close()


def reset_positions(database: str, positions: dict[str, int] | None = None) -> None:
    """Forget saved positions (and save ``positions``), so every run starts the same way."""
    conn = connect(database)
    try:
        conn.execute("DELETE FROM positions")
        conn.execute("DELETE FROM dead_letters")
        for worker, position in (positions or {}).items():
            conn.execute("INSERT INTO positions VALUES (?, ?, ?)", (worker, position, time.time()))
    finally:
        conn.close()


def raw_loop(database: str, page: int = PAGE) -> tuple[int, float]:
    """The raw limit: page through the log, decode each payload, dispatch by name.

    Returns (messages, seconds).
    """
    seen = [0]

    def handle(data: Any) -> None:  # noqa: ARG001 - the dispatch target takes the payload
        seen[0] += 1

    dispatch: dict[str, Callable[[Any], None]] = dict.fromkeys(NAMES, handle)
    conn = connect(database)
    try:
        started = time.perf_counter()
        after = 0
        loads = orjson.loads
        sql = "SELECT id, timestamp, name, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?"
        while True:
            rows = conn.execute(sql, (after, page)).fetchall()
            if not rows:
                break
            for _id, _ts, name, data in rows:
                dispatch[name](loads(data))
            after = rows[-1][0]
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return seen[0], seconds


# --- the engine -------------------------------------------------------------------------


async def _nothing(ctx: pt.HandlerContext, cmd: Any, state: Any) -> None:
    """The trivial handler."""


def routing_worker(name: str, names: Iterable[str]) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker(name)
    for command in names:
        worker.on_command(command, _nothing)
    return worker


def new_app(
    database: str, *, hooks: list[pt.Hook] | None = None, store: SQLiteStore | None = None
) -> pt.App:
    app = pt.App(database=database, hooks=hooks, store=store)
    for cls in COMMANDS.values():
        app.register_command(cls)
    return app


async def time_catchup(app: pt.App) -> float:
    """Seconds from serving ``app`` until its workers have handled the whole log."""
    started = time.perf_counter()
    async with serving(app):
        await app.caught_up()
        return time.perf_counter() - started


def quiet_logging(level: str = "info") -> None:
    """Logging as a production app configures it, written nowhere (the path is measured,
    not the terminal)."""
    pt.configure_logging(level=level, json=True, stream=open(os.devnull, "w"))  # noqa: SIM115, PTH123


def reset_logging() -> None:
    structlog.reset_defaults()


# --- measuring and reporting ------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (default 3)")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/NAME.json")
    return p


def repeats(args: argparse.Namespace) -> int:
    if args.repeat is not None:
        return int(args.repeat)
    return 1 if args.quick else 3


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def target_line(what: str, value: str, target: str, ok: bool) -> str:
    line = f"target: {what}: {value} (target {target}) {verdict(ok)}"
    print(line)
    return line


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load": os.getloadavg()[0],
    }


def header(title: str, args: argparse.Namespace) -> None:
    m = machine()
    mode = "quick" if args.quick else "full"
    print(f"== {title} ({mode}, {repeats(args)} run(s), median reported)")
    print(f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, load {m['load']:.2f}")


def save(name: str, args: argparse.Namespace, data: dict[str, Any]) -> None:
    if not args.save:
        return
    RESULTS.mkdir(exist_ok=True)
    document = {"machine": machine(), "quick": bool(args.quick), **data}
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"saved {path.relative_to(ROOT)}")


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dump(data: object) -> str:
    return json.dumps(data)
