"""The contract every store keeps, and the records that cross it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import attrs

from .._message import Row

__all__ = ["Commit", "DeadLetterRecord", "Store", "StoreStatistics"]


@attrs.frozen
class DeadLetterRecord:
    """A message a worker gave up on, as stored."""

    worker: str
    message_id: int
    command_name: str
    error: str
    attempts: int
    first_failed_at: float
    last_failed_at: float


@attrs.frozen
class Commit:
    """What one transaction writes: new messages, worker positions, dead letters.

    Everything in a commit lands together or not at all, which is what makes a
    handler's emitted commands and its new position exactly-once inside the log.
    Positions only move forward: a lower position than the stored one is ignored.
    """

    appends: Sequence[tuple[str, bytes]] = ()
    positions: Mapping[str, int] = attrs.field(factory=dict)
    dead_letters: Sequence[DeadLetterRecord] = ()
    # (worker, message_id) of dead letters that a re-drive has now handled.
    resolved: Sequence[tuple[str, int]] = ()
    timestamp: float = 0.0


@attrs.frozen
class StoreStatistics:
    reads: int
    rows_read: int
    transactions: int
    rows_appended: int


class Store(Protocol):
    """The only code that touches a database.

    ``commit_many`` writes several commits in one transaction (group commit) and returns
    the rows appended by each; a failure leaves none of them written.
    """

    url: str

    async def open(self) -> int:
        """Create the schema if needed; return the current head."""
        ...

    async def aclose(self) -> None: ...

    async def commit_many(self, commits: Sequence[Commit]) -> list[list[Row]]: ...

    async def read_after(
        self,
        after: int,
        limit: int,
        *,
        upto: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Row]:
        """Rows with ``after < id (<= upto)``, optionally only those named, in id order."""
        ...

    async def head(self) -> int: ...

    async def watch(self, publish: Callable[[int], None]) -> None:
        """Call ``publish(head)`` whenever another process appends; never returns.

        Appends made through this store object are published by the log itself; this
        covers writers elsewhere (other processes on the same database).
        """
        ...

    async def positions(self) -> dict[str, int]: ...

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]: ...

    def statistics(self) -> StoreStatistics: ...
