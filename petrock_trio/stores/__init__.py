"""Stores: the only code that touches a database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from ._base import (
    Commit,
    ControlRecord,
    DeadLetterRecord,
    LeaseRecord,
    RetryRecord,
    SnapshotRecord,
    Store,
    StoreStatistics,
    reads_as_written,
)
from ._sqlite import SQLiteStore
from ._sqlitereadonly import ReadOnlySQLiteStore

if TYPE_CHECKING:
    from ._pgreadonly import ReadOnlyPostgresStore
    from ._postgres import PostgresStore

__all__ = [
    "Commit",
    "ControlRecord",
    "DeadLetterRecord",
    "LeaseRecord",
    "PostgresStore",
    "ReadOnlyPostgresStore",
    "ReadOnlySQLiteStore",
    "RetryRecord",
    "SQLiteStore",
    "SnapshotRecord",
    "Store",
    "StoreStatistics",
    "open_store",
    "reads_as_written",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, synchronous: str = "FULL", read_only: bool = False) -> Store:
    """The store for a database URL: a SQLite path, ``":memory:"``, or ``postgresql://…``.

    ``synchronous`` is SQLite's setting; PostgreSQL takes its own from the server
    (``synchronous_commit``). ``read_only`` opens an existing log to read it and
    changes nothing (a SQLite file or a ``postgresql://`` URL; see
    :class:`ReadOnlySQLiteStore`): ``open`` raises :class:`ForeignDatabase` for a
    database without the log's tables, and every write raises :class:`StoreError`.
    """
    if url.startswith(_POSTGRES_SCHEMES):
        if read_only:
            return _postgres_store_class(read_only=True)(url)
        return _postgres_store_class()(url)
    if url.startswith("sqlite:///"):
        url = url.removeprefix("sqlite:///")
    if not url:
        raise ConfigurationError("empty database path")
    if read_only:
        return ReadOnlySQLiteStore(url)
    return SQLiteStore(url, synchronous=synchronous)


def _postgres_store_class(*, read_only: bool = False) -> type[PostgresStore]:
    # Imported on first use: importing petrock_trio must not import psycopg.
    try:
        from ._postgres import PostgresStore  # noqa: PLC0415

        if read_only:
            from ._pgreadonly import ReadOnlyPostgresStore  # noqa: PLC0415

            return ReadOnlyPostgresStore
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "psycopg":
            raise
        raise ConfigurationError(
            "a postgresql:// database needs psycopg: pip install 'petrock-trio[postgres]'"
        ) from exc
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_store_class()
    if name == "ReadOnlyPostgresStore":
        return _postgres_store_class(read_only=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
