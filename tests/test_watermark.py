"""The watermark: a position that only moves forward, and the waits for it to reach one."""

from __future__ import annotations

import trio
import trio.testing

from petrock_trio._watermark import Watermark


async def test_a_move_sets_the_events_it_reached_and_no_others() -> None:
    mark = Watermark(3)
    events = {position: trio.Event() for position in (2, 3, 5, 7)}
    for position, event in events.items():
        mark.set_when_reached(position, event)
    assert [p for p, e in events.items() if e.is_set()] == [2, 3]  # reached already
    mark.advance(6)
    assert [p for p, e in events.items() if e.is_set()] == [2, 3, 5]
    mark.advance(4)  # backwards: nothing moves
    assert mark.value == 6
    mark.advance(7)
    assert all(e.is_set() for e in events.values())


async def test_release_wakes_every_wait_and_any_made_after_it() -> None:
    mark = Watermark(0)
    before = trio.Event()
    mark.set_when_reached(10, before)
    results: list[bool] = []

    async def wait() -> None:
        results.append(await mark.reached(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        mark.release()
    assert before.is_set()
    assert results == [False]
    after = trio.Event()
    mark.set_when_reached(10, after)  # a commit that landed after the app stopped
    assert after.is_set()
    with trio.testing.assert_checkpoints():
        assert await mark.reached(10) is False  # told at once, not left waiting
    with trio.testing.assert_checkpoints():
        assert await mark.reached(0) is True


async def test_asyncvalue_waits_are_told_of_each_move() -> None:
    """wait_value, its edge waits and its transforms still see every move."""
    mark = Watermark(0)
    seen: list[object] = []

    async def level() -> None:
        seen.append(("level", await mark.wait_value(lambda v: v >= 5)))

    async def edge() -> None:
        seen.append(("edge", await mark.wait_transition(lambda new, old: new > old)))

    async def transform() -> None:
        with mark.open_transform(lambda v: v // 10) as tens:
            seen.append(("tens", await tens.wait_value(1)))

    async with trio.open_nursery() as nursery:
        for waiter in (level, edge, transform):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        mark.advance(3)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("edge", (3, 0))]
        mark.advance(12)
    assert sorted(map(str, seen)) == sorted(
        map(str, [("edge", (3, 0)), ("level", 12), ("tens", 1)])
    )
    assert mark.value == 12
