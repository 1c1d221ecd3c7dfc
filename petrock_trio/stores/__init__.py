"""Stores: the only code that touches a database."""

from __future__ import annotations

from .._errors import ConfigurationError
from ._base import Commit, DeadLetterRecord, Store, StoreStatistics
from ._sqlite import SQLiteStore

__all__ = ["Commit", "DeadLetterRecord", "SQLiteStore", "Store", "StoreStatistics", "open_store"]


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """The store for a database URL: a SQLite path, ``":memory:"``, or ``postgresql://…``."""
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("PostgreSQL support is not available in this build")
    if url.startswith("sqlite:///"):
        url = url.removeprefix("sqlite:///")
    if not url:
        raise ConfigurationError("empty database path")
    return SQLiteStore(url, synchronous=synchronous)
