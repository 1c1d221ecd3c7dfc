"""A SQLite log opened only to read it: tools and the command line's reading commands.

The writer's way of opening (``SQLiteStore``) switches the file to WAL and creates
the schema, which turns any SQLite file into a petrock_trio log. This one changes
nothing: the file is opened with ``mode=ro`` and ``PRAGMA query_only``, no journal
mode is set, no table is created, and a file without the log's tables is refused
with :class:`ForeignDatabase`.

A WAL file is read through its ``-wal`` and ``-shm`` companions, which SQLite creates
for a reader when they are missing (that is how a reader and a live writer share
the file). So the tables are first looked for in an ``immutable`` opening, which
creates nothing and would be unsafe only against a writer: one that exists keeps
both companions open, and then that look is skipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from .._errors import ConfigurationError, ForeignDatabase, StoreError
from ._base import LOG_TABLES
from ._sqlite import SQLiteStore
from ._sqlitesql import message_columns

__all__ = ["ReadOnlySQLiteStore"]

T = TypeVar("T")

_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


class ReadOnlySQLiteStore(SQLiteStore):
    """The reading half of :class:`SQLiteStore` on a file it never writes.

    Every write (commits, leases) raises :class:`StoreError`; reads and ``watch``
    work as in the writer's store, alongside a live app.
    """

    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        if path == ":memory:" or path.startswith("file:"):
            raise ConfigurationError(
                f"a read-only opening takes a database file's path, not {path!r}: a database "
                "in memory belongs to the connection that made it"
            )
        super().__init__(path, busy_timeout=busy_timeout)

    def __repr__(self) -> str:
        return f"<ReadOnlySQLiteStore {self.path!r} open={self._reader is not None}>"

    def _uri(self, mode: str) -> str:
        # as_uri escapes what a URI would read as its query (?, #, %).
        return f"{Path(self.path).resolve().as_uri()}?{mode}"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._uri("mode=ro"),
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout,
                uri=True,
            )
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    def _check(self) -> None:
        """Raise :class:`ForeignDatabase` unless the file holds the log's tables,
        creating nothing on the way (not even a WAL file's companions)."""
        companions = (Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
        if all(p.exists() for p in companions):
            return  # a writer (or a reader) has the file open: the main check is enough
        try:
            conn = sqlite3.connect(self._uri("immutable=1"), uri=True)
        except sqlite3.Error:
            return  # the main check reports what is wrong with the file
        try:
            found = {name for (name,) in conn.execute(_TABLES)}
        except sqlite3.Error:
            return
        finally:
            conn.close()
        _refuse_unless_log(self.path, found)

    async def open(self) -> int:
        def setup() -> sqlite3.Connection:
            if not Path(self.path).is_file():
                # mode=ro never creates one; say so before SQLite's vaguer error does.
                raise StoreError(f"cannot open SQLite database {self.path!r}: not a file")
            self._check()
            conn = self._connect()
            try:
                found = {name for (name,) in conn.execute(_TABLES)}
                _refuse_unless_log(self.path, found)
                self._message_columns = message_columns(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise StoreError(f"cannot read SQLite database {self.path!r}: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            return conn

        self._reader = await trio.to_thread.run_sync(setup)
        return await self.head()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:  # noqa: ARG002
        await trio.lowlevel.checkpoint()
        raise StoreError(f"{self.path!r} is opened read-only: nothing is written")


def _refuse_unless_log(path: str, found: set[str]) -> None:
    missing = tuple(t for t in LOG_TABLES if t not in found)
    if missing:
        raise ForeignDatabase(path, missing)
