"""Settling one live message: attempts until it succeeds, waits, or is dead-lettered.

Each failed attempt goes to ``_retry.decide`` (retry at, wait for a service,
dead-letter); this module carries the decision out: the retry state is committed
with the position so a restart resumes the backoff, and a dead letter whose commit
fails is written again without running the handler again.
"""

from __future__ import annotations

import trio

from ._attempt import attempt
from ._errors import HandlerTimeout, LeaseLost, PetrockError, ServiceUnavailable
from ._events import DeadLettered, HandlerFailed
from ._logging import get_logger
from ._message import Message, Page, Row
from ._partition import split_name
from ._retry import Backoff, Decision, GiveUp, RetryAt, WaitForService, decide
from ._runstate import RunState
from ._stretch import Overran
from ._tracebacks import format_traceback
from .stores import DeadLetterRecord, RetryRecord

__all__ = ["dead_letter", "settle"]

_log = get_logger("petrock_trio.worker")

# Writing a dead letter again after the store failed: the handler is not run again.
_REWRITE = Backoff(initial=1.0, max_delay=30.0)


async def settle(
    run: RunState,
    page: Page,
    index: int,
    *,
    redrive: bool = False,
    resumed: Overran | None = None,
) -> None:
    """Handle the message at ``index`` of ``page`` until it succeeds or is dead-lettered.

    ``resumed``: its attempt's deadline fired in a stretch (``_stretch``), or its commit
    failed behind the loop (``_behind``), which has left the stretch since; go on from
    that attempt's outcome.
    """
    row = page.rows[index]
    rt = run.rt
    try:
        message = page.message(index, rt.registry)
    except Exception as exc:  # noqa: BLE001 - bad input in the log: dead-letter, go on
        await dead_letter(run, row, exc, attempts=1, first_failed_at=rt.clock())
        return
    if resumed is not None:
        # As a cancel scope of the attempt's own would have: a cancel from outside at
        # the same moment wins over the timeout.
        await trio.lowlevel.checkpoint_if_cancelled()
    elif rt.applied.value < row.id:
        # A live handler sees app state at least as new as its message, so what it
        # emits is validated against the state that message produced.
        await rt.wait_applied(row.id)
    number, first_failed_at, wait = _start(run, row, redrive=redrive, resumed=resumed)
    run.in_flight = 1
    try:
        while True:
            if wait > 0:
                await run.wait_to_retry(wait)
            started = run.now() if resumed is None else resumed.started
            error = await attempt(
                run, message, number, started=started, redrive=redrive, resumed=resumed
            )
            resumed = None
            now = run.now()
            if error is None:
                _succeeded(run, message, first_failed_at, now - started, now)
                return
            first_failed_at = first_failed_at or rt.clock()
            decision = _decide(run, message, error, number)
            _report_failure(run, message, error, number, now - started, decision)
            if isinstance(decision, GiveUp):
                await dead_letter(
                    run,
                    row,
                    error,
                    attempts=number,
                    first_failed_at=first_failed_at,
                    duration=now - started,
                )
                return
            run.retrying = (row.id, number)
            run.recorder.retry(message.name)
            if isinstance(decision, RetryAt):
                number += 1
            wait = decision.delay
            await _save_retry(
                run,
                RetryRecord(run.key, row.id, number - 1, rt.clock() + wait, first_failed_at),
                message.name,
            )
    except Overran as overran:
        overran.number, overran.first_failed_at = number, first_failed_at
        raise
    finally:
        run.in_flight = 0
        run.retrying = None


def _succeeded(
    run: RunState, message: Message, first_failed_at: float | None, duration: float, now: float
) -> None:
    landing = run.behind.of(message.id)
    if landing is not None:
        landing.first_failed_at = first_failed_at  # if its commit fails behind the loop
    run.behind.when_landed(run.recorder.handled, now, duration, message.name)


def _start(
    run: RunState, row: Row, *, redrive: bool, resumed: Overran | None
) -> tuple[int, float | None, float]:
    """Attempt number, first failure and wait of the first attempt :func:`settle` makes."""
    if resumed is not None:
        return resumed.number, resumed.first_failed_at, 0.0
    return (1, None, 0.0) if redrive else _resume(run, row)


def _decide(run: RunState, message: Message, error: BaseException, number: int) -> Decision:
    route = run.routes[message.name]
    policy = route.retry or run.decl.retry
    services = run.decl.services

    def unavailable(leaf: BaseException) -> tuple[str, float] | None:
        for service in services:
            if service.caused(leaf) and not service.available:
                return service.name, service.retry_after() or policy.delay(1)
        return None

    return decide(error, number, policy, unavailable)


def _report_failure(  # noqa: PLR0917 - a private helper of settle
    run: RunState,
    message: Message,
    error: BaseException,
    number: int,
    duration: float,
    decision: Decision,
) -> None:
    run.recorder.failed_attempt(message.name, duration, error)
    timed_out = isinstance(error, HandlerTimeout)
    waiting = isinstance(decision, WaitForService)
    if not isinstance(error, ServiceUnavailable):
        run.recorder.failure(trio.current_time(), repr(error), timeout=timed_out)
    delay = None if isinstance(decision, GiveUp) else decision.delay
    run.rt.report(
        HandlerFailed(
            run.name,
            message.id,
            message.name,
            number,
            duration,
            error,
            delay,
            timed_out=timed_out,
            retry_requested=isinstance(decision, RetryAt) and decision.requested,
            service_unavailable=waiting,
        )
    )


def _resume(run: RunState, row: Row) -> tuple[int, float | None, float]:
    """Attempt number, first failure and wait before the first attempt at ``row``.

    If an earlier run (or another process) saved retry state for ``row``, the
    backoff carries on with its attempt count, at the time it chose.
    """
    rt = run.rt
    stored = run.key
    if not rt.retries:
        return 1, None, 0.0  # nothing to resume, the usual case
    record = rt.retries.get(stored)
    if record is None or record.message_id != row.id:
        # Saved by the partition that owned the message before the worker was
        # partitioned differently?
        stored, record = next(
            (
                (name, r)
                for name, r in rt.retries.items()
                if r.message_id == row.id and split_name(name)[0] == run.name
            ),
            (stored, None),
        )
    if record is None:
        return 1, None, 0.0
    del rt.retries[stored]
    run.retrying = (row.id, record.attempts)
    return record.attempts + 1, record.first_failed_at, record.next_attempt_at - rt.clock()


async def _save_retry(run: RunState, record: RetryRecord, command_type: str) -> None:
    """Keep the retry state with the position: a restart or a takeover by another
    process resumes the backoff instead of starting it over."""
    await run.behind.land()  # the commits in flight first (see _behind)
    try:
        await run.rt.commit(run.key, retries=[record])
    except LeaseLost:
        raise
    except PetrockError as exc:
        # Retrying goes on in memory; only a crash before the retry loses the count.
        _log.warning(
            "petrock.retry_state_not_saved",
            worker_name=run.name,
            command_type=command_type,
            message_id=record.message_id,
            error_details=repr(exc),
            exc_info=exc,
        )


async def dead_letter(
    run: RunState,
    row: Row,
    error: BaseException,
    *,
    attempts: int,
    first_failed_at: float,
    duration: float | None = None,
) -> None:
    """Record ``row`` as given up on, with its position and ``error``'s traceback; written
    again until it lands. ``duration`` is the last attempt's (``None``: no handler ran)."""
    await run.behind.land()  # the commits in flight first (see _behind)
    rt, name, key = run.rt, run.name, run.key
    record = DeadLetterRecord(
        worker=name,
        message_id=row.id,
        command_name=row.name,
        error=repr(error),
        attempts=attempts,
        first_failed_at=first_failed_at,
        last_failed_at=rt.clock(),
        traceback=format_traceback(error),
    )
    failures = 0
    while True:
        try:
            await rt.commit(key, positions={key: row.id}, dead_letters=[record])
            break
        except LeaseLost:
            raise
        except PetrockError as exc:
            failures += 1
            delay = _REWRITE.delay(min(failures, 10))
            _log.warning(
                "petrock.dead_letter_not_saved",
                worker_name=name,
                command_type=row.name,
                message_id=row.id,
                error_details=repr(exc),
                retry_in=delay,
                exc_info=exc,
            )
            await run.interruptible(trio.sleep, delay)
    rt.flusher.committed(key, row.id)
    run.feed.advance(row.id)
    rt.dead_letter_ids.setdefault(name, set()).add(row.id)
    run.recorder.dead_letter(trio.current_time(), row.name)
    rt.report(DeadLettered(name, row.id, row.name, attempts, error, duration))
