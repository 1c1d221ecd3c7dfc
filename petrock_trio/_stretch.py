"""Stretches: the handler calls of one page under one cancel scope, deadlines exact.

A cancel scope of its own for every handler call cost more than everything else a
message with a trivial handler costs (docs/performance.md, "What exactness costs").
Instead the message loop enters one scope for a stretch of messages, its deadline
infinite, and each handler call (``_attempt.call``) sets the deadline to its own only
once the handler first yields to Trio: cancellation lands only at a checkpoint, so a
handler that returns without ever yielding cannot be cut off and needs no deadline.
While the deadline is set, only that handler runs in the scope (it is reset before the
engine awaits anything), so when it fires it cuts off that handler and nothing else.

A scope whose deadline fired stays cancelled: the call raises :class:`Overran`, which
leaves the stretch before anything else awaits, and the loop carries the message on
outside it (commit, retries, dead letter) from where the handler left it.

Between messages the stretch is a cancel point; it is a schedule point too once
``MESSAGES`` messages or ``SECONDS`` of running (real time) went by without one, so a
worker catching up on handlers that never wait starves nobody.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from ._context import HandlerContext

__all__ = ["MESSAGES", "SECONDS", "Overran", "Stretch"]

# A schedule point at least this often while handlers never wait (the old rule was one
# per message): other tasks wait at most this much behind a catching-up worker.
MESSAGES: Final = 64
SECONDS: Final = 0.001


class Overran(BaseException):
    """A handler's deadline fired inside a stretch: leave it, then go on with
    ``outcome`` (the handler's error, its timeout, or None if it returned anyway).

    A ``BaseException`` so that no ``except Exception`` between the handler and the
    stretch holds it up. The frames it passes add what the loop needs to go on: the
    attempt's context and start, the attempt number and first failure.
    """

    def __init__(self, outcome: BaseException | None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.ctx: HandlerContext | None = None
        self.started = 0.0
        self.number = 1
        self.first_failed_at: float | None = None


class Stretch:
    """The scope shared by the handler calls of a stretch, and its yield budget."""

    __slots__ = ("_count", "_since", "armed", "scope", "task")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        # Periodic work and re-drives of the same run may call handlers while the loop
        # waits in a stretch (a retry's wait lets the lock go): not in its scope.
        self.task = trio.lowlevel.current_task()
        # Whether a handler's deadline is set on the scope (from its first yield until
        # it returned in time; for good once it fired). Only then can the scope be
        # cancelled: nothing else cancels it, and reading ``cancel_called`` costs a read
        # of the clock, twice a message otherwise.
        self.armed = False
        self._count = 0
        self._since = time.perf_counter()

    @property
    def fired(self) -> bool:
        """Whether a handler's deadline fired in this stretch (the scope is cancelled
        for good then)."""
        return self.armed and self.scope.cancel_called

    @property
    def usable(self) -> bool:
        """Whether the calling task may call a handler in this stretch: its own task,
        and no deadline fired yet."""
        return self.task is trio.lowlevel.current_task() and not self.fired

    def yielded(self) -> None:
        """A handler was resumed after it waited: other tasks ran meanwhile."""
        self._count = 0
        self._since = time.perf_counter()

    def between(self) -> Awaitable[None]:
        """After a message: a cancel point, a schedule point when the budget is spent.
        (Trio's checkpoint itself is returned to be awaited: a frame less a message.)"""
        self._count += 1
        if self._count >= MESSAGES or time.perf_counter() - self._since >= SECONDS:
            self.yielded()  # other tasks run now
            return trio.lowlevel.checkpoint()  # noqa: ASYNC105 - awaited by the caller
        return trio.lowlevel.checkpoint_if_cancelled()  # noqa: ASYNC105 - as above
