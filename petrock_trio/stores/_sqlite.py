"""The embedded default store: SQLite through the standard library.

A file database has one writer connection and one reader connection, each driven
from a worker thread behind a one-slot limiter, so the Trio thread never waits on
disk. ``":memory:"`` keeps one connection and runs every call inline on the Trio
thread: with no thread hop, MockClock's autojump sees the true state of the program
and timing tests are exact.

A file database notices its file deleted or replaced (``_sqlitefile``): from then on
every write raises ``StoreGone``, and no commit is acknowledged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

import attrs
import trio

from .._errors import LeaseLost, StoreError, StoreGone
from .._message import Row
from . import _sqlitecontrols as controls
from . import _sqlitesql as sql
from ._base import (
    SNAPSHOTS_KEPT,
    Commit,
    DeadLetterRecord,
    LeaseRecord,
    RetryRecord,
    SnapshotRecord,
    StoreStatistics,
)
from ._sqlitefile import FileGuard
from ._sqlitewatch import watch_commits
from ._sqlitewrites import Writes

__all__ = ["SQLiteStore"]

T = TypeVar("T")

# The schema under its old name: the benchmarks build their tables from it.
_SCHEMA: Final = sql.SCHEMA


class SQLiteStore(controls.Controlled):
    """Messages, worker positions and dead letters in one SQLite file (WAL).

    Several processes may share the file: ``watch`` notices their appends through
    ``PRAGMA data_version`` (a read of shared memory, no query on the table) every
    ``watch_interval`` seconds. While it watches, it also looks every
    ``file_check_interval`` seconds whether its file is still at its path.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        watch_interval: float = 0.05,
        file_check_interval: float = 1.0,
    ) -> None:
        self.url = path
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.watch_interval = watch_interval
        self.file_check_interval = file_check_interval
        # ":memory:" or a shared in-memory URI ("file:NAME?mode=memory&cache=shared"):
        # nothing to wait for on disk, so no thread hop.
        self.uri = path.startswith("file:")
        self.inline = path == ":memory:" or (self.uri and "mode=memory" in path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._file: FileGuard | None = None
        self._message_columns = sql.MESSAGE_COLUMNS  # see _sqlitesql.message_columns
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._reads = 0
        self._rows_read = 0
        self._transactions = 0
        self._rows_appended = 0

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r} open={self._writer is not None}>"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
                uri=self.uri,
            )
            if not self.inline:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer
        if conn is None:
            raise StoreError("store is closed")
        if self.inline:
            # Still a checkpoint, as every async call of the engine: a cancel point
            # before anything is written, and a place where other tasks run.
            await trio.lowlevel.checkpoint()
            return _wrap(fn, conn)
        try:
            return await trio.to_thread.run_sync(
                self._guarded, fn, conn, limiter=self._write_limiter
            )
        except StoreGone:
            if self._file is not None:
                self._file.noticed()
            raise

    def _guarded(self, fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
        """``fn`` on the writer's thread, refused unless the file is still at its path
        before and after: a commit into a deleted file must not be acknowledged."""
        if self._file is not None:
            self._file.check()
        result = _wrap(fn, conn)
        if self._file is not None:
            self._file.check()
        return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        if conn is None:
            raise StoreError("store is closed")
        if self.inline:
            await trio.lowlevel.checkpoint()  # as in _write
            return _wrap(fn, conn)
        return await trio.to_thread.run_sync(_wrap, fn, conn, limiter=self._read_limiter)

    async def open(self) -> int:
        def setup() -> sqlite3.Connection:
            conn = self._connect()
            try:
                conn.executescript(sql.SCHEMA)
                conn.executescript(controls.SCHEMA)
                sql.migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise StoreError(f"cannot create schema in {self.path!r}: {exc}") from exc
            return conn

        if self.inline:
            # One connection serves reads and writes: there is no disk to wait for.
            self._writer = self._reader = setup()
        else:
            self._writer = await trio.to_thread.run_sync(setup)
            self._file = await trio.to_thread.run_sync(FileGuard.of, self._writer)
            self._reader = await trio.to_thread.run_sync(self._connect)
        return await self.head()

    async def aclose(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        for conn in {id(c): c for c in (writer, reader) if c is not None}.values():
            conn.close()

    async def commit_many(self, commits: Sequence[Commit]) -> list[list[Row]]:
        def run(conn: sqlite3.Connection) -> list[list[Row]]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _check_leases(conn, commits)
                (last,) = conn.execute(sql.HEAD).fetchone()
                results: list[list[Row]] = []
                writes = Writes()
                for commit in commits:
                    rows = commit.rows(range(last + 1, last + 1 + len(commit.appends)))
                    last += len(rows)
                    _fold(writes, commit, rows)
                    results.append(rows)
                writes.run(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return results

        results = await self._write(run)
        self._transactions += 1
        self._rows_appended += sum(map(len, results))
        return results

    async def read_after(
        self,
        after: int,
        limit: int,
        *,
        upto: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Row]:
        query = f"SELECT {self._message_columns} FROM messages WHERE id > ?"  # noqa: S608
        args: list[object] = [after]
        if upto is not None:
            query += " AND id <= ?"
            args.append(upto)
        if names is not None:
            query += f" AND name IN ({','.join('?' * len(names))})"
            args.extend(names)
        query += " ORDER BY id LIMIT ?"
        args.append(limit)

        def run(conn: sqlite3.Connection) -> list[Row]:
            return list(map(Row._make, conn.execute(query, args).fetchall()))

        rows = await self._read(run)
        self._reads += 1
        self._rows_read += len(rows)
        return rows

    async def head(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (head,) = conn.execute(sql.HEAD).fetchone()
            return int(head)

        return await self._read(run)

    async def watch(self, publish: Callable[[int], None]) -> None:
        """Publish the head whenever another connection (another process) commits.

        What changed is told by ``PRAGMA data_version``, which changes when any other
        connection commits and costs a few microseconds (a read of the file's shared
        memory, not of the table), so it runs inline on a connection of its own. When
        to look: on Linux, when the write-ahead log file is written (inotify), so an
        idle app never wakes up; elsewhere, a poll every ``watch_interval`` seconds
        that slows down to once a second while nothing changes.
        """
        if self.inline:
            # An in-memory database belongs to this process: nobody else can append.
            await trio.sleep_forever()
        conn = await trio.to_thread.run_sync(self._connect)
        try:
            async with trio.open_nursery() as nursery:
                if self._file is not None:
                    nursery.start_soon(self._file.watch, self.file_check_interval)
                await watch_commits(conn, self.path, self.watch_interval, publish)
        finally:
            conn.close()

    async def positions(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute("SELECT worker, position FROM positions").fetchall())

        return await self._read(run)

    async def retries(self) -> list[RetryRecord]:
        def run(conn: sqlite3.Connection) -> list[RetryRecord]:
            return [RetryRecord(*r) for r in conn.execute("SELECT * FROM retries").fetchall()]

        return await self._read(run)

    async def leases(
        self, holder: str, held: Mapping[str, int], wanted: Sequence[str], *, ttl: float, now: float
    ) -> dict[str, int]:
        # SQLite has no clock of its own: the processes sharing a file share a machine,
        # and so its wall clock.
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "UPDATE leases SET expires_at = ? WHERE worker = ? AND epoch = ?",
                    [(now + ttl, w, e) for w, e in held.items()],
                )
                conn.executemany(
                    sql.TAKE_LEASE, [(w, holder, now + ttl, now) for w in sorted(wanted)]
                )
                rows = conn.execute(
                    "SELECT worker, epoch FROM leases WHERE holder = ? AND expires_at >= ?",
                    (holder, now),
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return {w: e for w, e in rows if w in held or w in wanted}

        if not held and not wanted:
            return {}
        return await self._write(run)

    async def release_leases(self, held: Mapping[str, int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE leases SET expires_at = 0 WHERE worker = ? AND epoch = ?", held.items()
            )

        await self._write(run)

    async def lease_records(self) -> list[LeaseRecord]:
        def run(conn: sqlite3.Connection) -> list[LeaseRecord]:
            rows = conn.execute("SELECT * FROM leases ORDER BY worker").fetchall()
            return [LeaseRecord(*r) for r in rows]

        return await self._read(run)

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]:
        query = sql.DEAD_LETTERS
        args: tuple[object, ...] = ()
        if worker is not None:
            query += " WHERE worker = ?"
            args = (worker,)
        query += " ORDER BY last_failed_at, worker, message_id"

        def run(conn: sqlite3.Connection) -> list[DeadLetterRecord]:
            return sql.dead_letter_records(conn.execute(query, args))

        return await self._read(run)

    async def snapshots(self, name: str | None = None) -> list[SnapshotRecord]:
        query = sql.SNAPSHOTS
        args: tuple[object, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            args = (name,)
        query += " ORDER BY name, position DESC"

        def run(conn: sqlite3.Connection) -> list[SnapshotRecord]:
            # A file opened read-only may be older than the table, and cannot be given it.
            if conn.execute(sql.HAS_SNAPSHOTS).fetchone() is None:
                return []
            return [
                # Text where another program wrote text: the bytes, which then do not decode.
                SnapshotRecord(n, p, v, shape, s if isinstance(s, bytes) else str(s).encode(), t)
                for n, p, v, shape, s, t in conn.execute(query, args).fetchall()
            ]

        return await self._read(run)

    def gone(self) -> str | None:
        return None if self._file is None else self._file.gone

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            reads=self._reads,
            rows_read=self._rows_read,
            transactions=self._transactions,
            rows_appended=self._rows_appended,
        )


def _check_leases(conn: sqlite3.Connection, commits: Sequence[Commit]) -> None:
    """Raise LeaseLost unless every lease the commits name still has its epoch.

    Inside the write transaction: SQLite has one writer at a time, so no takeover can
    slip in between this check and the commit.
    """
    fences = {w: e for commit in commits for w, e in commit.leases.items()}
    lost = tuple(
        sorted(
            worker
            for worker, epoch in fences.items()
            if conn.execute("SELECT epoch FROM leases WHERE worker = ?", (worker,)).fetchone()
            != (epoch,)
        )
    )
    if lost:
        raise LeaseLost(lost)


def _fold(writes: Writes, commit: Commit, rows: list[Row]) -> None:
    """What ``commit`` writes (``rows`` its appends), after the commits before it."""
    if rows:
        # As plain tuples: sqlite3 binds a tuple subclass (Row) item by item through
        # the sequence protocol, a microsecond a row more than a tuple (measured).
        writes.add("messages", sql.INSERT_MESSAGE, map(tuple, rows))
    if commit.positions:
        stamp = commit.timestamp
        writes.add(
            "positions", sql.UPSERT_POSITION, [(w, p, stamp) for w, p in commit.positions.items()]
        )
        writes.add("retries", sql.DELETE_RETRIES_UPTO, commit.positions.items())
    if commit.retries:
        writes.add("retries", sql.UPSERT_RETRY, [attrs.astuple(r) for r in commit.retries])
    if commit.dead_letters:
        letters = [attrs.astuple(d) for d in commit.dead_letters]
        writes.add("dead_letters", sql.UPSERT_DEAD_LETTER, letters)
    if commit.resolved:
        writes.add("dead_letters", sql.DELETE_DEAD_LETTER, commit.resolved)
    if commit.forget_snapshots or commit.snapshots:
        names = sorted({r.name for r in commit.snapshots})
        writes.add("snapshots", sql.FORGET_SNAPSHOTS, [(n,) for n in commit.forget_snapshots])
        writes.add("snapshots", sql.UPSERT_SNAPSHOT, [attrs.astuple(r) for r in commit.snapshots])
        writes.add("snapshots", sql.PRUNE_SNAPSHOTS, [(n, n, SNAPSHOTS_KEPT) for n in names])


def _wrap(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    try:
        return fn(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite: {exc}") from exc
