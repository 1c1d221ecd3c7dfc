"""The operator's verbs of :class:`~petrock_trio.App` (a base of it): re-drive, at once
or waiting, one dead letter or many; discard dead letters; pause and resume a worker;
reset its position.

Pause, resume and reset are written to the store, so every process serving the log
obeys them (see ``_controls``); re-drive tickets are this process's (``_redrive``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import attrs

from ._clock import WallClock
from ._dead_letter import DeadLetter
from ._errors import BadPosition, NotPaused, OperatorError, WorkerPaused
from ._redrive import RedriveTicket, RedriveTickets
from ._reset import ResetPlan, plan_reset
from ._runtime import Runtime
from ._worker import PatternWorker
from .stores import ControlRecord, DeadLetterRecord

__all__ = ["BulkRedrive", "OperatorVerbs"]


@attrs.frozen
class BulkRedrive:
    """The re-drives one request started (a ticket each), and the dead letters it
    matched but left alone, with why: (worker, message id, reason)."""

    tickets: tuple[RedriveTicket, ...]
    skipped: tuple[tuple[str, int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": len(self.tickets),
            "tickets": [t.to_dict() for t in self.tickets],
            "skipped": [{"worker": w, "message_id": m, "reason": r} for w, m, r in self.skipped],
        }


def _matching(
    letters: Sequence[DeadLetterRecord], worker: str | None, command: str | None, every: bool
) -> list[DeadLetterRecord]:
    """The dead letters a filter selects; refuses a filter that selects nothing by name
    without saying ``every`` (a slip must not re-drive or discard everything)."""
    if worker is None and command is None and not every:
        raise OperatorError("name a worker or a command, or say all (every=True)")
    return [
        d
        for d in letters
        if (worker is None or d.worker == worker) and (command is None or d.command_name == command)
    ]


class OperatorVerbs:
    """What an operator does to a serving app's workers (a base of :class:`App`)."""

    workers: dict[str, Any]
    clock: WallClock

    def _runtime(self) -> Runtime:
        raise NotImplementedError

    @functools.cached_property
    def redrive_tickets(self) -> RedriveTickets:
        """The re-drives this process took (kept in memory, bounded: see ``_redrive``)."""
        return RedriveTickets()

    def _pattern(self, worker: str) -> PatternWorker[Any]:
        runner = self.workers.get(worker)
        if not isinstance(runner, PatternWorker):
            raise LookupError(f"no pattern worker named {worker!r}")  # noqa: TRY004 - a name
        return runner

    def _refuse_paused(self, rt: Runtime, worker: str, what: str) -> None:
        if rt.controls.paused(worker):
            raise WorkerPaused(
                f"worker {worker!r} is paused by an operator: resume it to {what}", worker=worker
            )

    # --- re-drive ----------------------------------------------------------------------

    async def redrive(self, worker: str, message_id: int) -> None:
        """Have ``worker`` handle dead-lettered message ``message_id`` again, live.

        On success the dead letter is removed; on failure it stays, with its attempts
        added up. Returns when the worker is done with it: after its whole retry
        schedule if it fails again (:meth:`start_redrive` returns at once). Raises
        :class:`WorkerPaused` while the worker is paused, ``LookupError`` for a
        worker or dead letter that does not exist.
        """
        rt = self._runtime()
        runner = self._pattern(worker)
        self._refuse_paused(rt, worker, "re-drive its dead letters")
        await runner.redrive(message_id)

    async def start_redrive(self, worker: str, message_id: int) -> RedriveTicket:
        """Start re-driving dead letter ``message_id`` of ``worker``; returns at once.

        The :class:`RedriveTicket` says how it goes (``await ticket.wait()``, or
        ``app.redrive_tickets.get(ticket.id)`` later). Raises ``LookupError`` when
        ``worker`` has no such dead letter, :class:`WorkerPaused` while it is paused,
        :class:`RedriveBacklog` when too many re-drives are unfinished.
        """
        rt = self._runtime()
        runner = self._pattern(worker)
        self._refuse_paused(rt, worker, "re-drive its dead letters")
        letters = await rt.log.store.dead_letters(worker)
        if not any(d.message_id == message_id for d in letters):
            raise LookupError(f"worker {worker!r} has no dead letter for message {message_id}")
        return self._start(rt, runner, message_id)

    def _start(self, rt: Runtime, runner: PatternWorker[Any], message_id: int) -> RedriveTicket:
        async def carry_out(ticket: RedriveTicket) -> None:
            # What a ticket says if the app stops (this task is cancelled) meanwhile.
            error: str | None = "NotRunning: the app stopped before the re-drive finished"
            letter: DeadLetterRecord | None = None
            try:
                await runner.redrive(message_id, ticket)
                found = await rt.log.store.dead_letters(runner.name)
                letter = next((d for d in found if d.message_id == message_id), None)
                error = None
            except Exception as exc:  # noqa: BLE001 - what the ticket reports
                error = f"{type(exc).__name__}: {exc}"
            finally:
                ticket.finish(rt.clock(), letter=letter, error=error)

        return self.redrive_tickets.start(runner.name, message_id, rt.clock(), carry_out)

    async def start_redrives(
        self, *, worker: str | None = None, command: str | None = None, every: bool = False
    ) -> BulkRedrive:
        """Start re-driving every dead letter of ``worker`` and/or of ``command`` (both
        if both are given; ``every=True`` for all of them); returns at once, a ticket
        each. Dead letters of a worker this app does not run, or that is paused, are
        left alone (``skipped``). Raises :class:`RedriveBacklog`, starting none, when
        their tickets would not fit.
        """
        rt = self._runtime()
        chosen = _matching(await rt.log.store.dead_letters(worker), worker, command, every)
        start: list[tuple[PatternWorker[Any], int]] = []
        skipped: list[tuple[str, int, str]] = []
        for d in chosen:
            runner = self.workers.get(d.worker)
            if not isinstance(runner, PatternWorker):
                skipped.append((d.worker, d.message_id, "no pattern worker of that name here"))
            elif rt.controls.paused(d.worker):
                skipped.append((d.worker, d.message_id, "the worker is paused"))
            else:
                start.append((runner, d.message_id))
        self.redrive_tickets.check_room(len(start))
        tickets = tuple(self._start(rt, runner, message_id) for runner, message_id in start)
        return BulkRedrive(tickets, tuple(skipped))

    async def discard_dead_letters(
        self, *, worker: str | None = None, command: str | None = None, every: bool = False
    ) -> list[DeadLetter]:
        """Remove the dead letters of ``worker`` and/or of ``command`` (``every=True``:
        all of them) without handling them; the ones removed.

        Their messages stay done for their worker: its position stays past them, and
        replay skips them as it skips dead letters, so they never take effect. Works for
        dead letters of workers this app no longer has, too.
        """
        rt = self._runtime()
        chosen = _matching(await rt.log.store.dead_letters(worker), worker, command, every)
        records = await rt.log.store.discard_dead_letters(
            [(d.worker, d.message_id) for d in chosen], now=rt.clock()
        )
        for d in records:
            rt.dead_letter_ids.get(d.worker, set()).discard(d.message_id)
            rt.controls.discarded.setdefault(d.worker, set()).add(d.message_id)
        return [DeadLetter.from_record(d) for d in records]

    # --- pause, resume, reset ---------------------------------------------------------------

    async def pause_worker(self, worker: str, *, wait: bool = False) -> ControlRecord:
        """Pause ``worker`` in every process that serves the log (the store keeps it).

        Each of its runs finishes the message it is on, then handles nothing: its
        position stays, re-drives wait, periodic work is skipped, and its health is
        degraded ("paused by an operator") until :meth:`resume_worker`. Other processes
        notice within their store's watch (see docs/workers.md). ``wait``: return once
        its runs in this process have stopped at the gate.
        """
        record = await self._set_paused(worker, paused=True)
        if wait:
            await self._runtime().controls.wait_parked(worker)
        return record

    async def resume_worker(self, worker: str) -> ControlRecord:
        """Resume ``worker`` where it stopped, in every process that serves the log."""
        return await self._set_paused(worker, paused=False)

    async def _set_paused(self, worker: str, *, paused: bool) -> ControlRecord:
        rt = self._runtime()
        self._pattern(worker)
        record = await rt.log.store.set_paused(worker, paused=paused, now=rt.clock())
        rt.controls.apply([record])
        return record

    async def reset_plan(self, worker: str, *, to: int) -> ResetPlan:
        """What :meth:`reset_position` to ``to`` would replay and handle live again,
        from the positions stored now; changes nothing."""
        rt = self._runtime()
        runner = self._pattern(worker)
        head = rt.log.head.value
        if not 0 <= to <= head:
            raise BadPosition(f"position {to} is not in the log (0 to {head})", worker=worker)
        return await plan_reset(rt, runner, to)

    async def reset_position(self, worker: str, *, to: int) -> ResetPlan:
        """Set ``worker``'s position to ``to``, for all its partitions; only while it is
        paused (:class:`NotPaused` otherwise, nothing changed).

        Its runs start again from the store: while still paused, they replay up to
        ``to``; once resumed they handle live everything after it, messages handled
        before included. Returns the plan, as :meth:`reset_plan` made it just before.
        Waits for its runs in this process to stop at the gate first (a run elsewhere
        still handling a message is cut off, as at a takeover) and, without leases, for
        them to have started again and replayed.
        """
        rt = self._runtime()
        runner = self._pattern(worker)
        if not rt.controls.paused(worker):
            raise NotPaused(
                f"worker {worker!r} is not paused: pause it before resetting its position",
                worker=worker,
            )
        await rt.controls.wait_parked(worker)
        # Whatever its runs moved in memory is written now, and every write queued
        # before lands before the reset, which nothing of theirs may overwrite.
        await rt.flusher.flush()
        await rt.log.commit(rt.log.new_commit())
        plan = await self.reset_plan(worker, to=to)
        names = runner.partition_names()
        record = await rt.log.store.reset_positions(worker, names, to, now=rt.clock())
        rt.controls.apply([record])
        if rt.leases is None:
            # Every run of it is here: they start again from the store, and replay.
            await rt.controls.wait_restarted(worker, record.generation)
        return plan
