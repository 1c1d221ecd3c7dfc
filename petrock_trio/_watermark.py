"""A position that only moves forward, and cheap waits for it to reach a message.

Every ``execute`` waits for the state projection to apply the command it appended.
``AsyncValue.wait_value`` makes a predicate, a result and a parking lot for each wait,
and checks every predicate at every move; with the cancel scope each caller entered
to be told that the app stopped, that was half of what an ``execute`` with 100
callers cost. Here a wait is one ``trio.Event`` in a heap by position: a move sets
the events it reached, in order, and :meth:`Watermark.release` wakes the rest when
the app stops. Kept beside trio_util's ``AsyncValue`` (this is one), whose other waits
(``wait_value``, ``caught_up()``) it keeps as they are.
"""

from __future__ import annotations

import heapq
import itertools

import trio
from trio_util import AsyncValue

__all__ = ["Watermark"]


# trio_util ships no types: AsyncValue is Any to the type checker, the value an int.
class Watermark(AsyncValue[int]):  # type: ignore[misc]
    """The last message id a subscriber has handled (a feed's position)."""

    value: int  # AsyncValue's property, read and set as ever
    _value: int  # what it holds (AsyncValue's attribute)

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self._waiting: list[tuple[int, int, trio.Event]] = []
        self._serial = itertools.count()  # ties in the heap: never compare events
        self._released = False

    def advance(self, position: int) -> None:
        """Move to ``position`` if that is forward; wake the waits it reached."""
        if position <= self._value:
            return
        if self._level_results or self._edge_results or self._transforms:
            self.value = position  # AsyncValue's own waits (wait_value) are told
        else:
            # Nobody waits through AsyncValue: its setter would look through its three
            # tables of waits for nothing, a microsecond a message for a feed's
            # position (trio_util's own attributes; tests/test_watermark.py pins them).
            self._value = position
        waiting = self._waiting
        while waiting and waiting[0][0] <= position:
            heapq.heappop(waiting)[2].set()

    def set_when_reached(self, position: int, event: trio.Event) -> None:
        """Set ``event`` once the value is at least ``position`` (at once if it is, or
        if :meth:`release` came first): a wait with no task parked for it yet."""
        if self.value >= position or self._released:
            event.set()
        else:
            heapq.heappush(self._waiting, (position, next(self._serial), event))

    async def reached(self, position: int) -> bool:
        """Wait until the value is at least ``position``: True, or False when
        :meth:`release` woke the wait first. A checkpoint either way."""
        if self.value >= position or self._released:
            await trio.lowlevel.checkpoint()
            return self.value >= position
        event = trio.Event()
        # A wait cancelled meanwhile leaves its event behind: set when reached, or at
        # release, and forgotten then.
        self.set_when_reached(position, event)
        await event.wait()
        return self.value >= position

    def release(self) -> None:
        """Wake every wait now (nothing will move this position any more)."""
        self._released = True
        waiting, self._waiting = self._waiting, []
        for _, _, event in waiting:
            event.set()
