"""Re-drives: a dead-lettered message handled again, live, on the worker's own task.

``App.redrive`` waits until the worker is done with it, which takes as long as the
worker's retry schedule when the message fails again (1 + 2 + 4 s with
``Backoff(max_attempts=4)``, about 91 s with the default). ``App.start_redrive``
returns a :class:`RedriveTicket` at once instead: the re-drive runs in the
background, and the ticket says how it goes (queued, running, resolved, failed).

Tickets are kept in memory, in the process that took the re-drive, at most
:data:`MAX_TICKETS` of them: when full, the oldest finished one makes room, and a new
re-drive is refused (:class:`RedriveBacklog`) while every kept ticket is unfinished.
They are gone once the process exits; the dead letters themselves are in the store.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import trio

from ._errors import NotRunning, RedriveBacklog
from ._message import Page
from ._runstate import RunState
from ._runtime import Stop
from ._settle import settle
from .stores import DeadLetterRecord

__all__ = [
    "MAX_TICKETS",
    "RedriveRequest",
    "RedriveTicket",
    "RedriveTickets",
    "redrive_loop",
]

MAX_TICKETS: Final = 10_000
"""The most re-drive tickets a process keeps (finished ones make room first)."""

Status = Literal["queued", "running", "resolved", "failed"]


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


class RedriveTicket:
    """A re-drive handed to a worker, and how it goes.

    ``status`` is ``"queued"`` (waiting for the worker: its message loop or another
    re-drive holds it, or it is paused), ``"running"`` (the handler is being tried,
    retries and their waits included), ``"resolved"`` (handled: the dead letter is
    gone) or ``"failed"``: it failed again (``dead_letter`` is the dead letter as it
    stands, with its attempts added up) or could not be done (``error`` says why: the
    worker stopped, or runs in another process). Times are wall-clock.
    """

    def __init__(self, ticket_id: str, worker: str, message_id: int, created_at: float) -> None:
        self.id = ticket_id
        self.worker = worker
        self.message_id = message_id
        self.status: Status = "queued"
        self.error: str | None = None
        self.dead_letter: DeadLetterRecord | None = None
        self.created_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._done = trio.Event()

    def __repr__(self) -> str:
        return f"<RedriveTicket {self.id} {self.worker!r}/{self.message_id} {self.status}>"

    @property
    def done(self) -> bool:
        """Whether it is resolved or failed."""
        return self._done.is_set()

    async def wait(self) -> RedriveTicket:
        """Wait until it is resolved or failed; return it."""
        await self._done.wait()
        return self

    def running(self, at: float) -> None:
        self.status = "running"
        self.started_at = at

    def finish(self, at: float, *, letter: DeadLetterRecord | None, error: str | None) -> None:
        """Resolved unless the dead letter is still there (``letter``) or ``error``."""
        self.status = "failed" if letter is not None or error is not None else "resolved"
        self.dead_letter = letter
        self.error = error or (None if letter is None else letter.error)
        self.finished_at = at
        self._done.set()

    def to_dict(self) -> dict[str, Any]:
        letter = self.dead_letter
        return {
            "ticket": self.id,
            "worker": self.worker,
            "message_id": self.message_id,
            "status": self.status,
            "resolved": None if not self.done else self.status == "resolved",
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "dead_letter": None
            if letter is None
            else {
                "worker": letter.worker,
                "message_id": letter.message_id,
                "command_name": letter.command_name,
                "error": letter.error,
                "attempts": letter.attempts,
                "first_failed_at": _iso(letter.first_failed_at),
                "last_failed_at": _iso(letter.last_failed_at),
            },
        }


class RedriveTickets:
    """The re-drives this process took, by ticket, and the tasks that carry them out
    (in the nursery of :meth:`run`, while the app serves)."""

    def __init__(self, capacity: int = MAX_TICKETS) -> None:
        self.capacity = capacity
        self.tickets: OrderedDict[str, RedriveTicket] = OrderedDict()
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        unfinished = sum(1 for t in self.tickets.values() if not t.done)
        return f"<RedriveTickets kept={len(self.tickets)} unfinished={unfinished}>"

    def get(self, ticket_id: str) -> RedriveTicket | None:
        return self.tickets.get(ticket_id)

    def room(self) -> int:
        """How many more tickets could be kept now (finished ones make room)."""
        unfinished = sum(1 for t in self.tickets.values() if not t.done)
        return self.capacity - unfinished

    def check_room(self, count: int) -> None:
        """Raise :class:`RedriveBacklog` unless ``count`` more tickets can be kept."""
        if count > self.room():
            raise RedriveBacklog(
                f"{self.capacity - self.room()} re-drives are unfinished and at most "
                f"{self.capacity} tickets are kept: {count} more do not fit; wait for some "
                "to finish, or re-drive fewer at once"
            )

    def start(
        self,
        worker: str,
        message_id: int,
        now: float,
        carry_out: Callable[[RedriveTicket], Awaitable[None]],
    ) -> RedriveTicket:
        """A new ticket, queued, whose re-drive ``carry_out(ticket)`` runs in the background."""
        nursery = self._nursery
        if nursery is None:
            raise NotRunning("the app is not serving; start it with serve(app)")
        self.check_room(1)
        while len(self.tickets) >= self.capacity:
            oldest = next(t for t in self.tickets.values() if t.done)
            del self.tickets[oldest.id]
        ticket = RedriveTicket(secrets.token_hex(8), worker, message_id, now)
        self.tickets[ticket.id] = ticket
        nursery.start_soon(carry_out, ticket)
        return ticket

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out re-drives until cancelled (when serving ends); never returns."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None


class RedriveRequest:
    def __init__(self, message_id: int, ticket: RedriveTicket | None = None) -> None:
        self.message_id = message_id
        self.ticket = ticket
        self.done = trio.Event()
        self.error: BaseException | None = None


async def redrive_loop(run: RunState, receive: trio.MemoryReceiveChannel[RedriveRequest]) -> None:
    """Serve re-drive requests one at a time until the worker stops; while it is paused,
    they wait."""
    async for request in receive:
        try:
            if run.rt.controls.paused(run.name):
                await run.interruptible(run.rt.controls.wait_resumed, run.name)
            page = await _dead_letter_page(run, request.message_id)
            async with run.lock:
                if request.ticket is not None:
                    request.ticket.running(run.rt.clock())
                await settle(run, page, 0, redrive=True)
        except Stop:
            request.error = NotRunning(f"worker {run.name!r} is stopping")
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            request.error = exc
        finally:
            request.done.set()


async def _dead_letter_page(run: RunState, message_id: int) -> Page:
    rows = await run.rt.log.store.read_after(message_id - 1, 1)
    if not rows or rows[0].id != message_id:
        raise LookupError(f"message {message_id} is not in the log")
    row = rows[0]
    if message_id not in run.rt.dead_letter_ids.get(run.name, ()):
        raise LookupError(f"message {message_id} is not a dead letter of {run.name!r}")
    if row.name not in run.routes:
        raise LookupError(f"worker {run.name!r} does not route {row.name!r}")
    return Page(row.id - 1, row.id, [row])
