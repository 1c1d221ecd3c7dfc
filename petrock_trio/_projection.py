"""The state projection: feature state rebuilt from the log, then kept current by the pump.

With ``App(snapshot_every=N)`` the states it keeps are saved every ``N`` messages
(under ``petrock:projection``), and a start loads the latest such snapshot and
applies only what came after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio
from trio_util import AsyncValue

from ._errors import ConfigurationError, PetrockError
from ._logging import get_logger
from ._message import Message
from ._pump import Feed, LogPump
from ._runtime import Runtime
from ._snapshots import PROJECTION, SnapshotKeeper, SnapshotOptions, SnapshotPolicy, choose
from ._statecodec import StateCodec, StatesCodec, in_place, restore
from .stores import SnapshotRecord

__all__ = ["Applier", "Projection"]

Applier = Callable[[Any, Any, Message], None]

_log = get_logger("petrock_trio.projection")


class Projection:
    """Applies every registered ``apply(state, cmd, message)`` in id order.

    At start it replays the log (from its latest snapshot, if it takes them), so state
    is rebuilt the same way whether the commands came from this process or another one
    sharing the database. With no apply function it reads nothing.
    """

    name = "(state projection)"

    def __init__(self, *, snapshot_every: int | None = None, state_version: str = "1") -> None:
        self.appliers: dict[str, tuple[Applier, Any]] = {}
        self.snapshot_options = SnapshotOptions.checked(snapshot_every, None, state_version)
        # Each distinct state object once, in the order registered (id -> codec).
        self._codecs: dict[int, tuple[Any, StateCodec]] = {}
        self.snapshots: SnapshotKeeper | None = None
        self.feed: Feed | None = None
        self.errors = 0
        self._rt: Runtime | None = None
        self._scope: trio.CancelScope | None = None
        self._saving = False

    def __repr__(self) -> str:
        position = self.feed.position.value if self.feed else 0
        return (
            f"<Projection {len(self.appliers)} commands position={position} errors={self.errors}>"
        )

    def add(self, name: str, apply: Applier, state: Any) -> None:
        """Apply ``apply(state, cmd, message)`` to commands called ``name``.

        With snapshots, ``state`` must encode (:class:`ConfigurationError` naming what
        does not) and be restorable in place: the application holds it.
        """
        if self.snapshot_options.every is not None and id(state) not in self._codecs:
            owner = f"the state projection (the state of {name!r})"
            codec = StateCodec.checked(state, owner=owner)
            if not in_place(state):
                raise ConfigurationError(
                    f"{owner} takes snapshots, but a {type(state).__qualname__} cannot be "
                    "restored in place: use an attrs class, a dict, a list or a set"
                )
            self._codecs[id(state)] = (state, codec)
        self.appliers[name] = (apply, state)

    @property
    def position(self) -> int:
        return self.feed.position.value if self.feed is not None else 0

    @property
    def position_value(self) -> AsyncValue[int]:
        assert self.feed is not None, "the projection is not running"
        return self.feed.position

    def _states(self) -> list[Any]:
        return [state for state, _ in self._codecs.values()]

    def _policy(self) -> SnapshotPolicy | None:
        options = self.snapshot_options
        if options.every is None or not self._codecs:
            return None
        codec = StatesCodec([codec for _, codec in self._codecs.values()])
        return SnapshotPolicy(codec, options.version, options.every)

    def prepare(
        self, pump: LogPump, *, head: int = 0, snapshots: Sequence[SnapshotRecord] = ()
    ) -> Feed:
        """A new feed for one serving: from the latest usable snapshot's position (its
        states restored in place), from the start of the log without one, from ``head``
        when there is nothing to apply."""
        start = 0 if self.appliers else head
        policy = self._policy()
        self.snapshots = None if policy is None else SnapshotKeeper(policy, PROJECTION, self.name)
        if self.snapshots is not None and policy is not None:
            found = choose(snapshots, policy, limit=head, worker_name=self.name)
            if found is not None:
                record, states = found
                for target, loaded in zip(self._states(), states, strict=True):
                    restore(target, loaded)
                self.snapshots.loaded(record)
                start = record.position
        self.feed = pump.feed(self.name, self.appliers, start, capacity=64)
        return self.feed

    def bind(self, rt: Runtime) -> Projection:
        """Serve on ``rt`` (built around :meth:`prepare`'s feed); the projection is its
        own run."""
        self._rt = rt
        return self

    def describe(self) -> dict[str, Any]:
        """What inspect shows: position, apply errors, the latest snapshot."""
        keeper, rt = self.snapshots, self._rt
        snapshot = None if keeper is None or rt is None else keeper.describe(rt.clock())
        return {"position": self.position, "errors": self.errors, "snapshot": snapshot}

    async def save_now(self) -> None:
        """At graceful shutdown: a snapshot of what was applied since the last, so that
        a graceful restart applies nothing again (when the projection takes them)."""
        keeper, rt, feed = self.snapshots, self._rt, self.feed
        if keeper is None or rt is None or feed is None or self._saving:
            await trio.lowlevel.checkpoint()
            return
        position = feed.position.value
        record = None
        if position > keeper.tried:
            record = keeper.record(self._states(), position, rt.clock())
        if record is None:
            await trio.lowlevel.checkpoint()
            return
        self._saving = True
        await self._save(rt, keeper, record)

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
                nursery.start_soon(self._apply_loop, rt, feed, nursery)
                await feed.position.wait_value(lambda p: p >= target)
                task_status.started()
        finally:
            feed.close()
            self._scope = None

    async def _apply_loop(self, rt: Runtime, feed: Feed, nursery: trio.Nursery) -> None:
        registry = rt.registry
        keeper = self.snapshots
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
                        exc_info=exc,
                    )
            feed.advance(page.last)
            if keeper is not None and not self._saving and keeper.due(page.last):
                # Encoded here, between pages: the states as of ``page.last``. Written
                # beside the applying, which does not wait for the disk.
                record = keeper.record(self._states(), page.last, rt.clock())
                if record is not None:
                    self._saving = True
                    nursery.start_soon(self._save, rt, keeper, record)

    async def _save(self, rt: Runtime, keeper: SnapshotKeeper, record: SnapshotRecord) -> None:
        """Write ``record``, then the next one if it came due meanwhile (pages applied
        while this one was written): the latest is never left behind by a burst."""
        feed = self.feed
        try:
            while True:
                try:
                    await rt.log.commit(rt.log.new_commit(snapshots=[record]))
                except PetrockError as exc:
                    # The log has everything: the next one is due all the same.
                    _log.warning(
                        "petrock.snapshot_not_saved",
                        worker_name=self.name,
                        snapshot=record.name,
                        position=record.position,
                        error_details=repr(exc),
                        exc_info=exc,
                    )
                    return
                keeper.committed(record)
                # Between pages here (applying never awaits inside one): the states are
                # those of the feed's position.
                position = feed.position.value if feed is not None else 0
                if not keeper.due(position):
                    return
                next_record = keeper.record(self._states(), position, rt.clock())
                if next_record is None:
                    return
                record = next_record
        finally:
            self._saving = False
