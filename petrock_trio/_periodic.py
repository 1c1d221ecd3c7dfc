"""Periodic work: one loop per worker run, each run under its own deadline.

A run's emits commit after the run returns, outside its deadline: a slow commit is
not a timed-out run. A run that fails or is cut off by its deadline still commits what
it emitted before: each emit is a result the run already has (a summary paid for, a
report computed), and a periodic run is not retried with the same inputs, so throwing
them away would only make the next run do that work again.
"""

from __future__ import annotations

import trio

from ._attempt import call
from ._context import PeriodicContext
from ._errors import HandlerTimeout, LeaseLost
from ._events import PeriodicCompleted, PeriodicFailed, PeriodicSkipped
from ._runstate import RunState
from ._runtime import Stop
from ._worker import Periodic

__all__ = ["periodic_loop", "periodic_once"]


async def periodic_loop(run: RunState, periodic: Periodic) -> None:
    """Run ``periodic`` every ``interval`` seconds until graceful shutdown.

    Later runs start ``interval`` seconds after the previous start; a run that
    overruns delays the next one (never overlapping it), and missed starts are skipped,
    as are the starts that come while an operator has the worker paused.
    """
    next_at = trio.current_time()
    while not run.rt.stopping.is_set():
        try:
            await run.interruptible(trio.sleep_until, next_at)
        except Stop:
            return
        started = trio.current_time()
        unavailable = [s.name for s in run.decl.services if not s.available]
        if run.rt.controls.paused(run.name):
            pass  # a worker paused by an operator does nothing, periodic work included
        elif unavailable:
            run.recorder.periodic_skip()
            run.rt.report(PeriodicSkipped(run.name, tuple(unavailable)))
        else:
            run.periodic_runs += 1
            async with run.lock:
                await periodic_once(run, periodic, run.periodic_runs)
        next_at = started + periodic.interval
        now = trio.current_time()
        while next_at < now:
            next_at += periodic.interval


async def periodic_once(run: RunState, periodic: Periodic, number: int) -> None:
    rt = run.rt
    if rt.leases is not None:
        await rt.leases.ensure(run.key)
    ctx = PeriodicContext(rt, run.name, number, partition=run.partition)
    started = trio.current_time()
    limit = run.decl.periodic_limit()
    error = await call(
        periodic.work,
        ctx,
        run.state,
        deadline=started + limit,
        limit=limit,
        what="periodic work",
        run=run,
        command_type="periodic",
    )
    timed_out = isinstance(error, HandlerTimeout)
    if ctx.emitted:
        try:
            await rt.commit_validated(run.key, ctx.to_validate, encoded=ctx.emitted)
        except LeaseLost:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed commit fails the run
            error = error or exc
    now = trio.current_time()
    run.recorder.periodic_run(now - started, error)
    if error is None:
        rt.report(PeriodicCompleted(run.name, number, now - started, tuple(ctx.emitted)))
        return
    run.recorder.failure(now, repr(error), timeout=timed_out)
    rt.report(PeriodicFailed(run.name, number, now - started, error, timed_out))
