"""The contract every store keeps, and the records that cross it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Protocol

import attrs

from .._message import Row

__all__ = [
    "LOG_TABLES",
    "SNAPSHOTS_KEPT",
    "Commit",
    "ControlRecord",
    "DeadLetterRecord",
    "LeaseRecord",
    "RetryRecord",
    "SnapshotRecord",
    "Store",
    "StoreStatistics",
    "reads_as_written",
]

# What makes a database a petrock_trio log: a read-only opening refuses one without them.
LOG_TABLES: Final = ("messages", "positions", "dead_letters", "retries", "leases")


@attrs.frozen
class DeadLetterRecord:
    """A message a worker gave up on, as stored.

    ``traceback`` is the last failure's, formatted; ``None`` for a dead letter written
    before the stores kept tracebacks, or by code that gives none.
    """

    worker: str
    message_id: int
    command_name: str
    error: str
    attempts: int
    first_failed_at: float
    last_failed_at: float
    traceback: str | None = None


@attrs.frozen
class RetryRecord:
    """A worker waiting to retry a message, kept with its position so backoff survives
    a restart or a takeover by another process."""

    worker: str
    message_id: int
    attempts: int  # attempts made so far
    next_attempt_at: float  # wall-clock time of the next attempt
    first_failed_at: float


@attrs.frozen
class SnapshotRecord:
    """A run's state as it was after message ``position``, encoded.

    ``name`` is what it belongs to: a worker's stored name (``worker#i/N`` for a
    partition) or the state projection's. ``shape`` (the state's field names and
    types) and ``state_version`` (declared by the worker) say which code wrote it: a
    run whose own differ does not use it. ``taken_at`` is wall-clock time.
    """

    name: str
    position: int
    state_version: str
    shape: str
    state: bytes
    taken_at: float


# Snapshots kept per name: the latest, and one before it in case the latest does not
# decode. Older ones are deleted in the transaction that writes a newer one.
SNAPSHOTS_KEPT: Final = 2


@attrs.frozen
class LeaseRecord:
    """Which process runs a worker: ``epoch`` grows by one at every takeover."""

    worker: str
    holder: str
    epoch: int
    expires_at: float


@attrs.frozen
class ControlRecord:
    """What the operators asked of one worker, for every process that serves the log.

    ``paused``: the worker handles nothing until resumed. ``generation`` counts the
    resets of its position, the last of them to ``reset_to``. ``updated_at`` is the
    wall-clock time of the last change.
    """

    worker: str
    paused: bool
    generation: int = 0
    reset_to: int | None = None
    updated_at: float = 0.0


@attrs.frozen
class Commit:
    """What one transaction writes: new messages, worker positions, dead letters.

    Everything in a commit lands together or not at all, which is what makes a
    handler's emitted commands and its new position exactly-once inside the log.
    Positions only move forward: a lower position than the stored one is ignored, and
    a position clears its worker's retry record for messages up to it. ``leases``
    (worker -> epoch) fences the commit: if another process has taken any of those
    workers over since, nothing is written and :class:`LeaseLost` is raised.
    """

    appends: Sequence[tuple[str, bytes]] = ()
    positions: Mapping[str, int] = attrs.field(factory=dict)
    dead_letters: Sequence[DeadLetterRecord] = ()
    # (worker, message_id) of dead letters that a re-drive has now handled.
    resolved: Sequence[tuple[str, int]] = ()
    retries: Sequence[RetryRecord] = ()
    leases: Mapping[str, int] = attrs.field(factory=dict)
    timestamp: float = 0.0
    # Each append's metadata column, in order (a JSON object's text or None), or empty
    # when none has any: what tracing adds costs nothing without it.
    metadata: Sequence[str | None] = ()
    snapshots: Sequence[SnapshotRecord] = ()
    forget_snapshots: Sequence[str] = ()

    def __attrs_post_init__(self) -> None:
        if self.metadata and len(self.metadata) != len(self.appends):
            raise ValueError(
                f"a commit of {len(self.appends)} appends has metadata for {len(self.metadata)}"
            )

    def rows(self, ids: Iterable[int]) -> list[Row]:
        """The rows this commit appends, given their ids in order."""
        metadata = self.metadata or itertools.repeat(None, len(self.appends))
        return [
            Row(id_, self.timestamp, name, payload, meta)
            for id_, (name, payload), meta in zip(ids, self.appends, metadata, strict=True)
        ]


@attrs.frozen
class StoreStatistics:
    reads: int
    rows_read: int
    transactions: int
    rows_appended: int


class Store(Protocol):
    """The only code that touches a database.

    ``commit_many`` writes several commits in one transaction (group commit) and returns
    the rows appended by each; a failure leaves none of them written. Those rows are
    what a read returns (the log hands them to its pump instead of reading them
    back), unless the store says otherwise with ``reads_as_written`` (optional; see
    :func:`reads_as_written`).
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

    async def retries(self) -> list[RetryRecord]: ...

    async def leases(
        self, holder: str, held: Mapping[str, int], wanted: Sequence[str], *, ttl: float, now: float
    ) -> dict[str, int]:
        """Renew ``held`` (worker -> epoch) and take those of ``wanted`` that are free.

        One transaction. A lease is free when it expired, was released, or (where the
        store can tell) its holder's connection is gone. Taking one raises its epoch.
        Returns every lease ``holder`` now has: worker -> epoch. Expiry is ``ttl``
        seconds from now on the database's clock, or on ``now`` (the caller's wall
        clock) for a store without a clock of its own.
        """
        ...

    async def release_leases(self, held: Mapping[str, int]) -> None:
        """Give up leases at once (graceful shutdown), so others need not wait for expiry."""
        ...

    async def lease_records(self) -> list[LeaseRecord]: ...

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]: ...

    async def snapshots(self, name: str | None = None) -> list[SnapshotRecord]:
        """The stored snapshots (of ``name`` only, if given), by name, newest first.

        A database older than snapshots (opened read-only, so not given the table) has
        none."""
        ...

    async def controls(self) -> list[ControlRecord]:
        """Every worker's controls (pause, resets), by worker; none from a read-only
        opening of a log older than them."""
        ...

    async def set_paused(self, worker: str, *, paused: bool, now: float) -> ControlRecord:
        """Pause or resume ``worker`` for every process; the record as it now stands."""
        ...

    async def reset_positions(
        self, worker: str, names: Sequence[str], to: int, *, now: float
    ) -> ControlRecord:
        """Set ``worker``'s position to ``to``, in one transaction, while it is paused.

        Raises :class:`NotPaused` (nothing written) unless its controls say paused.
        Every stored position of the worker (under any partitioning) is replaced by
        ``to`` under each of ``names``; its retry state and the snapshots after ``to``
        are dropped, and its dead letters (discarded ones too) after ``to``, since
        those messages are handled live again. The leases of its names move to a new
        epoch and are freed, so a process still running it is fenced off and starts
        again from the store. Raises the generation; ``reset_to`` becomes ``to``.
        """
        ...

    async def discard_dead_letters(
        self, letters: Sequence[tuple[str, int]], *, now: float
    ) -> list[DeadLetterRecord]:
        """Remove these (worker, message id) dead letters without handling them; the
        ones that were there. Each is remembered as discarded: its message stays done
        for that worker, and replay skips it as it skips a dead letter."""
        ...

    async def discarded(self, worker: str | None = None) -> list[tuple[str, int]]:
        """(worker, message id) of the discarded dead letters (of ``worker`` only)."""
        ...

    async def count_messages(
        self, after: int, upto: int, names: Sequence[str]
    ) -> tuple[int, int | None, int | None]:
        """(count, first id, last id) of the messages named ``names`` with
        ``after < id <= upto``."""
        ...

    def gone(self) -> str | None:
        """Why the database is gone for good (its file deleted or replaced), once the
        store has noticed; None while it is there. Writes then raise ``StoreGone``."""
        ...

    def statistics(self) -> StoreStatistics: ...


def reads_as_written(store: Store) -> bool:
    """Whether ``store``'s reads return the rows its commits return: an optional
    ``reads_as_written`` attribute of the store, true without one. (The testing kit's
    ``FaultyStore`` says false while it fails or changes reads.)"""
    return bool(getattr(store, "reads_as_written", True))
