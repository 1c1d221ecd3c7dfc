"""The wall clock an app given none keeps: the system's, or the MockClock's wall time."""

from __future__ import annotations

import time

import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._clock import default_clock, for_this_run


async def test_under_a_mock_clock_a_run_keeps_wall_time_that_moves_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = for_this_run(default_clock)
    before = clock()
    assert before == default_clock() == pt.TrioWallClock()()
    await trio.sleep(3600)
    assert clock() - before == 3600


def test_under_the_system_clock_a_run_keeps_the_system_clock() -> None:
    async def main() -> pt.WallClock:
        return for_this_run(default_clock)

    clock = trio.run(main)
    assert clock is pt.SystemClock
    assert abs(clock() - time.time()) < 60


def test_a_clock_of_the_apps_own_is_kept() -> None:
    mine = pt.TrioWallClock(epoch=5.0)
    assert for_this_run(mine) is mine
