"""A paused worker's runs: the gate their message loop waits at, what follows the
controls while they run, and how a pause shows in their health.

The gate is checked before each live message and before each wait for a page (a
dictionary look-up, nothing more, while nobody pauses anything). At the gate the run
is *parked*: nothing of it moves, its position included, until it is resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from ._errors import WorkerPaused
from ._health import Health, HealthReport
from ._runstate import RunState
from ._runtime import Stop

__all__ = ["PAUSED", "follow_pause", "paused_health", "refuse_if_paused", "wait_at_gate"]

PAUSED: Final = HealthReport(Health.DEGRADED, ("paused by an operator",))


async def wait_at_gate(run: RunState, *, holding_lock: bool) -> None:
    """Wait while an operator has ``run``'s worker paused, parked; raise Stop at a
    graceful shutdown. With ``holding_lock``, the run's lock is let go meanwhile, as a
    retry's wait does, and taken again before returning."""
    controls = run.rt.controls
    controls.park(run.key, parked=True)
    try:
        if holding_lock:
            run.lock.release()
        try:
            await run.interruptible(controls.wait_resumed, run.name)
        finally:
            if holding_lock:
                # Even when cancelled: the caller's `async with` releases it again.
                with trio.CancelScope(shield=True):
                    await run.lock.acquire()
    finally:
        controls.park(run.key, parked=False)


async def follow_pause(run: RunState, page_wait: Callable[[], trio.CancelScope | None]) -> None:
    """While ``run`` runs (live): when its worker is paused while its loop waits for a
    page with nothing in hand, end that wait, so that the loop parks at the gate and
    the pump no longer moves its position past messages it does not route. Ending it
    then takes no page (the feed's channel gives one up only to a receive that
    returns). Returns at a graceful shutdown."""
    controls = run.rt.controls

    def paused(_: int) -> bool:
        return controls.paused(run.name)

    controls.run_started(run.key, run.name)  # a run of this process: resets wait for it
    try:
        await run.interruptible(run.replayed.wait)
        while True:
            await run.interruptible(controls.version.wait_value, paused)
            scope = page_wait()
            if scope is not None and run.feed.idle:
                scope.cancel()
            await run.interruptible(controls.wait_resumed, run.name)
    except Stop:
        return


def paused_health(run: RunState, report: HealthReport) -> HealthReport:
    """``report``, degraded at least while the worker is paused (its lag is expected
    then, and judged by the caller as nothing)."""
    if not run.rt.controls.paused(run.name):
        return report
    return HealthReport.worst([report, PAUSED])


def refuse_if_paused(run: RunState, what: str) -> None:
    """Raise :class:`WorkerPaused` if ``run``'s worker is paused (asked to ``what``)."""
    if run.rt.controls.paused(run.name):
        raise WorkerPaused(
            f"worker {run.name!r} is paused by an operator: resume it to {what}", worker=run.name
        )
