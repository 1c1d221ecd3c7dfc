"""Open a log outside a running app (tools, tests, migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from ._clock import SystemClock, WallClock
from ._commands import CommandRegistry
from ._log import MessageLog
from .stores import open_store

__all__ = ["open_log"]


@asynccontextmanager
async def open_log(
    database: str,
    *,
    commands: Iterable[type[Any]] = (),
    clock: WallClock = SystemClock,
    synchronous: str = "FULL",
    read_only: bool = False,
) -> AsyncIterator[MessageLog]:
    """A :class:`MessageLog` on ``database`` with no app serving it.

    Appends made here are picked up by apps serving the same database when they next
    start (or, on PostgreSQL, at once). ``read_only`` reads an existing log and
    changes nothing, whoever else has it open: no schema is created (a database
    without the log's tables raises :class:`ForeignDatabase`), no SQLite journal
    mode is set, and appends raise :class:`StoreError`.
    """
    registry = CommandRegistry()
    for cls in commands:
        registry.register(cls)
    log = MessageLog(
        open_store(database, synchronous=synchronous, read_only=read_only), registry, clock
    )
    await log.open()
    try:
        yield log
    finally:
        await log.store.aclose()
