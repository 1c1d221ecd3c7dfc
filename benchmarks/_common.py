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
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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

if TYPE_CHECKING:
    import psycopg

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
                # Columns named: the schema may have more (nullable) ones.
                "INSERT INTO messages (id, timestamp, name, payload) VALUES (?, ?, ?, ?)",
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


def routing_worker(
    name: str, names: Iterable[str], *, batch_positions: bool = False
) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker(name, batch_positions=batch_positions)
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


def engine_version() -> dict[str, Any]:
    """The commit measured, and whether the engine's files differed from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", "petrock_trio")
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "engine_modified": bool(changed)}


def save(name: str, args: argparse.Namespace, data: dict[str, Any]) -> None:
    if not args.save:
        return
    RESULTS.mkdir(exist_ok=True)
    document = {"machine": machine(), **engine_version(), "quick": bool(args.quick), **data}
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"saved {path.relative_to(ROOT)}")


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dump(data: object) -> str:
    return json.dumps(data)


# --- PostgreSQL -------------------------------------------------------------------------


def add_postgres_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--postgres",
        metavar="URL|auto",
        default=None,
        help="also measure on PostgreSQL: `auto` starts a throwaway server as the tests do "
        "(tests/postgres_server.py: fsync=off, so not durable); a postgresql:// URL names "
        "a database to use instead (each run creates a schema of its own and drops it)",
    )
    p.add_argument("--no-postgres", action="store_true", help="ignore --postgres")


def with_search_path(url: str, schema: str) -> str:
    if "options=" in url:
        raise SystemExit("--postgres: give a URL without `options=` (a schema is set there)")
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={schema}')}"


@attrs.frozen
class Postgres:
    """A PostgreSQL database the benchmarks create their schemas in.

    ``label`` says where the server came from; the URL itself is never printed or saved
    (it may hold a password).
    """

    url: str
    label: str

    @contextmanager
    def schema(self) -> Iterator[str]:
        """The URL of a new, empty schema: a log of its own, dropped afterwards."""
        from psycopg import sql  # noqa: PLC0415 - optional

        name = f"bench_{uuid.uuid4().hex[:12]}"
        with pg_connect(self.url) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            yield with_search_path(self.url, name)
        finally:
            with pg_connect(self.url) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))

    def settings(self) -> dict[str, str]:
        """The server settings that decide what a commit costs."""
        out = {"server": self.label}
        with pg_connect(self.url) as conn:
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes"):
                row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
                out[name] = str(row[0]) if row is not None else "?"
        return out

    def describe(self) -> dict[str, str]:
        settings = self.settings()
        print(
            f"postgresql: {settings['server']}, version {settings['server_version']}; "
            f"fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}, "
            f"full_page_writes={settings['full_page_writes']}"
        )
        return settings


@contextmanager
def postgres(args: argparse.Namespace) -> Iterator[Postgres | None]:
    """The PostgreSQL database to measure on, or None (saying why) when there is none."""
    if args.postgres is None or args.no_postgres:
        print("postgresql: not measured (run with --postgres auto, or --postgres URL)")
        yield None
        return
    try:
        import psycopg  # noqa: PLC0415 - optional
    except ImportError:
        print("postgresql: skipped (psycopg is not installed: the `postgres` extra)")
        yield None
        return
    if args.postgres != "auto":
        yield Postgres(args.postgres, "server given by --postgres")
        return
    from tests.postgres_server import find_binaries, running_server  # noqa: PLC0415

    bindir = find_binaries()
    if bindir is None:
        print("postgresql: skipped (no initdb/pg_ctl under /usr/lib/postgresql/*/bin or PATH)")
        yield None
        return
    with running_server(bindir) as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield Postgres(server.url("bench"), "throwaway server (tests/postgres_server.py)")


def pg_connect(url: str) -> psycopg.Connection[Any]:
    import psycopg  # noqa: PLC0415 - optional

    return psycopg.connect(url, autocommit=True)


def pg_fill_log(url: str, count: int, names: Sequence[str] = NAMES) -> None:
    """As :func:`fill_log`, into the PostgreSQL store's schema (``COPY``), then ``VACUUM
    ANALYZE`` so that neither side of the measurement pays for hint bits or statistics."""
    from petrock_trio.stores._postgres import _SCHEMA as PG_SCHEMA  # noqa: PLC0415

    with pg_connect(url) as conn:
        for statement in PG_SCHEMA:
            conn.execute(statement)
        now = time.time()
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY messages (id, timestamp, name, payload) FROM STDIN") as copy:
                for i in range(1, count + 1):
                    copy.write_row((i, now, names[i % len(names)], payload(i)))
            cur.execute("SELECT setval('messages_id_seq', %s)", (count,))
        conn.execute("VACUUM ANALYZE messages")


def pg_reset_positions(url: str) -> None:
    """Forget every worker's saved state (all the store's tables but the log itself)."""
    from psycopg import sql  # noqa: PLC0415 - optional

    with pg_connect(url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename <> 'messages'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))


def pg_raw_loop(url: str, page: int = PAGE) -> tuple[int, float]:
    """The raw limit on PostgreSQL: :func:`raw_loop` with psycopg (a prepared statement,
    binary results, one round trip per page)."""
    seen = [0]

    def handle(data: Any) -> None:  # noqa: ARG001 - the dispatch target takes the payload
        seen[0] += 1

    dispatch: dict[str, Callable[[Any], None]] = dict.fromkeys(NAMES, handle)
    with pg_connect(url) as conn:
        cur = conn.cursor(binary=True)
        started = time.perf_counter()
        after = 0
        loads = orjson.loads
        sql = "SELECT id, name, payload FROM messages WHERE id > %s ORDER BY id LIMIT %s"
        while True:
            rows = cur.execute(sql, (after, page), prepare=True).fetchall()
            if not rows:
                break
            for _id, name, data in rows:
                dispatch[name](loads(data))
            after = rows[-1][0]
        seconds = time.perf_counter() - started
    return seen[0], seconds
