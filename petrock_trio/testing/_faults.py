"""A store wrapper that injects faults: failed writes and reads, delays, corrupt rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from .._errors import StoreError
from .._message import Row
from ..stores import (
    Commit,
    ControlRecord,
    DeadLetterRecord,
    LeaseRecord,
    RetryRecord,
    SnapshotRecord,
    Store,
    StoreStatistics,
)

__all__ = ["FaultyStore"]


@attrs.define
class _Script:
    remaining: int = 0
    error: Callable[[], Exception] = lambda: StoreError("injected store failure")
    delay: float = 0.0
    when: Callable[[Sequence[Commit]], bool] | None = None
    after: bool = False  # fail after the write landed (an outcome the caller cannot know)

    def take(self, commits: Sequence[Commit] = ()) -> Exception | None:
        if self.remaining <= 0 or (self.when is not None and not self.when(commits)):
            return None
        self.remaining -= 1
        return self.error()


class FaultyStore:
    """Wraps a real store and fails, stalls or corrupts on request.

    ``fail_commits(n)`` makes the next ``n`` transactions raise without writing (as a
    full disk or a lost connection would); ``fail_reads(n)`` the same for reads;
    ``stall_commits(seconds)`` delays every write (a locked database, on Trio's
    clock), ``stall_reads(seconds)`` every read of the log (a server that stopped
    answering); ``corrupt(message_id)`` returns that row with a payload that does not
    decode. Everything else goes to the real store.

    While a read fault is armed the app reads its own new rows back, as it reads
    another process's, instead of being handed them by its log
    (``reads_as_written``): the faults reach its pump.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self._commits = _Script()
        self._reads = _Script()
        self._corrupt: set[int] = set()
        self.failed_commits = 0
        self.failed_reads = 0

    def __repr__(self) -> str:
        return f"<FaultyStore {self.inner!r} commits_to_fail={self._commits.remaining}>"

    def fail_commits(
        self,
        count: int = 1,
        error: Callable[[], Exception] | None = None,
        *,
        when: Callable[[Sequence[Commit]], bool] | None = None,
        after: bool = False,
    ) -> None:
        """Fail the next ``count`` transactions (those for which ``when(commits)`` holds).

        With ``after=True`` the transaction is written first and then reported as
        failed, as a connection lost at the wrong moment does.
        """
        self._commits.remaining += count
        self._commits.when = when
        self._commits.after = after
        if error is not None:
            self._commits.error = error

    def fail_reads(self, count: int = 1, error: Callable[[], Exception] | None = None) -> None:
        self._reads.remaining += count
        if error is not None:
            self._reads.error = error

    def stall_commits(self, seconds: float) -> None:
        self._commits.delay = seconds

    def stall_reads(self, seconds: float) -> None:
        self._reads.delay = seconds

    def corrupt(self, message_id: int) -> None:
        self._corrupt.add(message_id)

    @property
    def reads_as_written(self) -> bool:
        """Whether a read returns the rows a commit returned (no read fault armed)."""
        reads = self._reads
        return not (reads.remaining > 0 or reads.delay or self._corrupt)

    async def open(self) -> int:
        return await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def commit_many(self, commits: Sequence[Commit]) -> list[list[Row]]:
        if self._commits.delay:
            await trio.sleep(self._commits.delay)
        error = self._commits.take(commits)
        if error is None:
            return await self.inner.commit_many(commits)
        self.failed_commits += 1
        if self._commits.after:
            await self.inner.commit_many(commits)
        raise error

    async def read_after(
        self,
        after: int,
        limit: int,
        *,
        upto: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Row]:
        if self._reads.delay:
            await trio.sleep(self._reads.delay)
        error = self._reads.take()
        if error is not None:
            self.failed_reads += 1
            raise error
        rows = await self.inner.read_after(after, limit, upto=upto, names=names)
        if self._corrupt:
            rows = [
                r._replace(payload=b"\x00corrupt") if r.id in self._corrupt else r for r in rows
            ]
        return rows

    async def head(self) -> int:
        return await self.inner.head()

    async def watch(self, publish: Callable[[int], None]) -> None:
        await self.inner.watch(publish)

    async def positions(self) -> dict[str, int]:
        return await self.inner.positions()

    async def dead_letters(self, worker: str | None = None) -> list[DeadLetterRecord]:
        return await self.inner.dead_letters(worker)

    async def retries(self) -> list[RetryRecord]:
        return await self.inner.retries()

    async def controls(self) -> list[ControlRecord]:
        return await self.inner.controls()

    async def set_paused(self, worker: str, *, paused: bool, now: float) -> ControlRecord:
        return await self.inner.set_paused(worker, paused=paused, now=now)

    async def reset_positions(
        self, worker: str, names: Sequence[str], to: int, *, now: float
    ) -> ControlRecord:
        return await self.inner.reset_positions(worker, names, to, now=now)

    async def discard_dead_letters(
        self, letters: Sequence[tuple[str, int]], *, now: float
    ) -> list[DeadLetterRecord]:
        return await self.inner.discard_dead_letters(letters, now=now)

    async def discarded(self, worker: str | None = None) -> list[tuple[str, int]]:
        return await self.inner.discarded(worker)

    async def count_messages(
        self, after: int, upto: int, names: Sequence[str]
    ) -> tuple[int, int | None, int | None]:
        return await self.inner.count_messages(after, upto, names)

    async def snapshots(self, name: str | None = None) -> list[SnapshotRecord]:
        return await self.inner.snapshots(name)

    async def leases(
        self, holder: str, held: Mapping[str, int], wanted: Sequence[str], *, ttl: float, now: float
    ) -> dict[str, int]:
        return await self.inner.leases(holder, held, wanted, ttl=ttl, now=now)

    async def release_leases(self, held: Mapping[str, int]) -> None:
        await self.inner.release_leases(held)

    async def lease_records(self) -> list[LeaseRecord]:
        return await self.inner.lease_records()

    def gone(self) -> str | None:
        return self.inner.gone()

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()
