"""Positions of messages that emitted nothing, written in groups."""

from __future__ import annotations

import trio

from ._errors import LeaseLost, PetrockError
from ._leases import LeaseKeeper
from ._log import MessageLog
from ._logging import get_logger
from ._watermark import Watermark

__all__ = ["PositionFlusher"]

_log = get_logger("petrock_trio")


class PositionFlusher:
    """Commits positions that moved in memory only, in groups.

    A live message a worker routes commits its position before the worker goes on
    (with its emits, if any). What moves only in memory is the position past messages
    a worker does not route (nothing to re-handle), and, for workers declared with
    ``batch_positions``, past messages that emitted nothing. This task writes every
    such position in one transaction ``interval`` seconds after the first move (or at
    once after ``max_pending`` moves), and once more at shutdown.
    """

    def __init__(
        self,
        log: MessageLog,
        *,
        interval: float = 0.2,
        max_pending: int = 10_000,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.log = log
        self.leases = leases
        self.interval = interval
        self.max_pending = max_pending
        self.feeds: dict[str, Watermark] = {}  # worker -> its position in memory
        self.saved: dict[str, int] = {}
        self._dirty = trio.Event()
        self._pending = 0
        self._urgent = trio.Event()
        self.failures = 0

    def touch(self, moved: int = 1) -> None:
        self._pending += moved
        self._dirty.set()
        if self._pending >= self.max_pending:
            self._urgent.set()

    def committed(self, worker: str, position: int) -> None:
        """A commit with emits already wrote ``position`` for ``worker``."""
        if position > self.saved.get(worker, 0):
            self.saved[worker] = position

    def changes(self) -> dict[str, int]:
        return {
            name: position.value
            for name, position in self.feeds.items()
            if position.value > self.saved.get(name, 0)
        }

    async def flush(self, *, direct: bool = False) -> None:
        """Write every moved position in one transaction.

        ``direct`` goes straight to the store, bypassing group commit: at shutdown the
        writer task may already be cancelled.
        """
        changes = self.changes()
        self._pending = 0
        fences: dict[str, int] = {}
        if self.leases is not None:
            # A worker whose lease is gone has no position of ours to write.
            fences = self.leases.fences(changes)
            changes = {w: p for w, p in changes.items() if w in fences}
        if not changes:
            return
        commit = self.log.new_commit(positions=changes, leases=fences)
        try:
            if direct:
                await self.log.store.commit_many([commit])
            else:
                await self.log.commit(commit)
        except LeaseLost as exc:
            if self.leases is not None:
                self.leases.lose(exc.workers)
            raise
        self.saved.update(changes)

    async def run(self) -> None:
        """Never returns unless cancelled."""
        while True:
            await self._dirty.wait()
            with trio.move_on_after(self.interval):
                await self._urgent.wait()
            self._dirty = trio.Event()
            self._urgent = trio.Event()
            try:
                await self.flush()
            except PetrockError as exc:
                # Positions stay in memory and are written on the next round: a failed
                # flush costs at most re-handling messages that emitted nothing.
                self.failures += 1
                _log.error("petrock.position_flush_failed", error_details=repr(exc), exc_info=exc)
                self._dirty.set()
