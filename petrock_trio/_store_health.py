"""Store health: what the store's calls came to, on Trio's clock, judged when asked.

The log wraps its store in a :class:`MonitoredStore`, so every write (group commits,
position flushes, lease rounds) and every read (the pump's pages, catch-up, the API)
is recorded in one :class:`StoreHealth`, whoever makes it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ._errors import LeaseLost, StoreError, StoreGone
from ._health import Health, HealthReport
from ._message import Row
from .stores import (
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

__all__ = ["MonitoredStore", "StoreHealth"]

T = TypeVar("T")


@attrs.define
class _Streak:
    """The failures of one kind of call (writes or reads) since its last success."""

    first: float | None = None  # when the first failure since the last success came
    last: float = 0.0
    what: str = ""
    error: str | None = None
    failures: int = 0  # all failures, ever

    def failed(self, now: float, what: str, exc: BaseException) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.what = what
        self.error = str(exc)
        self.failures += 1

    def succeeded(self) -> None:
        self.first = None
        self.error = None

    def judge(self, kind: str, unhealthy_after: float) -> tuple[Health, str] | None:
        if self.first is None:
            return None
        span = self.last - self.first
        if span > unhealthy_after:
            return Health.UNHEALTHY, f"{kind} failing for {span:.1f} s: {self.error}"
        return Health.DEGRADED, f"{self.what} failed: {self.error}"


class _Waits:
    """Calls of one kind under way, each with the time it began."""

    def __init__(self) -> None:
        self._began: dict[int, float] = {}
        self._tokens = itertools.count()

    @contextlib.contextmanager
    def under_way(self) -> Iterator[None]:
        token = next(self._tokens)
        self._began[token] = trio.current_time()
        try:
            yield
        finally:
            del self._began[token]

    def longest(self) -> float | None:
        """How long the oldest call under way has waited so far, or None."""
        if not self._began:
            return None
        return trio.current_time() - min(self._began.values())


class StoreHealth:
    """Failed writes and reads, writes under way, and a database gone for good.

    A failure turns the store degraded until the next success of its kind; failures
    that go on for more than ``unhealthy_after`` seconds (from the first to the latest,
    with no success between) turn it unhealthy. A write under way for more than
    ``degraded_after`` seconds (waiting for the database lock) turns it degraded while
    it waits, unhealthy past ``unhealthy_after``; so does a read (a server that stopped
    answering: the pump's read may be the only call under way, and it fails only when
    the connection does, which may be never). A database file deleted or replaced
    turns it unhealthy for good. ``gone`` asks the store whether it noticed that by
    itself (without a write).
    """

    def __init__(self, gone: Callable[[], str | None] = lambda: None) -> None:
        self._store_gone = gone
        self._gone: str | None = None
        self.writes = _Streak()
        self.reads = _Streak()
        self._writing = _Waits()
        self._reading = _Waits()

    def __repr__(self) -> str:
        return f"<StoreHealth gone={self.gone()!r} writes_failing={self.writes.error is not None}>"

    def gone(self) -> str | None:
        """Why the database is gone for good, or None."""
        return self._gone or self._store_gone()

    async def write(self, what: str, call: Awaitable[T]) -> T:
        try:
            with self._writing.under_way():
                result = await call
        except LeaseLost:
            self.writes.succeeded()  # a refusal from a database that answers
            raise
        except StoreGone as exc:
            self._gone = self._gone or exc.reason
            raise
        except StoreError as exc:
            self.writes.failed(trio.current_time(), what, exc)
            raise
        self.writes.succeeded()
        return result

    async def read(self, call: Awaitable[T]) -> T:
        try:
            with self._reading.under_way():
                result = await call
        except StoreError as exc:
            self.reads.failed(trio.current_time(), "read", exc)
            raise
        self.reads.succeeded()
        return result

    def report(self, *, degraded_after: float, unhealthy_after: float) -> HealthReport:
        found: list[tuple[Health, str]] = []
        gone = self.gone()
        if gone is not None:
            found.append((Health.UNHEALTHY, gone))
        for waits, what in (
            (self._writing, "a write has waited {:.1f} s for the database lock"),
            (self._reading, "a read has waited {:.1f} s for the database"),
        ):
            waited = waits.longest()
            if waited is not None and waited > degraded_after:
                status = Health.UNHEALTHY if waited > unhealthy_after else Health.DEGRADED
                found.append((status, what.format(waited)))
        for kind, streak in (("writes", self.writes), ("reads", self.reads)):
            judged = streak.judge(kind, unhealthy_after)
            if judged is not None and not (gone is not None and kind == "writes"):
                found.append(judged)
        return HealthReport.worst(HealthReport(status, (reason,)) for status, reason in found)

    def to_dict(self, *, degraded_after: float, unhealthy_after: float) -> dict[str, Any]:
        report = self.report(degraded_after=degraded_after, unhealthy_after=unhealthy_after)
        write_waited, read_waited = self._writing.longest(), self._reading.longest()
        return {
            **report.to_dict(),
            "gone": self.gone(),
            "write_waiting": None if write_waited is None else round(write_waited, 3),
            "read_waiting": None if read_waited is None else round(read_waited, 3),
            "write_error": self.writes.error,
            "read_error": self.reads.error,
            "write_failures": self.writes.failures,
            "read_failures": self.reads.failures,
        }


class MonitoredStore:
    """A store whose every call is recorded in a :class:`StoreHealth`; else the same."""

    def __init__(self, inner: Store, health: StoreHealth) -> None:
        self.inner = inner
        self.health = health
        self.url = inner.url

    def __repr__(self) -> str:
        return f"<MonitoredStore {self.inner!r}>"

    @property
    def reads_as_written(self) -> bool:
        return reads_as_written(self.inner)

    async def open(self) -> int:
        return await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def commit_many(self, commits: Sequence[Commit]) -> list[list[Row]]:
        what = "append" if any(c.appends for c in commits) else "write"
        return await self.health.write(what, self.inner.commit_many(commits))

    async def read_after(
        self,
        after: int,
        limit: int,
        *,
        upto: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Row]:
        return await self.health.read(self.inner.read_after(after, limit, upto=upto, names=names))

    async def head(self) -> int:
        return await self.health.read(self.inner.head())

    async def watch(self, publish: Callable[[int], None]) -> None:
        await self.inner.watch(publish)

    async def positions(self) -> dict[str, int]:
        return await self.health.read(self.inner.positions())

    async def retries(self) -> list[RetryRecord]:
        return await self.health.read(self.inner.retries())

    async def leases(
        self, holder: str, held: Mapping[str, int], wanted: Sequence[str], *, ttl: float, now: float
    ) -> dict[str, int]:
        call = self.inner.leases(holder, held, wanted, ttl=ttl, now=now)
        return await self.health.write("lease round", call)

    async def release_leases(self, held: Mapping[str, int]) -> None:
        await self.health.write("lease release", self.inner.release_leases(held))

    async def lease_records(self) -> list[LeaseRecord]:
        return await self.health.read(self.inner.lease_records())

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]:
        return await self.health.read(self.inner.dead_letters(worker))

    async def controls(self) -> list[ControlRecord]:
        return await self.health.read(self.inner.controls())

    async def set_paused(self, worker: str, *, paused: bool, now: float) -> ControlRecord:
        call = self.inner.set_paused(worker, paused=paused, now=now)
        return await self.health.write("pause", call)

    async def reset_positions(
        self, worker: str, names: Sequence[str], to: int, *, now: float
    ) -> ControlRecord:
        reset = self.inner.reset_positions(worker, names, to, now=now)
        return await self.health.write("reset", reset)

    async def discard_dead_letters(
        self, letters: Sequence[tuple[str, int]], *, now: float
    ) -> list[DeadLetterRecord]:
        return await self.health.write("discard", self.inner.discard_dead_letters(letters, now=now))

    async def discarded(self, worker: str | None = None) -> list[tuple[str, int]]:
        return await self.health.read(self.inner.discarded(worker))

    async def count_messages(
        self, after: int, upto: int, names: Sequence[str]
    ) -> tuple[int, int | None, int | None]:
        return await self.health.read(self.inner.count_messages(after, upto, names))

    async def snapshots(self, name: str | None = None) -> list[SnapshotRecord]:
        return await self.health.read(self.inner.snapshots(name))

    def gone(self) -> str | None:
        return self.inner.gone()

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()
