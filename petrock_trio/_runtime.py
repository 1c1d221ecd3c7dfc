"""What one run of ``serve`` shares between the app, the pump and the workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from ._clock import WallClock
from ._commands import CommandRegistry
from ._errors import LeaseLost, NotRunning, PetrockError
from ._events import Event, Hook, StructlogHook
from ._leases import LeaseKeeper
from ._log import MessageLog
from ._message import Row
from ._pump import Feed, LogPump
from .stores import RetryRecord

if TYPE_CHECKING:
    from ._app import App

__all__ = ["PositionFlusher", "Runtime"]

_log = structlog.get_logger("petrock_trio")


class PositionFlusher:
    """Commits the positions of messages that emitted nothing, in groups.

    A message with emits commits its position at once, with its emits. The others only
    move a feed's position in memory; this task writes every moved position in one
    transaction ``interval`` seconds after the first move (or at once after
    ``max_pending`` moves), and once more at shutdown. A crash in between re-handles
    at most those messages, which emitted nothing.
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
        self.feeds: dict[str, Feed] = {}
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
            name: feed.position.value
            for name, feed in self.feeds.items()
            if feed.position.value > self.saved.get(name, 0)
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
                _log.error("petrock.position_flush_failed", error_details=repr(exc))
                self._dirty.set()


@attrs.define(eq=False)
class Runtime:
    """Services of one serving app, handed to workers when they start."""

    app: App
    log: MessageLog
    pump: LogPump
    flusher: PositionFlusher
    saved_positions: dict[str, int]
    dead_letter_ids: dict[str, set[int]]
    encode_valid: Callable[[Any], tuple[str, bytes]]
    hooks: list[Hook] = attrs.Factory(list)
    # Retry state saved by an earlier run (or another process), by worker.
    retries: dict[str, RetryRecord] = attrs.Factory(dict)
    leases: LeaseKeeper | None = None
    stopping: trio.Event = attrs.field(factory=trio.Event)
    waiters: set[trio.CancelScope] = attrs.Factory(set)
    closed: bool = False

    async def wait_applied(self, message_id: int) -> None:
        """Wait until the state projection has applied ``message_id``.

        Raises :class:`NotRunning` if the app stops first (the command is in the log;
        the next start applies it).
        """
        position = self.app.projection.position_value
        if position.value >= message_id:
            return
        if self.closed:
            raise NotRunning(f"the app stopped before message {message_id} was applied")
        with trio.CancelScope() as scope:
            self.waiters.add(scope)
            try:
                await position.wait_value(lambda p: p >= message_id)
            finally:
                self.waiters.discard(scope)
        if scope.cancelled_caught:
            raise NotRunning(f"the app stopped before message {message_id} was applied")

    async def commit(self, worker: str, **commit: Any) -> list[Row]:
        """Commit for ``worker``, fenced by its lease when leases are on.

        A lost lease cancels the worker's activity, so the caller unwinds with
        ``Cancelled`` rather than handle :class:`LeaseLost` itself.
        """
        try:
            leases = {} if self.leases is None else self.leases.fence(worker)
            return await self.log.commit(self.log.new_commit(leases=leases, **commit))
        except LeaseLost as exc:
            if self.leases is not None:
                self.leases.lose(exc.workers)
                await trio.lowlevel.checkpoint()
            raise

    async def reload(self, worker: str) -> None:
        """Read ``worker``'s position, dead letters and retry state from the store again:
        before taking over, whatever its previous holder committed counts."""
        store = self.log.store
        self.log.publish_head(await store.head())
        self.saved_positions[worker] = (await store.positions()).get(worker, 0)
        self.dead_letter_ids[worker] = {d.message_id for d in await store.dead_letters(worker)}
        self.retries.pop(worker, None)
        for record in await store.retries():
            if record.worker == worker:
                self.retries[worker] = record

    def wants_completed(self) -> bool:
        """Whether any hook would use a HandlerCompleted event (built per message)."""
        return any(
            not isinstance(hook, StructlogHook) or hook.debug_enabled() for hook in self.hooks
        )

    def close_waiters(self) -> None:
        self.closed = True
        for scope in self.waiters:
            scope.cancel()

    def report(self, event: Event) -> None:
        """Hand ``event`` to every hook; a failing hook is logged, never raised."""
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:  # noqa: BLE001 - instrumentation must not break a worker
                _log.exception("petrock.hook_failed", hook=repr(hook))

    @property
    def registry(self) -> CommandRegistry:
        return self.log.registry

    @property
    def clock(self) -> WallClock:
        return self.log.clock
