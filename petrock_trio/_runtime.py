"""What one run of ``serve`` shares between the pump, the projection and the workers.

Workers see the app only through this: the log, the pump, the projection's applied
position, command checking, and the store's saved state. Never the ``App`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._commands import CommandRegistry, command_name, validate
from ._controls import Controls
from ._errors import LeaseLost, NotRunning
from ._events import Event, Hook, StructlogHook, event_fields
from ._leases import LeaseKeeper
from ._log import MessageLog, Pending
from ._logging import get_logger
from ._message import Row
from ._positions import PositionFlusher
from ._pump import LogPump
from ._totals import Totals
from ._watermark import Watermark
from .stores import Commit, RetryRecord, SnapshotRecord

__all__ = ["Run", "Runtime", "Stop"]


class Run(Protocol):
    """What ``serve`` drives: one serving of a worker (or of the state projection)."""

    name: str

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Replay, then work live; ``started()`` once replayed; never returns unless
        cancelled or stopped."""
        ...

    def stop(self) -> None:
        """Begin graceful shutdown: end waits, let running work finish."""
        ...


_log = get_logger("petrock_trio")


class Stop(Exception):
    """Graceful shutdown interrupted a wait; leave without committing the current message."""


@attrs.define(eq=False)
class Runtime:
    """Services of one serving app, handed to workers when they start."""

    log: MessageLog
    pump: LogPump
    flusher: PositionFlusher
    saved_positions: dict[str, int]
    dead_letter_ids: dict[str, set[int]]
    encode_valid: Callable[[Any], tuple[str, bytes]]
    # The state a command's validate method sees, by command name.
    state_for: Callable[[str], Any]
    # Taken by execute and by commits of emitted commands that have a validate method:
    # each sees every earlier command applied (see commit_validated).
    validate_lock: trio.Lock
    hooks: list[Hook] = attrs.Factory(list)
    # Retry state saved by an earlier run (or another process), by worker.
    retries: dict[str, RetryRecord] = attrs.Factory(dict)
    # Stored snapshots by name (a worker's, a partition's), newest first.
    snapshots: dict[str, list[SnapshotRecord]] = attrs.Factory(dict)
    leases: LeaseKeeper | None = None
    stopping: trio.Event = attrs.field(factory=trio.Event)
    # What operators asked of the workers (pause, resets), as the store holds it.
    controls: Controls = attrs.Factory(lambda self: Controls(self.log.store), takes_self=True)
    # The state projection's position: everything up to it is applied to app state.
    applied: Watermark = attrs.Factory(lambda: Watermark(0))
    # The app's counters since the process started, which every run adds to.
    totals: Totals = attrs.Factory(Totals)
    # What the app's lifespan yielded: handlers and periodic work read it from ctx.
    resources: Any = None

    def __attrs_post_init__(self) -> None:
        # Metrics count the dead letters still in the store from the set kept here.
        self.totals.dead_letter_ids = self.dead_letter_ids

    async def wait_applied(self, message_id: int) -> None:
        """Wait until the state projection has applied ``message_id``.

        Raises :class:`NotRunning` if the app stops first (the command is in the log;
        the next start applies it).
        """
        if not await self.applied.reached(message_id):
            raise _stopped_before(message_id)

    async def append_applied(self, commit: Commit) -> list[Row]:
        """Write ``commit`` and wait until the state projection has applied its rows
        (see :meth:`wait_applied`; one wait for both)."""
        rows = await self.log.commit(commit, applied=self.applied)
        if rows and self.applied.value < rows[-1].id:
            raise _stopped_before(rows[-1].id)
        return rows

    async def commit(self, worker: str, **commit: Any) -> list[Row]:
        """Commit for ``worker``, fenced by its lease when leases are on.

        A lost lease cancels the worker's activity, so the caller unwinds with
        ``Cancelled`` rather than handle :class:`LeaseLost` itself.
        """
        try:
            return await self.log.commit(self._new_commit(worker, commit))
        except LeaseLost as exc:
            await self._lost(exc)
            raise

    def submit(self, worker: str, *, after: Pending | None = None, **commit: Any) -> Pending | None:
        """:meth:`commit` queued without waiting for it (see ``MessageLog.submit``);
        :meth:`landed` waits. None when no writer runs, or ``worker`` holds no lease."""
        try:
            return self.log.submit(self._new_commit(worker, commit), after=after)
        except LeaseLost:
            return None  # the commit made the usual way finds out, and says so

    async def landed(self, pending: Pending) -> list[Row]:
        """The outcome of a commit :meth:`submit` queued, as :meth:`commit` tells it."""
        try:
            return await self.log.landed(pending)
        except LeaseLost as exc:
            await self._lost(exc)
            raise

    def _new_commit(self, worker: str, commit: dict[str, Any]) -> Commit:
        leases = {} if self.leases is None else self.leases.fence(worker)
        return self.log.new_commit(leases=leases, **commit)

    async def _lost(self, exc: LeaseLost) -> None:
        if self.leases is not None:
            self.leases.lose(exc.workers)
            await trio.lowlevel.checkpoint()

    async def commit_validated(
        self, worker: str, to_validate: Sequence[object], **commit: Any
    ) -> list[Row]:
        """:meth:`commit`, checking ``to_validate`` again first, one at a time with
        ``execute``: against state with every earlier command applied, so two emits of
        a unique name cannot both land. Raises the command's ``ValidationError``."""
        if not to_validate:
            return await self.commit(worker, **commit)
        async with self.validate_lock:
            await self.wait_applied(self.log.head.value)
            for cmd in to_validate:
                validate(cmd, self.state_for(command_name(cmd)))
            return await self.commit(worker, **commit)

    async def reload(self, stored: str, worker: str) -> None:
        """Read positions, ``worker``'s dead letters, and the retry state and snapshots
        stored under ``stored`` (the worker's or one partition's name) from the store
        again: before taking over, whatever its previous holder committed counts."""
        store = self.log.store
        self.log.publish_head(await store.head())
        # All of them: a partition's coverage reads the other partitions' positions.
        # Replaced, not added to: a reset deletes a worker's positions under other names.
        positions = await store.positions()
        self.saved_positions.clear()
        self.saved_positions.update(positions)
        self.dead_letter_ids[worker] = {d.message_id for d in await store.dead_letters(worker)}
        self.snapshots[stored] = await store.snapshots(stored)
        self.retries.pop(stored, None)
        for record in await store.retries():
            if record.worker == stored:
                self.retries[stored] = record
        self.controls.discarded[worker] = {m for _, m in await store.discarded(worker)}

    def wants_completed(self) -> bool:
        """Whether any hook would use a HandlerCompleted event (built per message)."""
        return any(
            not isinstance(hook, StructlogHook) or hook.debug_enabled() for hook in self.hooks
        )

    def close_waiters(self) -> None:
        self.applied.release()

    def report(self, event: Event) -> None:
        """Hand ``event`` to every hook; a failing hook is logged, never raised."""
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:  # noqa: BLE001 - instrumentation must not break a worker
                _log.exception("petrock.hook_failed", hook=repr(hook), **event_fields(event))

    @property
    def registry(self) -> CommandRegistry:
        return self.log.registry

    def clock(self) -> float:
        """The app's wall-clock time (data only)."""
        return self.log.clock()


def _stopped_before(message_id: int) -> NotRunning:
    return NotRunning(f"the app stopped before message {message_id} was applied")
