"""One attempt: the handler under its own deadline, then its commit.

The bottom of a worker's loops. A timeout can only cut off this handler, and only
while it runs: a handler that returned (even one woken in the same instant as its
deadline) has succeeded, and its commit runs under no deadline. In the message loop
the handler runs in the page's stretch (``_stretch``), whose scope carries this
handler's deadline from its first yield until it returns; elsewhere (periodic work,
re-drives, traced attempts) in a cancel scope of its own.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NoReturn

import trio

from . import _tracing
from ._behind import Landing, landed_anyway
from ._context import HandlerContext
from ._errors import HandlerTimeout, LeaseLost, OutcomeUnknown
from ._events import HandlerCompleted
from ._logging import WORKING
from ._message import Message
from ._runstate import RunState
from ._stretch import Overran, Stretch
from .stores import SnapshotRecord

__all__ = ["attempt", "call", "handle"]


def _cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None


# KI protection of the coroutines that make the call (_call_scoped, _call_in): a Ctrl-C
# that arrives while user code runs is delivered to the main task at its next
# checkpoint instead of inside the handler, so that a KeyboardInterrupt seen there is
# the handler's own doing and can count as its failure.
def call(
    fn: Callable[..., Awaitable[None]],
    *args: Any,
    deadline: float,
    limit: float,
    what: str,
    run: RunState,
    command_type: str,
    message_id: int | None = None,
) -> Awaitable[BaseException | None]:
    """``await fn(*args)`` cut off at ``deadline``; the error it raised, if any
    (:class:`HandlerTimeout` naming ``what`` and ``limit`` when it was cut off).

    Any ``BaseException`` other than cancellation (``KeyboardInterrupt``,
    ``SystemExit``, a custom one) is a failure of this call, returned like any other:
    it must not end the process, nor do so again at every restart. Cancellation from
    outside (a hard stop, a lost lease) propagates.

    Meanwhile ``run.running`` says what runs (``command_type``, ``message_id``), for
    the event-loop watchdog, and ``WORKING`` the same for log lines. A timeout's
    ``__cause__`` is the cancellation that cut the handler off: its traceback shows
    where the handler was waiting.
    """
    # The coroutine that does it is returned, not awaited here: a frame less a message.
    running = (command_type, message_id, what)
    stretch = run.stretch
    if stretch is not None and stretch.usable:
        return _call_in(stretch, fn, args, deadline, limit, run, running)
    return _call_scoped(fn, args, deadline, limit, run, running)


@trio.lowlevel.enable_ki_protection
async def _call_scoped(  # noqa: PLR0917 - call's arguments, passed on
    fn: Callable[..., Awaitable[None]],
    args: tuple[Any, ...],
    deadline: float,
    limit: float,
    run: RunState,
    running: tuple[str, int | None, str],
) -> BaseException | None:
    """:func:`call` in a cancel scope of its own."""
    command_type, message_id, what = running
    scope = trio.CancelScope(deadline=deadline)
    cut_off: BaseException | None = None
    working = WORKING.set((run.name, command_type, message_id))
    try:
        with scope:
            coro = fn(*args)
            run.running = (command_type, message_id, what, coro)
            try:
                await coro
            except BaseException as exc:
                if _cancelled(exc):
                    cut_off = exc
                raise
    except BaseException as exc:  # noqa: BLE001 - a failure of this call; a cancel leaves via _propagate
        if _cancelled(exc):
            _propagate(exc)
        return exc
    finally:
        run.running = None
        WORKING.reset(working)
    if scope.cancelled_caught:
        timeout = HandlerTimeout(run.name, limit, what)
        timeout.__cause__ = cut_off
        return timeout
    return None


def _propagate(cancel: BaseException) -> NoReturn:
    """Raise the cancellation ``cancel`` carries: whatever else failed meanwhile (in an
    exception group), the cancellation is what happens now."""
    if isinstance(cancel, BaseExceptionGroup):
        cancelled, _ = cancel.split(trio.Cancelled)
        assert cancelled is not None
        raise cancelled from None
    raise cancel


@trio.lowlevel.enable_ki_protection
async def _call_in(  # noqa: PLR0917 - call's arguments, passed on
    stretch: Stretch,
    fn: Callable[..., Awaitable[None]],
    args: tuple[Any, ...],
    deadline: float,
    limit: float,
    run: RunState,
    running: tuple[str, int | None, str],
) -> BaseException | None:
    """:func:`call` inside a stretch (see ``_stretch``): the shared scope's deadline
    is this handler's from its first yield to its return; raises :class:`Overran`
    once that deadline fired, whatever the handler did then."""
    error: BaseException | None = None
    command_type, message_id, what = running
    working = WORKING.set((run.name, command_type, message_id))
    try:
        coro = fn(*args)
        run.running = (command_type, message_id, what, coro)
        try:
            await _drive(coro, stretch, deadline)
        except BaseException as exc:  # noqa: BLE001 - as in call
            if not _cancelled(exc):
                error = exc
            elif stretch.fired:
                error = HandlerTimeout(run.name, limit, what)
                error.__cause__ = exc
            else:
                _propagate(exc)  # a cancel from outside, as out of a scope
    finally:
        run.running = None
        WORKING.reset(working)
    if stretch.fired:
        raise Overran(error)
    return error


@types.coroutine
def _drive(coro: Awaitable[None], stretch: Stretch, deadline: float) -> Generator[Any, Any, None]:
    """``await coro``, step by step as ``await`` does it, with ``deadline`` set on the
    stretch's scope from the first step that yields to Trio until the coroutine ends."""
    # A coroutine is stepped directly; any other awaitable through its iterator.
    inner: Any = coro if isinstance(coro, types.CoroutineType) else coro.__await__()
    try:
        trap = inner.send(None)
    except StopIteration:
        return  # returned without a checkpoint: no deadline could have applied
    stretch.scope.deadline = deadline
    stretch.armed = True
    try:
        while True:
            try:
                value = yield trap
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by Trio: the handler's
                stretch.yielded()
                trap = inner.throw(exc)
            else:
                stretch.yielded()  # resumed: other tasks ran meanwhile
                trap = inner.send(value)
    except StopIteration:
        return
    finally:
        if not stretch.scope.cancel_called:
            stretch.scope.deadline = math.inf
            stretch.armed = False


def handle(
    run: RunState, ctx: HandlerContext, *, started: float, what: str
) -> Awaitable[BaseException | None]:
    """The route's handler for ``ctx.message`` under its deadline (see :func:`call`)."""
    message = ctx.message
    limit = run.decl.limit(message.name)
    return call(
        run.routes[message.name].handler,
        ctx,
        message.command,
        run.state,
        deadline=started + limit,
        limit=limit,
        what=f"{what} {message.name!r}",
        run=run,
        command_type=message.name,
        message_id=message.id,
    )


async def attempt(
    run: RunState,
    message: Message,
    number: int,
    *,
    started: float,
    redrive: bool = False,
    in_span: bool = False,
    resumed: Overran | None = None,
) -> BaseException | None:
    """Run the handler for ``message`` once and commit its outcome; the error if either
    failed. On success the message's position is durable (with its emits), unless the
    worker batches positions and the handler emitted nothing.

    With tracing, the attempt runs again inside its span (``in_span``), which covers
    the commit too: an attempt whose commit fails has failed. Without, the body runs
    here, with no other frame between the message loop and the handler.
    """
    rt = run.rt
    if resumed is not None:
        # The handler ran in a stretch whose deadline fired (see _stretch): its outcome.
        assert resumed.ctx is not None
        ctx, error = resumed.ctx, resumed.outcome
        return await _finish(run, message, number, ctx, error, started=started, redrive=redrive)
    if not in_span:
        leases = rt.leases
        if leases is not None:
            # In the loop's own stretch its cancel point after each message stands for
            # ensure's checkpoint (a pass of the scheduler: the largest cost of a
            # message with leases); the check itself is made all the same, and a lease
            # that ran out or was lost goes through ensure, which says so.
            stretch = run.stretch
            if not (stretch is not None and stretch.usable and leases.holds(run.key)):
                await leases.ensure(run.key)
        tracing = _tracing.ACTIVE
        if tracing is not None:
            return await tracing.attempt(
                functools.partial(
                    attempt, run, message, number, started=started, redrive=redrive, in_span=True
                ),
                message,
                worker=run.name,
                attempt=number,
                partition=run.partition,
                redrive=redrive,
            )
    ctx = HandlerContext(
        rt, run.name, message, is_replay=False, attempt=number, partition=run.partition
    )
    try:
        error = await handle(run, ctx, started=started, what="handler for")
    except Overran as overran:
        overran.ctx, overran.started = ctx, started
        raise
    return await _finish(run, message, number, ctx, error, started=started, redrive=redrive)


async def _finish(
    run: RunState,
    message: Message,
    number: int,
    ctx: HandlerContext,
    error: BaseException | None,
    *,
    started: float,
    redrive: bool,
) -> BaseException | None:
    """After the handler: its error, or its commit (and the completed event)."""
    rt = run.rt
    if error is not None:
        return error
    error = await _commit(run, message.id, ctx, started=started, redrive=redrive)
    if error is not None:
        return error
    if run.report_completed:
        duration = run.now() - started
        event = HandlerCompleted(run.name, message, number, duration, tuple(ctx.emitted), redrive)
        run.behind.when_landed(rt.report, event)
    return None


async def _commit(
    run: RunState, message_id: int, ctx: HandlerContext, *, started: float, redrive: bool
) -> BaseException | None:
    """Commit a successful run; the error if the commit failed (then it is retried).
    In a stretch, the commit is written while the loop goes on (``_behind``)."""
    rt, name, key = run.rt, run.name, run.key
    try:
        if redrive:
            extra = run.redrive_snapshot()
            await rt.commit_validated(
                key,
                ctx.to_validate,
                encoded=ctx.emitted,
                metadata=ctx.emitted_metadata,
                resolved=[(name, message_id)],
                **extra,
            )
            run.snapshots_committed(extra.get("snapshots", ()))
            rt.dead_letter_ids.get(name, set()).discard(message_id)
            return None
        # Behind the loop (see _behind) where the worker asks for it, in the message
        # loop's stretch, with no emit to validate again (its check must see every
        # commit before it applied). Room for it there; written now, every one before
        # it first, so that it cannot land without them.
        behind = run.decl.commit_behind and run.stretch is not None and not ctx.to_validate
        keep = run.behind.depth - 1 if behind else 0
        if len(run.behind.landings) > keep:  # no coroutine made for nothing to wait for
            await run.behind.land(keep=keep)
        # Encoded now, before the commit: state as this message left it.
        snapshot = run.snapshot_at(message_id)
        if ctx.emitted or not run.decl.batch_positions or snapshot is not None:
            snapshots = () if snapshot is None else (snapshot,)
            if behind and _sent_behind(run, message_id, ctx, snapshots, started=started):
                return None
            await rt.commit_validated(
                key,
                ctx.to_validate,
                encoded=ctx.emitted,
                metadata=ctx.emitted_metadata,
                positions={key: message_id},
                snapshots=snapshots,
            )
            _committed(run, message_id, snapshots)
        elif run.stretch is None:
            await trio.lowlevel.checkpoint()  # nothing to write: still a checkpoint
        # (In a stretch, the loop's cancel and schedule point after each message.)
    except LeaseLost:
        raise
    except OutcomeUnknown as exc:
        # The commit carried this message's position: if that landed, so did the
        # emits, and handling the message again would emit them twice.
        landed = await landed_anyway(rt, key, message_id)
        return None if landed and not redrive else exc
    except Exception as exc:  # noqa: BLE001 - a failed commit is retried like a failed handler
        return exc
    # The feed's position in memory moves in the page loop, once the commit is written.
    return None


def _committed(run: RunState, message_id: int, snapshots: tuple[SnapshotRecord, ...]) -> None:
    """What follows from the commit of ``message_id``'s position, once it is written."""
    run.rt.flusher.committed(run.key, message_id)
    run.snapshots_committed(snapshots)


def _sent_behind(
    run: RunState,
    message_id: int,
    ctx: HandlerContext,
    snapshots: tuple[SnapshotRecord, ...],
    *,
    started: float,
) -> bool:
    """Queue this commit to be written while the loop goes on (``_behind``); False when
    it cannot be (no writer runs, or the lease is gone: the commit made now says so)."""
    rt, key = run.rt, run.key
    pending = rt.submit(
        key,
        after=run.behind.last,
        encoded=ctx.emitted,
        metadata=ctx.emitted_metadata,
        positions={key: message_id},
        snapshots=snapshots,
    )
    if pending is None:
        return False
    landing = Landing(pending, message_id, ctx, started)
    landing.after.append(functools.partial(_committed, run, message_id, snapshots))
    run.behind.send(landing)
    return True
