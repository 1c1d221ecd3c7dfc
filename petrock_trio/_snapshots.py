"""Snapshots: a run's state saved with the position it reflects, and loaded at start.

A worker declared with ``snapshot_every`` (messages) or ``snapshot_interval``
(seconds), and the state projection with ``App(snapshot_every=...)``, save their state
now and then, with the position it reflects (``SnapshotRecord``, encoded by
``_statecodec``). At start a run loads the newest one it can use and replays only what
came after it. A snapshot records the state's shape and the ``state_version`` the code
declares; one whose shape or version differs from the running code's is not used, nor
one that does not decode: the run replays from further back, nothing is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import trio

from ._errors import ConfigurationError
from ._logging import get_logger
from ._statecodec import StateCodec, StatesCodec, detail
from .stores import SnapshotRecord

__all__ = [
    "PROJECTION",
    "SnapshotKeeper",
    "SnapshotOptions",
    "SnapshotPolicy",
    "choose",
    "oldest",
]

PROJECTION: Final = "petrock:projection"
"""The name the state projection's snapshots are stored under."""

_log = get_logger("petrock_trio.snapshots")


@attrs.frozen
class SnapshotPolicy:
    """When a run saves its state (``every`` messages, ``interval`` seconds), and what
    its snapshots must match to be used (``version``, the codec's shape)."""

    codec: StateCodec | StatesCodec
    version: str
    every: int | None = None
    interval: float | None = None

    def record(self, name: str, position: int, state: object, taken_at: float) -> SnapshotRecord:
        """Raises TypeError or ValueError when ``state`` holds what cannot be encoded."""
        data = self.codec.encode(state)
        return SnapshotRecord(name, position, self.version, self.codec.shape, data, taken_at)


@attrs.frozen
class SnapshotOptions:
    """What a declaration asks of snapshots (``snapshot_every``, ``snapshot_interval``,
    ``state_version``), checked."""

    every: int | None = None
    interval: float | None = None
    version: str = "1"

    @classmethod
    def checked(
        cls, every: int | None, interval: float | None, version: str, *, replay: bool = True
    ) -> SnapshotOptions:
        """Raises :class:`ConfigurationError` for values that make no sense (of the
        wrong type too: callers need not be type-checked)."""
        given: tuple[Any, Any, Any] = (every, interval, version)
        if given[0] is not None and (type(given[0]) is not int or given[0] < 1):
            raise ConfigurationError(f"snapshot_every must be a positive integer, not {every!r}")
        if given[1] is not None and not (type(given[1]) in {int, float} and given[1] > 0):
            raise ConfigurationError(
                f"snapshot_interval must be positive seconds, not {interval!r}"
            )
        if type(given[2]) is not str or not version:
            raise ConfigurationError(f"state_version must be a non-empty string, not {version!r}")
        if not replay and (every is not None or interval is not None):
            raise ConfigurationError(
                "a worker with replay=False rebuilds no state, so it has nothing to snapshot"
            )
        return cls(every, interval, version)

    def policy(self, owner: str, state: object) -> SnapshotPolicy | None:
        """The policy, when snapshots are asked for (None otherwise), once ``state`` is
        known to encode: raises :class:`ConfigurationError` naming what does not."""
        if self.every is None and self.interval is None:
            return None
        codec = StateCodec.checked(state, owner=owner)
        return SnapshotPolicy(codec, self.version, self.every, self.interval)


def oldest(snapshots: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Of the partitions' snapshots as inspect shows them, the one a restart would
    replay the most after: one not taken yet, else the lowest."""
    shown = [s for s in snapshots if s is not None]
    if not shown:
        return None
    return min(shown, key=lambda s: -1 if s["position"] is None else s["position"])


def choose(
    records: Sequence[SnapshotRecord],
    policy: SnapshotPolicy,
    *,
    limit: int,
    worker_name: str,
) -> tuple[SnapshotRecord, Any] | None:
    """The newest of ``records`` (newest first) that this code can use, with its state,
    or None: replay from the start. Each one passed over is logged with why."""
    for record in records:
        reason = None
        if record.position > limit:
            reason = f"it is at message {record.position}, after the saved position {limit}"
        elif record.state_version != policy.version:
            reason = f"state_version {record.state_version!r} is not the code's {policy.version!r}"
        elif record.shape != policy.codec.shape:
            reason = f"the state's shape changed: {record.shape!r} then, {policy.codec.shape!r} now"
        if reason is None:
            try:
                return record, policy.codec.decode(record.state)
            except Exception as exc:  # noqa: BLE001 - whatever fails, this one is not used
                # Nothing is lost: the log holds everything the snapshot was made from.
                _log.warning(
                    "petrock.snapshot_ignored",
                    worker_name=worker_name,
                    snapshot=record.name,
                    position=record.position,
                    reason=f"it does not decode: {detail(exc)}",
                )
                continue
        _log.info(
            "petrock.snapshot_ignored",
            worker_name=worker_name,
            snapshot=record.name,
            position=record.position,
            reason=reason,
        )
    return None


class SnapshotKeeper:
    """One run's snapshots: the latest it knows of, and whether another is due."""

    def __init__(self, policy: SnapshotPolicy, name: str, worker_name: str) -> None:
        self.policy = policy
        self.name = name
        self.worker_name = worker_name
        self.position = 0
        self.taken_at: float | None = None
        self.loaded_from: int | None = None
        # Trio time of the last snapshot (or of the start), for ``interval``.
        self.since = trio.current_time()
        # The position a snapshot was last tried at, taken or not: a state that fails to
        # encode is not encoded again for every message.
        self.tried = 0
        # Set by an operator's request: the next commit point takes one, whatever is due.
        self.requested = False

    def loaded(self, record: SnapshotRecord) -> None:
        self.position = self.tried = self.loaded_from = record.position
        self.taken_at = record.taken_at
        _log.info(
            "petrock.snapshot_loaded",
            worker_name=self.worker_name,
            snapshot=record.name,
            position=record.position,
            taken_at=datetime.fromtimestamp(record.taken_at, UTC).isoformat(),
        )

    def due(self, position: int) -> bool:
        """Whether a commit at ``position`` should carry a snapshot."""
        if self.requested:
            return True
        if position <= self.tried:
            return False
        every, interval = self.policy.every, self.policy.interval
        if every is not None and position - self.tried >= every:
            return True
        return interval is not None and trio.current_time() - self.since >= interval

    def next_due(self) -> float:
        """Trio time the interval comes round (``inf`` without one)."""
        interval = self.policy.interval
        return float("inf") if interval is None else self.since + interval

    def record(self, state: object, position: int, taken_at: float) -> SnapshotRecord | None:
        """A snapshot of ``state`` at ``position``, or None (logged) when it does not
        encode: the commit goes on without it."""
        self.tried = position
        self.since = trio.current_time()
        try:
            return self.policy.record(self.name, position, state, taken_at)
        except Exception as exc:  # noqa: BLE001 - a state that does not encode is not saved
            self.requested = False
            _log.warning(
                "petrock.snapshot_failed",
                worker_name=self.worker_name,
                snapshot=self.name,
                position=position,
                error_details=detail(exc),
                exc_info=exc,
            )
            return None

    def forget(self) -> None:
        """The stored snapshots are being deleted: none is known until the next."""
        self.position = 0
        self.taken_at = None
        self.requested = True

    def committed(self, record: SnapshotRecord) -> None:
        self.position = record.position
        self.taken_at = record.taken_at
        self.requested = False
        _log.debug(
            "petrock.snapshot_taken",
            worker_name=self.worker_name,
            snapshot=record.name,
            position=record.position,
            size=len(record.state),
        )

    def describe(self, now: float) -> dict[str, Any]:
        """What inspect shows: the latest snapshot's position and age (None before one)."""
        taken_at = self.taken_at
        return {
            "name": self.name,
            "every": self.policy.every,
            "interval": self.policy.interval,
            "state_version": self.policy.version,
            "position": self.position if taken_at is not None else None,
            "taken_at": None
            if taken_at is None
            else datetime.fromtimestamp(taken_at, UTC).isoformat(),
            "age_seconds": None if taken_at is None else max(0.0, now - taken_at),
            "loaded_from": self.loaded_from,
        }
