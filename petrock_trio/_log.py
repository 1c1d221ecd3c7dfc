"""The message log: a typed facade over the store, with group commit and a live head."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio
from trio_util import AsyncValue

from ._clock import WallClock
from ._commands import CommandRegistry
from ._errors import OutcomeUnknown, PetrockError, StoreError, StoreGone
from ._message import Message, Row
from ._store_health import MonitoredStore, StoreHealth
from ._watermark import Watermark
from .stores import Commit, Store

__all__ = ["CommitBeforeFailed", "MessageLog", "Pending"]


class CommitBeforeFailed(StoreError):
    """A commit queued after another that failed: not written, so that none lands
    without the one before it (see :meth:`MessageLog.submit`)."""


@attrs.define(eq=False)
class Pending:
    """A commit queued for the group-commit writer, until it is written or fails;
    ``after``: the commit it must not land without (see :meth:`MessageLog.submit`)."""

    commit: Commit
    after: Pending | None = None
    # Done only once this position reaches the commit's rows too (execute's wait for
    # state: one wake-up of the caller instead of two), or is released.
    applied: Watermark | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    rows: list[Row] | None = None
    error: BaseException | None = None


class MessageLog:
    """Append and read commands; ``head`` is the id of the last committed message.

    ``head`` is a ``trio_util.AsyncValue``: followers ``await head.wait_value(...)``
    instead of polling. While :meth:`run_writer` runs, concurrent commits are grouped
    into one transaction (group commit); otherwise each commit is its own transaction.
    ``store_health`` records what every call to the store (through ``store``) came to.
    """

    def __init__(self, store: Store, registry: CommandRegistry, clock: WallClock) -> None:
        self.store_health = StoreHealth(store.gone)
        self.store = MonitoredStore(store, self.store_health)
        self.registry = registry
        self.clock = clock
        self.head: AsyncValue[int] = AsyncValue(0)
        # Told the rows of each commit this log writes, before ``head`` moves past them
        # (the pump takes them as they are instead of reading them back: LogPump.handed).
        self.row_listeners: list[Callable[[list[Row]], None]] = []
        # Set while the writer has a transaction with appends in flight; done once its
        # rows are told (a head another connection saw may be those rows).
        self.appending: trio.Event | None = None
        self._queue: trio.MemorySendChannel[Pending] | None = None
        self._batches = 0

    def __repr__(self) -> str:
        return f"<MessageLog {self.store.url!r} head={self.head.value}>"

    async def open(self) -> None:
        self.head.value = await self.store.open()

    async def commit(self, commit: Commit, *, applied: Watermark | None = None) -> list[Row]:
        """Write ``commit`` atomically; return the rows it appended. With ``applied``,
        return once that position has reached them too, or was released (the caller
        tells which)."""
        pending = self.submit(commit, applied=applied)
        if pending is None:
            (rows,) = await self.store.commit_many([commit])
            self._published(rows)
            if applied is not None and rows:
                await applied.reached(rows[-1].id)
            return rows
        return await self.landed(pending)

    def submit(
        self, commit: Commit, *, after: Pending | None = None, applied: Watermark | None = None
    ) -> Pending | None:
        """Queue ``commit`` for the group-commit writer and return at once (None when no
        writer runs); :meth:`landed` tells how it went. Commits are written in the
        order they are queued, each in a transaction written after the one before, and
        one queued ``after`` another is not written if that one failed."""
        if self._queue is None:
            return None
        pending = Pending(commit, after=after, applied=applied)
        self._queue.send_nowait(pending)
        return pending

    async def landed(self, pending: Pending) -> list[Row]:
        """The rows ``pending`` appended once it is written; raises why it was not."""
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.rows is not None
        return pending.rows

    def new_commit(
        self, cmds: Sequence[Any] = (), *, encoded: Sequence[tuple[str, bytes]] = (), **kw: Any
    ) -> Commit:
        appends = [*encoded, *(self.registry.encode(c) for c in cmds)]
        return Commit(appends=appends, timestamp=self.clock(), **kw)

    async def append(self, *cmds: Any) -> list[Message]:
        """Append commands without validation (workers and tools; apps use ``execute``)."""
        rows = await self.commit(self.new_commit(cmds))
        return [Message.from_row(r, c) for r, c in zip(rows, cmds, strict=True)]

    async def read_after(self, after: int, limit: int = 1000) -> list[Message]:
        """Decoded messages after ``after``; raises on a row that does not decode."""
        rows = await self.store.read_after(after, limit)
        return [Message.from_row(r, self.registry.decode(r.name, r.payload)) for r in rows]

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Group-commit loop; never returns unless cancelled.

        Error handling: a failed batch is retried commit by commit so that one bad
        commit fails only its own caller.
        """
        send, receive = trio.open_memory_channel[Pending](math.inf)
        self._queue = send
        try:
            task_status.started()
            async for first in receive:
                batch = [first]
                while True:
                    try:
                        batch.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                batch = _unchained(batch)
                if batch:
                    await self._write_batch(batch)
        finally:
            self._queue = None
            # Whoever still waits is told, while the channel is open to read them:
            # nothing queued was written (a closed channel would hide them).
            self._fail_queued(receive)
            receive.close()

    async def _write_batch(self, batch: list[Pending]) -> None:
        if not any(p.commit.appends for p in batch):
            await self._write_batch_of(batch)
            return
        appending = self.appending = trio.Event()
        try:
            await self._write_batch_of(batch)
        finally:
            self.appending = None
            appending.set()

    async def _write_batch_of(self, batch: list[Pending]) -> None:
        self._batches += 1
        try:
            results = await self.store.commit_many([p.commit for p in batch])
        except (OutcomeUnknown, StoreGone) as exc:
            # Retrying could append twice (or, the file gone, cannot succeed): every
            # caller learns the same.
            _fail(batch, exc)
            # If it did land, followers must still see the new rows.
            if isinstance(exc, OutcomeUnknown):
                with contextlib.suppress(PetrockError):
                    self.publish_head(await self.store.head())
            return
        except PetrockError as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for pending in batch:
                if _unchained([pending]):
                    await self._write_batch_of([pending])
            return
        except BaseException:
            # Interrupted (KeyboardInterrupt): whether the transaction landed is unknown,
            # so callers are not told it failed; they are woken to unwind with the app.
            _fail(batch, PetrockError("the log writer was interrupted"))
            raise
        # Once for the transaction: its rows, in order, to the listeners and the head.
        self._published(results[0] if len(results) == 1 else [r for rows in results for r in rows])
        for pending, rows in zip(batch, results, strict=True):
            pending.rows = rows
            pending.after = None  # done: the ones queued after it need only its outcome
            if pending.applied is None or not rows:
                pending.done.set()
            else:
                pending.applied.set_when_reached(rows[-1].id, pending.done)

    def _fail_queued(self, receive: trio.MemoryReceiveChannel[Pending]) -> None:
        while True:
            try:
                pending = receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                return
            _fail([pending], PetrockError("the log writer stopped before this commit was written"))

    def _published(self, rows: list[Row]) -> None:
        if rows:
            if self.row_listeners and self.store.reads_as_written:
                for listener in self.row_listeners:
                    listener(rows)
            self.publish_head(rows[-1].id)

    def publish_head(self, head: int) -> None:
        """Raise ``head`` (never lower it): new rows exist up to ``head``."""
        self.head.value = max(self.head.value, head)

    @property
    def batches(self) -> int:
        return self._batches


def _unchained(batch: list[Pending]) -> list[Pending]:
    """``batch`` without the commits queued after one that failed, which fail too,
    unwritten. (One queued after another of the same batch shares its transaction; when
    that fails, the batch is written again one by one, in order, so the first one's
    outcome is known when the second is written.)"""
    kept = []
    for pending in batch:
        before = pending.after
        if before is not None and before.error is not None:
            _fail([pending], CommitBeforeFailed("not written: the commit queued before it failed"))
        else:
            kept.append(pending)
    return kept


def _fail(batch: list[Pending], error: BaseException) -> None:
    for pending in batch:
        pending.error = error
        pending.after = None  # done: a chain of them would keep every commit alive
        pending.done.set()
