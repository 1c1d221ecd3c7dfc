"""Commit behind (``commit_behind=True``): commits are written while the next handlers run.

A durable position per message costs a whole group-commit round trip between one
handler and the next (a thread, a transaction, a sync, several passes of the
scheduler; with 64 partitions sharing the writer, about 4 ms a message). For a worker
declared with ``commit_behind``, the message loop queues the commit of a message whose
handler succeeded and goes on; the next handler waits for the oldest commit only when
``DEPTH`` are in flight. Any retry or dead-letter record, a pause, a stop, the end of
the page and a crash of the loop first wait for all of them. What follows from a commit
(the position in memory, metrics, the completed event) happens once it is written, in
order.

What stays as it was: each message's emits and position are one transaction, and the
transactions of a run are written in log order: each is queued ``after`` the one
before, and the writer does not write one whose predecessor failed or has an unknown
outcome (``CommitBeforeFailed``), so none lands without the ones before it. Validated
emits are never sent behind: their check must see every earlier commit applied. A
handler runs after the previous message's handler returned, so live handling keeps
log order.

What changes: the next handlers may start before the previous commits are durable.
When one fails, the loop goes back to its message as if its attempt had failed then
(retry, backoff, dead letter, exactly as before) and handles the messages after it
again; nothing of their first run was written. A crash or kill in between re-handles
them all, up to ``DEPTH`` + 1 messages, as it would re-handle the one in hand.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVarTuple

import attrs

from ._errors import LeaseLost, OutcomeUnknown, StoreError
from ._log import CommitBeforeFailed
from ._stretch import Overran

if TYPE_CHECKING:
    from ._context import HandlerContext
    from ._log import Pending
    from ._runtime import Runtime

__all__ = ["DEPTH", "Behind", "Landing", "Unlanded", "landed_anyway"]

Ts = TypeVarTuple("Ts")

# Commits a run may have in flight behind its loop: the next handler waits for the
# oldest only when this many are still being written (a slow transaction, a sync).
DEPTH: Final = 2


@attrs.define(eq=False)
class Landing:
    """A successful attempt whose commit is being written."""

    pending: Pending
    message_id: int
    ctx: HandlerContext
    started: float
    first_failed_at: float | None = None
    # What follows from the commit, in order, once it is written.
    after: list[Callable[[], None]] = attrs.Factory(list)


class Unlanded(BaseException):
    """The commit of ``landing`` failed with ``error``: go back to its message.

    A ``BaseException`` so that nothing between the call that found out (the next
    message's commit, its retry record) and the page loop holds it up.
    """

    def __init__(self, landing: Landing, error: BaseException) -> None:
        super().__init__(error)
        self.landing = landing
        self.error = error

    def resumption(self) -> Overran | None:
        """The failed message's attempt, to go on from as after a stretch (``_stretch``):
        its outcome is the commit's error. None when only the commit before it failed
        (it was not written for that): the message is simply handled again."""
        if isinstance(self.error, CommitBeforeFailed):
            return None
        resumed = Overran(self.error)
        landing = self.landing
        resumed.ctx, resumed.started = landing.ctx, landing.started
        resumed.number, resumed.first_failed_at = landing.ctx.attempt, landing.first_failed_at
        return resumed


async def landed_anyway(rt: Runtime, key: str, message_id: int) -> bool:
    """After :class:`OutcomeUnknown`: whether the commit of ``message_id``'s position
    landed (then its emits did too, and handling it again would emit them twice)."""
    try:
        return (await rt.log.store.positions()).get(key, 0) >= message_id
    except StoreError:
        return False


class Behind:
    """The commits one run has in flight while its loop goes on, oldest first."""

    __slots__ = ("depth", "key", "landings", "rt")

    def __init__(self, rt: Runtime, key: str, depth: int = DEPTH) -> None:
        self.rt = rt
        self.key = key
        self.depth = depth
        self.landings: deque[Landing] = deque()

    def __repr__(self) -> str:
        return f"<Behind {self.key!r} {[landing.message_id for landing in self.landings]}>"

    @property
    def last(self) -> Pending | None:
        """The newest commit in flight: the next one is queued after it."""
        return self.landings[-1].pending if self.landings else None

    def send(self, landing: Landing) -> None:
        assert len(self.landings) < self.depth, "too many commits in flight"
        self.landings.append(landing)

    def when_landed(self, fn: Callable[[*Ts], None], *args: *Ts) -> None:
        """``fn(*args)`` now, or once every commit in flight is written (never if one
        fails: then its message and everything after it are handled again)."""
        if self.landings:
            self.landings[-1].after.append(functools.partial(fn, *args))
        else:
            fn(*args)  # the usual case, once per message: no partial to make

    def of(self, message_id: int) -> Landing | None:
        """The newest landing in flight if it is ``message_id``'s."""
        landing = self.landings[-1] if self.landings else None
        return landing if landing is not None and landing.message_id == message_id else None

    async def land(self, *, keep: int = 0) -> None:
        """Wait until all but ``keep`` of the commits in flight are written, oldest
        first, and do what follows from each; raise :class:`Unlanded` for the first
        that failed (those after it are dropped: queued after it, they fail too).
        Returns without a checkpoint when it has nothing to wait for: its callers
        checkpoint themselves (in a stretch, the loop's cancel point after each
        message)."""
        landings = self.landings
        while len(landings) > keep:
            landing = landings[0]
            error = await self._outcome(landing)
            landings.popleft()
            if error is not None:
                landings.clear()
                raise Unlanded(landing, error)
            for fn in landing.after:
                fn()

    async def _outcome(self, landing: Landing) -> BaseException | None:
        pending = landing.pending
        try:
            if not pending.done.is_set():
                await pending.done.wait()
            if pending.error is not None:
                await self.rt.landed(pending)  # raises it as a commit would
        except LeaseLost:
            self.landings.clear()
            raise
        except OutcomeUnknown as exc:
            return None if await landed_anyway(self.rt, self.key, landing.message_id) else exc
        except Exception as exc:  # noqa: BLE001 - a failed commit fails its message's attempt
            return exc
        except BaseException:
            self.landings.clear()  # cancelled: the run unwinds
            raise
        return None
