"""The state projection: feature state rebuilt from the log, then kept current by the pump."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from trio_util import AsyncValue

from ._logging import get_logger
from ._message import Message
from ._pump import Feed, LogPump
from ._runtime import Runtime

__all__ = ["Applier", "Projection"]

Applier = Callable[[Any, Any, Message], None]

_log = get_logger("petrock_trio.projection")


class Projection:
    """Applies every registered ``apply(state, cmd, message)`` in id order.

    At start it replays the whole log, so state is rebuilt the same way whether the
    commands came from this process or another one sharing the database.
    """

    name = "(state projection)"

    def __init__(self) -> None:
        self.appliers: dict[str, tuple[Applier, Any]] = {}
        self.feed: Feed | None = None
        self.errors = 0
        self._rt: Runtime | None = None
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        position = self.feed.position.value if self.feed else 0
        return (
            f"<Projection {len(self.appliers)} commands position={position} errors={self.errors}>"
        )

    @property
    def position(self) -> int:
        return self.feed.position.value if self.feed is not None else 0

    @property
    def position_value(self) -> AsyncValue[int]:
        assert self.feed is not None, "the projection is not running"
        return self.feed.position

    def prepare(self, pump: LogPump) -> Feed:
        """A new feed from the start of the log, for one serving."""
        self.feed = pump.feed(self.name, self.appliers, 0, capacity=64)
        return self.feed

    def bind(self, rt: Runtime) -> Projection:
        """Serve on ``rt`` (built around :meth:`prepare`'s feed); the projection is its
        own run."""
        self._rt = rt
        return self

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply pages as they come; started once the log as of start-up is applied.

        Never returns unless cancelled or stopped.
        """
        rt, feed = self._rt, self.feed
        assert rt is not None, "bind() first"
        assert feed is not None, "prepare() first"
        target = rt.log.head.value
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._apply_loop, rt, feed)
                await feed.position.wait_value(lambda p: p >= target)
                task_status.started()
        finally:
            feed.close()
            self._scope = None

    async def _apply_loop(self, rt: Runtime, feed: Feed) -> None:
        registry = rt.registry
        while True:
            page = await feed.next_page()
            for index in page.routed(self.appliers, after=feed.position.value):
                row = page.rows[index]
                try:
                    message = page.message(index, registry)
                    apply, state = self.appliers[row.name]
                    apply(state, message.command, message)
                except Exception as exc:  # noqa: BLE001 - one bad row must not stop state
                    self.errors += 1
                    _log.error(
                        "petrock.apply_failed",
                        command_type=row.name,
                        message_id=row.id,
                        error_details=repr(exc),
                    )
            feed.advance(page.last)
