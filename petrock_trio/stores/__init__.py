"""Stores: the only code that touches a database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from ._base import Commit, DeadLetterRecord, LeaseRecord, RetryRecord, Store, StoreStatistics
from ._sqlite import SQLiteStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore

__all__ = [
    "Commit",
    "DeadLetterRecord",
    "LeaseRecord",
    "PostgresStore",
    "RetryRecord",
    "SQLiteStore",
    "Store",
    "StoreStatistics",
    "open_store",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """The store for a database URL: a SQLite path, ``":memory:"``, or ``postgresql://…``.

    ``synchronous`` is SQLite's setting; PostgreSQL takes its own from the server
    (``synchronous_commit``).
    """
    if url.startswith(_POSTGRES_SCHEMES):
        return _postgres_store_class()(url)
    if url.startswith("sqlite:///"):
        url = url.removeprefix("sqlite:///")
    if not url:
        raise ConfigurationError("empty database path")
    return SQLiteStore(url, synchronous=synchronous)


def _postgres_store_class() -> type[PostgresStore]:
    # Imported on first use: importing petrock_trio must not import psycopg.
    try:
        from ._postgres import PostgresStore  # noqa: PLC0415
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
