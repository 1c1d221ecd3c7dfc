"""Wall-clock time, kept as data only.

Durations, deadlines and rates are measured on Trio's clock so that MockClock controls
them; the wall clock only stamps messages and dead letters. Tests replace it with
:class:`TrioWallClock`, which derives wall time from Trio's clock.
"""

from __future__ import annotations

import time
from typing import Protocol

import attrs
import trio

__all__ = ["SystemClock", "TrioWallClock", "WallClock"]


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
