"""The SQLite store's operator tables and what is done to them: the workers' controls
(pause, resets of a position) and the dead letters discarded.

Each function runs on one connection, inside the store's writer or reader thread; a
write is one ``BEGIN IMMEDIATE`` transaction. Both tables are created on open, in an
older file too (``SCHEMA``); a file opened read-only may lack them and reads as none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final, TypeVar

from .._errors import NotPaused
from .._partition import split_name
from ._base import ControlRecord, DeadLetterRecord
from ._sqlitesql import DEAD_LETTERS, DELETE_DEAD_LETTER, dead_letter_records

__all__ = ["SCHEMA", "Controlled"]

T = TypeVar("T")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS worker_controls (
    worker     TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    reset_to   INTEGER,
    updated_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS discarded_letters (
    worker       TEXT    NOT NULL,
    message_id   INTEGER NOT NULL,
    command_name TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    discarded_at REAL    NOT NULL,
    PRIMARY KEY (worker, message_id)
);
"""

_CONTROLS: Final = "SELECT worker, paused, generation, reset_to, updated_at FROM worker_controls"

_SET_PAUSED: Final = """
INSERT INTO worker_controls (worker, paused, generation, reset_to, updated_at)
VALUES (?, ?, 0, NULL, ?)
ON CONFLICT (worker) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
"""

_HAS_TABLE: Final = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"


def _has(conn: sqlite3.Connection, table: str) -> bool:
    # A file opened read-only may be older than the table, and cannot be given it.
    return conn.execute(_HAS_TABLE, (table,)).fetchone() is not None


def _record(row: tuple[str, int, int, int | None, float]) -> ControlRecord:
    worker, paused, generation, reset_to, updated_at = row
    return ControlRecord(worker, bool(paused), generation, reset_to, updated_at)


def _transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _one(conn: sqlite3.Connection, worker: str) -> ControlRecord | None:
    row = conn.execute(_CONTROLS + " WHERE worker = ?", (worker,)).fetchone()
    return None if row is None else _record(row)


def _controls(conn: sqlite3.Connection) -> list[ControlRecord]:
    if not _has(conn, "worker_controls"):
        return []
    return [_record(row) for row in conn.execute(_CONTROLS + " ORDER BY worker")]


def _set_paused(
    conn: sqlite3.Connection, worker: str, *, paused: bool, now: float
) -> ControlRecord:
    def body() -> ControlRecord:
        conn.execute(_SET_PAUSED, (worker, int(paused), now))
        record = _one(conn, worker)
        assert record is not None
        return record

    return _transaction(conn, body)


def _names_of(conn: sqlite3.Connection, table: str, column: str, worker: str) -> list[str]:
    """The stored names in ``table`` that are ``worker``'s: its own, or a partition's
    (``worker#i/N``) under any partitioning."""
    found = conn.execute(f"SELECT DISTINCT {column} FROM {table}")  # noqa: S608 - constants
    return [name for (name,) in found if split_name(name)[0] == worker]


def _reset_positions(
    conn: sqlite3.Connection, worker: str, names: Sequence[str], to: int, now: float
) -> ControlRecord:
    def body() -> ControlRecord:
        record = _one(conn, worker)
        if record is None or not record.paused:
            raise NotPaused(
                f"worker {worker!r} is not paused: pause it before resetting its position",
                worker=worker,
            )
        for table, column in (("positions", "worker"), ("retries", "worker")):
            stale = _names_of(conn, table, column, worker)
            conn.executemany(f"DELETE FROM {table} WHERE worker = ?", [(n,) for n in stale])  # noqa: S608
        conn.executemany(
            "INSERT INTO positions (worker, position, updated_at) VALUES (?, ?, ?)",
            [(name, to, now) for name in names],
        )
        snapshots = _names_of(conn, "snapshots", "name", worker) if _has(conn, "snapshots") else []
        conn.executemany(
            "DELETE FROM snapshots WHERE name = ? AND position > ?", [(n, to) for n in snapshots]
        )
        for table in ("dead_letters", "discarded_letters"):
            conn.execute(f"DELETE FROM {table} WHERE worker = ? AND message_id > ?", (worker, to))  # noqa: S608
        # Whoever runs the worker now is fenced off: its next commit, position flush or
        # lease renewal fails, and it starts again from what is written here.
        leases = set(_names_of(conn, "leases", "worker", worker)) | set(names)
        conn.executemany(
            "UPDATE leases SET epoch = epoch + 1, expires_at = 0 WHERE worker = ?",
            [(n,) for n in sorted(leases)],
        )
        conn.execute(
            "UPDATE worker_controls SET generation = generation + 1, reset_to = ?, "
            "updated_at = ? WHERE worker = ?",
            (to, now, worker),
        )
        updated = _one(conn, worker)
        assert updated is not None
        return updated

    return _transaction(conn, body)


def _discard(
    conn: sqlite3.Connection, letters: Sequence[tuple[str, int]], now: float
) -> list[DeadLetterRecord]:
    def body() -> list[DeadLetterRecord]:
        found: list[DeadLetterRecord] = []
        for worker, message_id in letters:
            cursor = conn.execute(
                DEAD_LETTERS + " WHERE worker = ? AND message_id = ?", (worker, message_id)
            )
            found.extend(dead_letter_records(cursor))
        conn.executemany(
            "INSERT OR REPLACE INTO discarded_letters VALUES (?, ?, ?, ?, ?, ?)",
            [(d.worker, d.message_id, d.command_name, d.error, d.attempts, now) for d in found],
        )
        conn.executemany(DELETE_DEAD_LETTER, [(d.worker, d.message_id) for d in found])
        return found

    return _transaction(conn, body)


def _discarded(conn: sqlite3.Connection, worker: str | None) -> list[tuple[str, int]]:
    if not _has(conn, "discarded_letters"):
        return []
    query = "SELECT worker, message_id FROM discarded_letters"
    args: tuple[str, ...] = ()
    if worker is not None:
        query += " WHERE worker = ?"
        args = (worker,)
    return [(w, m) for w, m in conn.execute(query + " ORDER BY worker, message_id", args)]


def _count_messages(
    conn: sqlite3.Connection, after: int, upto: int, names: Sequence[str]
) -> tuple[int, int | None, int | None]:
    if not names or upto <= after:
        return 0, None, None
    marks = ",".join("?" * len(names))
    query = (
        "SELECT count(*), min(id), max(id) FROM messages "  # noqa: S608 - placeholders only
        f"WHERE id > ? AND id <= ? AND name IN ({marks})"
    )
    count, first, last = conn.execute(query, (after, upto, *names)).fetchone()
    return int(count), first, last


class Controlled:
    """The operator's calls of :class:`~petrock_trio.stores.SQLiteStore` (a base of it),
    on its reader and writer connections."""

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        raise NotImplementedError

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        raise NotImplementedError

    async def controls(self) -> list[ControlRecord]:
        return await self._read(_controls)

    async def set_paused(self, worker: str, *, paused: bool, now: float) -> ControlRecord:
        return await self._write(partial(_set_paused, worker=worker, paused=paused, now=now))

    async def reset_positions(
        self, worker: str, names: Sequence[str], to: int, *, now: float
    ) -> ControlRecord:
        reset = partial(_reset_positions, worker=worker, names=names, to=to, now=now)
        return await self._write(reset)

    async def discard_dead_letters(
        self, letters: Sequence[tuple[str, int]], *, now: float
    ) -> list[DeadLetterRecord]:
        return await self._write(partial(_discard, letters=letters, now=now))

    async def discarded(self, worker: str | None = None) -> list[tuple[str, int]]:
        return await self._read(partial(_discarded, worker=worker))

    async def count_messages(
        self, after: int, upto: int, names: Sequence[str]
    ) -> tuple[int, int | None, int | None]:
        return await self._read(partial(_count_messages, after=after, upto=upto, names=names))
