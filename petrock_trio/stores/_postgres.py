"""The PostgreSQL store: several processes, on several machines, share one log.

Its parts: a libpq connection driven by Trio, one pipeline (one round trip, one
transaction) per operation (``_pgconn``); the schema and every statement
(``_pgsql``); parameters and results in PostgreSQL's binary format
(``_pgbinary``); a group commit folded into one statement per table
(``_pgbatch``).

Order: followers read ``id > position``, so ids must become visible in id order.
Every append transaction first takes one advisory transaction lock, then draws its
ids from the sequence; appends are therefore serialised, and a row can never
commit after a row with a higher id. (A rolled-back append leaves a gap in the ids,
as sequences do; followers do not mind gaps.)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Final

# psycopg first: without it this module must fail to import with psycopg's name, so
# that open_store can say which extra to install.
import psycopg
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._errors import ConfigurationError, StoreError
from .._logging import get_logger
from .._message import Row
from . import _pgcontrols as controls
from . import _pgsql as sql
from ._base import (
    Commit,
    DeadLetterRecord,
    LeaseRecord,
    RetryRecord,
    SnapshotRecord,
    StoreStatistics,
)
from ._pgbatch import Batch
from ._pgbinary import (
    ARRAY_OF,
    INT8_MAX,
    TEXT,
    Param,
    Statement,
    float8,
    get_bytes,
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
from ._pgconn import Connection

__all__ = ["PostgresStore"]

# The schema under its old name: the benchmarks build their tables from it.
_SCHEMA: Final = sql.SCHEMA

_log = get_logger("petrock_trio")


class PostgresStore(controls.Controlled):
    """Messages, worker positions and dead letters in a PostgreSQL database.

    Three connections: one for writes (group commits), one for reads, and one that
    ``watch`` keeps listening. A connection lost or abandoned is reopened on next use.

    ``serialize_appends=False`` drops the append lock; it exists only so that a test
    can show what the lock prevents (followers skipping rows that commit late).
    """

    #: Advisory lock keys: one serialises appends, one guards schema creation.
    APPEND_LOCK: Final = 0x7065_7472_6F63_6B01
    SCHEMA_LOCK: Final = 0x7065_7472_6F63_6B02

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = 5.0,
        abort_grace: float = 5.0,
        serialize_appends: bool = True,
    ) -> None:
        self._conninfo = _conninfo(url)
        self.url = _redact(url)
        self.poll_interval = poll_interval
        self.abort_grace = abort_grace
        self.serialize_appends = serialize_appends
        self._open = False
        self._writer: Connection | None = None
        self._reader: Connection | None = None
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()
        self._reads = 0
        self._rows_read = 0
        self._transactions = 0
        self._rows_appended = 0
        # Whether dead_letters has its traceback column: known once opened to write
        # (open adds it), looked up on first use by a read-only opening.
        self._traceback_column: bool | None = None
        # Whether the snapshots table exists: as for the traceback column.
        self._snapshots_table: bool | None = None
        # Whether messages has its metadata column: as for the traceback column.
        self._metadata_column: bool | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url!r} open={self._open}>"

    async def _connect(self) -> Connection:
        return await Connection.connect(self._conninfo, abort_grace=self.abort_grace)

    async def _write(
        self, statements: Sequence[Statement], *, prepare: bool = True
    ) -> list[pq.abc.PGresult]:
        async with self._write_lock:
            if not self._open:
                raise StoreError("store is closed")
            if self._writer is None or self._writer.closed:
                self._writer = await self._connect()
            return await self._writer.run(statements, prepare=prepare)

    async def _read(self, statement: Statement) -> pq.abc.PGresult:
        async with self._read_lock:
            if not self._open:
                raise StoreError("store is closed")
            if self._reader is None or self._reader.closed:
                self._reader = await self._connect()
            (res,) = await self._reader.run([statement])
            return res

    async def open(self) -> int:
        self._open = True
        try:
            await self._write(
                [
                    (sql.LOCK, [int8(self.SCHEMA_LOCK)]),
                    *((s, ()) for s in (*sql.SCHEMA, *controls.SCHEMA)),
                ],
                prepare=False,
            )
            self._traceback_column = True
            self._snapshots_table = True
            self._metadata_column = True
        except BaseException:
            await self.aclose()
            raise
        return await self.head()

    async def aclose(self) -> None:
        self._open = False
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None

    async def commit_many(self, commits: Sequence[Commit]) -> list[list[Row]]:
        try:
            batch = Batch(commits)
            statements, at_insert = batch.statements(
                lock_key=self.APPEND_LOCK if self.serialize_appends else None
            )
        except (TypeError, AttributeError, ValueError, struct.error) as exc:
            raise StoreError(f"cannot encode a commit for PostgreSQL: {exc}") from exc
        ids: list[int] = []
        if not batch.empty:
            results = await self._write(statements)
            if at_insert >= 0:
                inserted = results[at_insert]
                ids = sorted(get_int(inserted, r, 0) for r in range(inserted.ntuples))
        out: list[list[Row]] = []
        at = 0
        for commit in commits:
            rows = commit.rows(ids[at : at + len(commit.appends)])
            at += len(rows)
            out.append(rows)
        self._transactions += 1
        self._rows_appended += len(ids)
        return out

    async def read_after(
        self,
        after: int,
        limit: int,
        *,
        upto: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Row]:
        if self._metadata_column is None:
            found = await self._read((sql.HAS_METADATA, ()))
            self._metadata_column = get_int(found, 0, 0) > 0
        res = await self._read(
            (
                sql.READ_AFTER if self._metadata_column else sql.READ_AFTER_WITHOUT_METADATA,
                [
                    int8(after),
                    int8(INT8_MAX if upto is None else upto),
                    (ARRAY_OF[TEXT], None) if names is None else texts(names),
                    int8(limit),
                ],
            )
        )
        rows = [
            Row(
                get_int(res, r, 0),
                get_float(res, r, 1),
                get_text(res, r, 2),
                get_bytes(res, r, 3),
                get_optional_text(res, r, 4),
            )
            for r in range(res.ntuples)
        ]
        self._reads += 1
        self._rows_read += len(rows)
        return rows

    async def head(self) -> int:
        return get_int(await self._read((sql.HEAD, ())), 0, 0)

    async def watch(self, publish: Callable[[int], None]) -> None:
        """Publish the head on every NOTIFY from an append; poll it every ``poll_interval``.

        Never returns unless cancelled. The poll covers notifications that never
        arrive (a listening connection lost and reopened).

        Error handling: a failed listening connection is logged and reopened after
        ``poll_interval`` seconds; the other store calls report the failure itself.
        """
        while True:
            conn: Connection | None = None
            try:
                conn = await self._connect()
                (res,) = await conn.run([(sql.CHANNEL, ())], prepare=False)
                await conn.run([(b"LISTEN " + get_bytes(res, 0, 0), ())], prepare=False)
                while True:
                    # Also catches up with appends made before LISTEN took effect.
                    (res,) = await conn.run([(sql.HEAD, ())])
                    publish(get_int(res, 0, 0))
                    with trio.move_on_after(self.poll_interval):
                        while True:
                            heads = [_head_of(n.extra) for n in await conn.notifications()]
                            if None in heads:
                                break  # not an append's notification: poll at once
                            publish(max(h for h in heads if h is not None))
            except StoreError as exc:
                _log.warning("petrock.postgres_watch_failed", error=str(exc))
            finally:
                if conn is not None:
                    conn.close()
            await trio.sleep(self.poll_interval)

    async def retries(self) -> list[RetryRecord]:
        res = await self._read((sql.RETRIES, ()))
        columns = (get_text, get_int, get_int, get_float, get_float)
        return [RetryRecord(*row) for row in read_rows(res, columns)]

    async def leases(
        self,
        holder: str,
        held: Mapping[str, int],
        wanted: Sequence[str],
        *,
        ttl: float,
        now: float,  # noqa: ARG002 - the server's clock decides, whatever the machines say
    ) -> dict[str, int]:
        """One transaction on the writer connection, whose backend stands for this
        process: when the process dies, the server ends that backend and other
        processes may take its leases at once instead of waiting for expiry."""
        if not held and not wanted:
            return {}
        kept = sorted(held)
        taking = sorted(set(wanted))
        results = await self._write(
            [
                (sql.ADD_LEASES, [texts(taking)]),
                (sql.LOCK_LEASES, [texts(sorted({*kept, *taking}))]),
                (
                    sql.RENEW_LEASES,
                    [texts(kept), int8s(held[w] for w in kept), float8(ttl), text(holder)],
                ),
                (sql.TAKE_LEASES, [texts(taking), text(holder), float8(ttl)]),
                (sql.HELD_LEASES, [text(holder), texts(sorted({*kept, *taking}))]),
            ]
        )
        res = results[-1]
        return {get_text(res, r, 0): get_int(res, r, 1) for r in range(res.ntuples)}

    async def release_leases(self, held: Mapping[str, int]) -> None:
        names = sorted(held)
        await self._write(
            [
                (sql.LOCK_LEASES, [texts(names)]),
                (sql.RELEASE_LEASES, [texts(names), int8s(held[w] for w in names)]),
            ]
        )

    async def lease_records(self) -> list[LeaseRecord]:
        res = await self._read((sql.LEASE_RECORDS, ()))
        columns = (get_text, get_text, get_int, get_float)
        return [LeaseRecord(*row) for row in read_rows(res, columns)]

    async def positions(self) -> dict[str, int]:
        res = await self._read((sql.POSITIONS, ()))
        return {get_text(res, r, 0): get_int(res, r, 1) for r in range(res.ntuples)}

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]:
        param: Param = (TEXT, None if worker is None else worker.encode())
        if self._traceback_column is None:
            found = await self._read((sql.HAS_TRACEBACK, ()))
            self._traceback_column = get_int(found, 0, 0) > 0
        query = sql.DEAD_LETTERS if self._traceback_column else sql.DEAD_LETTERS_WITHOUT_TRACEBACK
        res = await self._read((query, [param]))
        columns = (
            *(get_text, get_int, get_text, get_text, get_int, get_float, get_float),
            get_optional_text,  # traceback: NULL in letters written before it was kept
        )
        return [DeadLetterRecord(*row) for row in read_rows(res, columns)]

    async def snapshots(self, name: str | None = None) -> list[SnapshotRecord]:
        if self._snapshots_table is None:
            found = await self._read((sql.HAS_SNAPSHOTS, ()))
            self._snapshots_table = get_int(found, 0, 0) > 0
        if not self._snapshots_table:
            return []
        res = await self._read((sql.SNAPSHOTS, [(TEXT, None if name is None else name.encode())]))
        columns = (get_text, get_int, get_text, get_text, get_bytes, get_float)
        return [SnapshotRecord(*row) for row in read_rows(res, columns)]

    def gone(self) -> str | None:
        # Nothing file-based to lose: a lost connection raises StoreError on the call.
        return None

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            reads=self._reads,
            rows_read=self._rows_read,
            transactions=self._transactions,
            rows_appended=self._rows_appended,
        )


def _head_of(payload: bytes) -> int | None:
    try:
        return int(payload)
    except ValueError:
        return None


def _conninfo(url: str) -> str:
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL: {exc}") from exc
    # Text travels in binary format, which the server reads in the client encoding.
    extra: dict[str, str] = {"client_encoding": "UTF8"}
    if "application_name" not in params:
        extra["application_name"] = "petrock_trio"
    return make_conninfo(url, **extra)


def _redact(url: str) -> str:
    """The URL without its password, for reprs and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not (sep and at) or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
