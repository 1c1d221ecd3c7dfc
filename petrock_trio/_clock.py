"""Wall-clock time, kept as data only.

Durations, deadlines and rates are measured on Trio's clock so that MockClock controls
them; the wall clock only stamps messages and dead letters. Tests replace it with
:class:`TrioWallClock`, which derives wall time from Trio's clock; an app given no
clock does so by itself while Trio runs on a MockClock (:func:`default_clock`).
"""

from __future__ import annotations

import sys
import time
from typing import Protocol

import attrs
import trio

__all__ = ["SystemClock", "TrioWallClock", "WallClock", "default_clock", "for_this_run"]


class WallClock(Protocol):
    def __call__(self) -> float:
        """Seconds since the Unix epoch."""
        ...


def SystemClock() -> float:  # noqa: N802 - a clock instance, named like one
    """The operating system's wall clock."""
    return time.time()


@attrs.define
class TrioWallClock:
    """Wall time that moves with Trio's clock: ``epoch`` at Trio time zero.

    Under MockClock this makes timestamps, ages and 24-hour cut-offs exact.
    """

    epoch: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.epoch + trio.current_time()


_VIRTUAL = TrioWallClock()


def default_clock() -> float:
    """The system's wall clock, or, while Trio runs on a ``trio.testing.MockClock``,
    wall time that moves with it (a :class:`TrioWallClock` at its default epoch).

    Stored wall times (a retry's due time, a lease's expiry) are compared with Trio's
    durations: system time under a MockClock makes a resumed backoff wait its whole
    delay again, and a lease that should expire in seconds outlast hours of virtual
    time. An app given no clock therefore follows the clock the test drives.
    """
    return _VIRTUAL() if _mock_clock_running() else time.time()


def for_this_run(clock: WallClock) -> WallClock:
    """``clock`` as the Trio run that calls this may keep it: :func:`default_clock`
    decided once (a run's clock never changes), for it asks Trio at every call
    (about a microsecond, once a command ``execute`` appends); any other clock as it is."""
    if clock is not default_clock:
        return clock
    return _VIRTUAL if _mock_clock_running() else SystemClock


def _mock_clock_running() -> bool:
    testing = sys.modules.get("trio.testing")
    if testing is None:  # no MockClock exists before trio.testing is imported
        return False
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not in Trio (another thread, or no run at all)
        return False
    return isinstance(clock, testing.MockClock)
