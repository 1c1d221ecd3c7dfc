"""Fault trials: a served app under a steady stream of HTTP commands while a fault hits.

Run it:  python -m tests.faults.trial [--seconds S] [SCENARIO ...]   (or `just faults`)

Scenarios: ``disk-full`` (the SQLite file on a small tmpfs that fills up; skipped where
mounting is not allowed), ``lock-held`` (another connection holds the SQLite file's
write lock), ``file-deleted`` (the SQLite file is deleted under the server),
``corrupt-rows`` (another program writes rows that do not decode) and ``pg-stopped``
(the PostgreSQL server's processes are stopped with SIGSTOP, then resumed). Each row:
commands tried, acknowledged (201), lost (acknowledged but not in the log afterwards),
the health statuses seen while the fault lasted, and the time from the fault's end
until a command was acknowledged again and health was healthy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

import petrock_trio as pt
from tests.postgres_server import find_binaries, running_server

SCENARIOS = ("disk-full", "lock-held", "file-deleted", "corrupt-rows", "pg-stopped")
POST_EVERY = 0.05  # seconds between commands
HEALTH_EVERY = 0.1
REQUEST_TIMEOUT = 2.0
# App options of every trial (the short version in the test run lowers the store's
# health thresholds so that short faults show).
APP_OPTIONS: dict[str, Any] = {}


@pt.command("faults/order")
@attrs.frozen
class Order:
    n: int
    note: str = ""


@attrs.define
class Row:
    scenario: str
    tried: int = 0
    acknowledged: int = 0
    lost: int = 0
    health: set[str] = attrs.Factory(set)
    recovery: float | None = None  # seconds; None: did not recover in the trial
    skipped: str | None = None

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.scenario:<13} skipped: {self.skipped}"
        recovery = "no recovery" if self.recovery is None else f"{self.recovery:.2f} s"
        return (
            f"{self.scenario:<13} tried {self.tried:>4}  acknowledged {self.acknowledged:>4}  "
            f"lost {self.lost}  health seen {','.join(sorted(self.health)) or '-':<28} "
            f"recovery {recovery}"
        )


@attrs.define
class Stream:
    """Commands posted at a steady pace; what was acknowledged, and health over time."""

    client: httpx.AsyncClient
    sent: int = 0
    acked: list[tuple[float, int]] = attrs.Factory(list)  # (when, n)
    sent_at: dict[int, float] = attrs.Factory(dict)  # n -> when its request was sent
    health: list[tuple[float, str]] = attrs.Factory(list)

    async def post_forever(self) -> None:
        while True:
            n = self.sent
            self.sent += 1
            self.sent_at[n] = time.monotonic()
            with contextlib.suppress(httpx.HTTPError), trio.move_on_after(REQUEST_TIMEOUT):
                response = await self.client.post("/commands/faults/order", json={"n": n})
                if response.status_code == 201:
                    self.acked.append((time.monotonic(), n))
            await trio.sleep(POST_EVERY)

    async def watch_health(self) -> None:
        while True:
            status = "no answer"
            with contextlib.suppress(httpx.HTTPError, ValueError), trio.move_on_after(1.0):
                status = (await self.client.get("/health")).json().get("status", "?")
            self.health.append((time.monotonic(), status))
            await trio.sleep(HEALTH_EVERY)


@contextlib.asynccontextmanager
async def streaming(database: str) -> AsyncIterator[tuple[pt.App, Stream]]:
    app = pt.App(database=database, hooks=[], **APP_OPTIONS)
    app.register_command(Order)
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        url = await nursery.start(partial(pt.serve_http, app, port=0))
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
            stream = Stream(client)
            async with trio.open_nursery() as load:
                load.start_soon(stream.post_forever)
                load.start_soon(stream.watch_health)
                yield app, stream
                load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


def _judge(row: Row, stream: Stream, fault: tuple[float, float], logged: set[int]) -> None:
    began, ended = fault
    row.tried = stream.sent
    row.acknowledged = len(stream.acked)
    row.lost = sum(1 for _, n in stream.acked if n not in logged)
    row.health = {status for at, status in stream.health if began <= at <= ended + 0.5}
    acked_after = [at for at, _ in stream.acked if at > ended]
    healthy_after = [at for at, status in stream.health if at > ended and status == "healthy"]
    if acked_after and healthy_after:
        row.recovery = max(acked_after[0], healthy_after[0]) - ended


def _logged(database: str) -> set[int]:
    """The ``n`` of every order in the log, read straight from the database."""
    if database.startswith("postgresql://"):
        import psycopg  # noqa: PLC0415 - the `postgres` extra

        with psycopg.connect(database) as conn:
            rows = conn.execute("SELECT payload FROM messages WHERE name = 'faults/order'")
            payloads = [bytes(r[0]) for r in rows]
    else:
        if not Path(database).exists():
            return set()
        lite = sqlite3.connect(database)
        try:
            cursor = lite.execute("SELECT payload FROM messages WHERE name = 'faults/order'")
            payloads = [r[0] if isinstance(r[0], bytes) else r[0].encode() for r in cursor]
        finally:
            lite.close()
    import orjson  # noqa: PLC0415

    found: set[int] = set()
    for payload in payloads:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            found.add(int(orjson.loads(payload)["n"]))
    return found


async def _trial(
    row: Row,
    database: str,
    seconds: float,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    async with streaming(database) as (_, stream):
        await trio.sleep(seconds / 3)
        began = time.monotonic()
        await start()
        await trio.sleep(seconds)
        await stop()
        ended = time.monotonic()
        await trio.sleep(max(3.0, seconds / 2))
    _judge(row, stream, (began, ended), _logged(database))


async def lock_held(seconds: float) -> Row:
    row = Row("lock-held")
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "log.db")
        holder = sqlite3.connect(
            database, timeout=30, isolation_level=None, check_same_thread=False
        )

        async def start() -> None:
            await trio.to_thread.run_sync(holder.execute, "BEGIN EXCLUSIVE")

        async def stop() -> None:
            holder.execute("ROLLBACK")

        try:
            await _trial(row, database, seconds, start, stop)
        finally:
            holder.close()
    return row


async def file_deleted(seconds: float) -> Row:
    row = Row("file-deleted")
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "log.db")
        deleted_at: list[float] = []

        async def start() -> None:
            deleted_at.append(time.monotonic())
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(database + suffix).unlink()  # noqa: ASYNC240 - the fault itself

        async with streaming(database) as (_, stream):
            await trio.sleep(seconds / 3)
            began = time.monotonic()
            await start()
            await trio.sleep(seconds)
            ended = time.monotonic()
        _judge(row, stream, (began, ended), set())
        # Everything committed before the deletion went with the file (the operator
        # deleted it), even when its answer arrived a moment after; what counts as lost
        # is what was acknowledged for a request sent after the deletion.
        row.lost = sum(1 for _, n in stream.acked if stream.sent_at[n] > deleted_at[0])
    return row


async def corrupt_rows(seconds: float) -> Row:
    row = Row("corrupt-rows")
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "log.db")

        async def start() -> None:
            conn = sqlite3.connect(database, timeout=30, isolation_level=None)
            try:
                conn.executemany(
                    "INSERT INTO messages (timestamp, name, payload) VALUES (?, ?, ?)",
                    [
                        (1e20, "faults/order", b'{"n": -1}'),
                        ("yesterday", "faults/order", b'{"n": -2}'),
                        (time.time(), "faults/order", b"not json"),
                    ],
                )
            finally:
                conn.close()

        async def nothing() -> None:
            pass

        await _trial(row, database, seconds, start, nothing)
    return row


@contextlib.contextmanager
def _tmpfs(size: str) -> Iterator[Path | None]:
    mount = Path(tempfile.mkdtemp(prefix="petrock-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        with contextlib.suppress(OSError):
            mount.rmdir()


async def disk_full(seconds: float) -> Row:
    row = Row("disk-full")
    with _tmpfs("8m") as mount:
        if mount is None:
            row.skipped = "cannot mount a tmpfs here"
            return row
        database = str(mount / "log.db")
        filler = mount / "filler"

        async def start() -> None:
            with filler.open("wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()

        async def stop() -> None:
            filler.unlink()

        await _trial(row, database, seconds, start, stop)
    return row


async def pg_stopped(seconds: float) -> Row:
    row = Row("pg-stopped")
    bindir = find_binaries()
    if bindir is None:
        row.skipped = "PostgreSQL is not installed"
        return row
    with running_server(bindir) as server:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE petrock")
        database = server.url("petrock")
        stopped: list[int] = []

        def postgres_pids() -> list[int]:
            # Every server process: the backends and their parent, the postmaster.
            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                pids = {int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity")}
            parents = {int(Path(f"/proc/{pid}/stat").read_text().split()[3]) for pid in pids}
            return sorted(pids | parents)

        async def start() -> None:
            stopped.extend(await trio.to_thread.run_sync(postgres_pids))
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

        async def stop() -> None:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        await _trial(row, database, seconds, start, stop)
    return row


TRIALS = {
    "disk-full": disk_full,
    "lock-held": lock_held,
    "file-deleted": file_deleted,
    "corrupt-rows": corrupt_rows,
    "pg-stopped": pg_stopped,
}


async def run(names: list[str], seconds: float, **app_options: float) -> list[Row]:
    APP_OPTIONS.clear()
    APP_OPTIONS.update(app_options)
    return [await TRIALS[name](seconds) for name in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long each fault lasts")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    pt.configure_logging(level="critical")
    rows = trio.run(run, args.scenarios or list(SCENARIOS), args.seconds)
    for row in rows:
        print(row.line())
    return 1 if any(row.lost for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
