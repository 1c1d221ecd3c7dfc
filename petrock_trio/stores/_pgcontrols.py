"""The PostgreSQL store's operator tables and what is done to them: the workers'
controls (pause, resets of a position) and the dead letters discarded.

A change of controls notifies the log's channel with ``controls`` (not a head), so
every process that listens reads them again at once. A reset is one function, so that
its check (the worker is paused) and its writes are one transaction with the control
row locked; it locks the rows it changes in the workers' order, as lease rounds and
fenced commits do, so that none of them waits for another in a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from psycopg import pq

from .._errors import NotPaused
from ._base import ControlRecord, DeadLetterRecord
from ._pgbinary import (
    TEXT,
    Statement,
    float8,
    get_float,
    get_int,
    get_optional_text,
    get_text,
    int8,
    int8s,
    read_rows,
    text,
    texts,
)

__all__ = ["SCHEMA", "Controlled"]

SCHEMA: Final[Sequence[bytes]] = (
    b"""CREATE TABLE IF NOT EXISTS worker_controls (
        worker     TEXT             PRIMARY KEY,
        paused     BOOLEAN          NOT NULL,
        generation BIGINT           NOT NULL,
        reset_to   BIGINT,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    b"""CREATE TABLE IF NOT EXISTS discarded_letters (
        worker       TEXT             NOT NULL,
        message_id   BIGINT           NOT NULL,
        command_name TEXT             NOT NULL,
        error        TEXT             NOT NULL,
        attempts     BIGINT           NOT NULL,
        discarded_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (worker, message_id)
    )""",
    # Whether a stored name is worker w's: its own, or a partition's (w#i/N).
    b"""CREATE OR REPLACE FUNCTION petrock_trio_of(name TEXT, w TEXT)
    RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS $$
        SELECT name = w OR (left(name, length(w)) = w
                            AND substr(name, length(w) + 1) ~ '^#[0-9]+/[0-9]+$')
    $$""",
    b"""CREATE OR REPLACE FUNCTION petrock_trio_reset(
        w TEXT, names TEXT[], target BIGINT, at DOUBLE PRECISION
    ) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM worker_controls WHERE worker = w AND paused FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        PERFORM 1 FROM leases WHERE petrock_trio_of(worker, w) OR worker = ANY(names)
            ORDER BY worker FOR UPDATE;
        UPDATE leases SET epoch = epoch + 1, expires_at = 0
            WHERE petrock_trio_of(worker, w) OR worker = ANY(names);
        PERFORM 1 FROM positions WHERE petrock_trio_of(worker, w) ORDER BY worker FOR UPDATE;
        DELETE FROM positions WHERE petrock_trio_of(worker, w);
        INSERT INTO positions (worker, position, updated_at)
            SELECT n, target, at FROM unnest(names) AS n ORDER BY n;
        DELETE FROM retries WHERE petrock_trio_of(worker, w);
        DELETE FROM snapshots WHERE petrock_trio_of(name, w) AND position > target;
        DELETE FROM dead_letters WHERE worker = w AND message_id > target;
        DELETE FROM discarded_letters WHERE worker = w AND message_id > target;
        UPDATE worker_controls SET generation = generation + 1, reset_to = target,
            updated_at = at WHERE worker = w;
        PERFORM pg_notify('petrock_trio_' || 'messages'::regclass::oid, 'controls');
        RETURN true;
    END $$""",
)

_COLUMNS: Final = b"worker, paused::int::int8, generation, reset_to, updated_at"

_CONTROLS: Final = b"SELECT " + _COLUMNS + b" FROM worker_controls ORDER BY worker"

_ONE: Final = b"SELECT " + _COLUMNS + b" FROM worker_controls WHERE worker = $1"

_SET_PAUSED: Final = b"""
INSERT INTO worker_controls (worker, paused, generation, reset_to, updated_at)
VALUES ($1, $2::int8 <> 0, 0, NULL, $3)
ON CONFLICT (worker) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
"""

_NOTIFY: Final = b"SELECT pg_notify('petrock_trio_' || 'messages'::regclass::oid, 'controls')"

_RESET: Final = b"SELECT petrock_trio_reset($1, $2::text[], $3, $4)::int::int8"

_DISCARD: Final = b"""
WITH gone AS (
    DELETE FROM dead_letters d USING unnest($1::text[], $2::int8[]) AS r(worker, message_id)
    WHERE d.worker = r.worker AND d.message_id = r.message_id
    RETURNING d.*
), kept AS (
    INSERT INTO discarded_letters
    SELECT worker, message_id, command_name, error, attempts, $3 FROM gone
    ON CONFLICT (worker, message_id) DO UPDATE SET
        command_name = excluded.command_name, error = excluded.error,
        attempts = excluded.attempts, discarded_at = excluded.discarded_at
)
SELECT worker, message_id, command_name, error, attempts, first_failed_at, last_failed_at,
       traceback
FROM gone ORDER BY last_failed_at, worker, message_id
"""

_DISCARDED: Final = b"""
SELECT worker, message_id FROM discarded_letters WHERE $1::text IS NULL OR worker = $1
ORDER BY worker, message_id
"""

_COUNT: Final = b"""
SELECT count(*)::int8, coalesce(min(id), 0)::int8, coalesce(max(id), 0)::int8 FROM messages
WHERE id > $1 AND id <= $2 AND name = ANY($3::text[])
"""

# A database opened read-only may be older than the tables, and cannot be given them.
_HAS_TABLES: Final = b"SELECT (to_regclass('worker_controls') IS NOT NULL)::int::int8"


def _records(res: pq.abc.PGresult) -> list[ControlRecord]:
    def reset_to(r: pq.abc.PGresult, row: int, col: int) -> int | None:
        return None if r.get_value(row, col) is None else get_int(r, row, col)

    columns = (get_text, get_int, get_int, reset_to, get_float)
    return [ControlRecord(w, bool(p), g, t, u) for w, p, g, t, u in read_rows(res, columns)]


class Controlled:
    """The operator's calls of :class:`~petrock_trio.stores.PostgresStore` (a base of
    it), on its reader and writer connections."""

    # Whether the tables exist: known after the first look (a writer's open makes them).
    _control_tables: bool | None = None

    async def _read(self, statement: Statement) -> pq.abc.PGresult:
        raise NotImplementedError

    async def _write(
        self, statements: Sequence[Statement], *, prepare: bool = True
    ) -> list[pq.abc.PGresult]:
        raise NotImplementedError

    async def _has_tables(self) -> bool:
        if self._control_tables is None:
            self._control_tables = get_int(await self._read((_HAS_TABLES, ())), 0, 0) > 0
        return self._control_tables

    async def controls(self) -> list[ControlRecord]:
        if not await self._has_tables():
            return []
        return _records(await self._read((_CONTROLS, ())))

    async def set_paused(self, worker: str, *, paused: bool, now: float) -> ControlRecord:
        results = await self._write(
            [
                (_SET_PAUSED, [text(worker), int8(int(paused)), float8(now)]),
                (_NOTIFY, ()),
                (_ONE, [text(worker)]),
            ]
        )
        (record,) = _records(results[-1])
        return record

    async def reset_positions(
        self, worker: str, names: Sequence[str], to: int, *, now: float
    ) -> ControlRecord:
        params = [text(worker), texts(sorted(names)), int8(to), float8(now)]
        reset, found = await self._write([(_RESET, params), (_ONE, [text(worker)])])
        if not get_int(reset, 0, 0):
            raise NotPaused(
                f"worker {worker!r} is not paused: pause it before resetting its position",
                worker=worker,
            )
        (record,) = _records(found)
        return record

    async def discard_dead_letters(
        self, letters: Sequence[tuple[str, int]], *, now: float
    ) -> list[DeadLetterRecord]:
        if not letters:
            return []
        params = [texts(w for w, _ in letters), int8s(m for _, m in letters), float8(now)]
        (res,) = await self._write([(_DISCARD, params)])
        columns = (
            *(get_text, get_int, get_text, get_text, get_int, get_float, get_float),
            get_optional_text,
        )
        return [DeadLetterRecord(*row) for row in read_rows(res, columns)]

    async def discarded(self, worker: str | None = None) -> list[tuple[str, int]]:
        if not await self._has_tables():
            return []
        res = await self._read((_DISCARDED, [(TEXT, None if worker is None else worker.encode())]))
        return [(get_text(res, r, 0), get_int(res, r, 1)) for r in range(res.ntuples)]

    async def count_messages(
        self, after: int, upto: int, names: Sequence[str]
    ) -> tuple[int, int | None, int | None]:
        if not names or upto <= after:
            return 0, None, None
        res = await self._read((_COUNT, [int8(after), int8(upto), texts(sorted(names))]))
        count = get_int(res, 0, 0)
        if count == 0:
            return 0, None, None
        return count, get_int(res, 0, 1), get_int(res, 0, 2)
