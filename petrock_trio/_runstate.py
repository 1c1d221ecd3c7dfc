"""What one serving of a PatternWorker holds while it runs.

The loops (``_run``), an attempt (``_attempt``), settling a message (``_settle``),
periodic work (``_periodic``) and re-drives (``_redrive``) all work on this one
object; it holds data and the waits that graceful shutdown ends, nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ._behind import Behind
from ._errors import ConfigurationError
from ._message import Page
from ._metrics import MetricsRecorder
from ._partition import Coverage, partition_name, stable_hash
from ._runtime import Runtime, Stop
from ._snapshots import SnapshotKeeper, choose
from ._statecodec import restore
from ._stretch import Stretch
from ._worker import PatternWorker
from .stores import SnapshotRecord

__all__ = ["RunState"]

T = TypeVar("T")


class RunState:
    """A :class:`PatternWorker` being served: everything that changes while it runs."""

    def __init__(self, decl: PatternWorker[Any], rt: Runtime, partition: int = 0) -> None:
        self.decl = decl
        self.rt = rt
        # The worker's name (events, dead letters, idempotency keys), and the name this
        # run's position, retry state and lease are stored under (see _partition).
        self.name = decl.name
        self.partition = partition
        self.key = partition_name(decl.name, partition, decl.partitions)
        self.routes = decl.route_table
        self.state: Any = decl.take_state()
        # Trio's clock, read directly: trio.current_time() costs three calls, and the
        # message loop reads it twice a message.
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        self.recorder = MetricsRecorder()
        self.recorder.started_at = self.now()
        head = rt.log.head.value
        coverage = Coverage.of(decl.name, partition, decl.partitions, rt.saved_positions)
        self.coverage = attrs.evolve(
            coverage, low=min(coverage.low, head), high=min(coverage.high, head)
        )
        if self.coverage.low < self.coverage.high:
            keyless = sorted(n for n in decl.routes if decl.key_of(n) is None)
            if keyless:
                raise ConfigurationError(
                    f"worker {decl.name!r} was partitioned differently before: up to message "
                    f"{self.coverage.high}, what is done depends on each message's key, so "
                    f"{', '.join(map(repr, keyless))} needs its key= until then"
                )
        saved = rt.saved_positions.get(self.key, 0)
        # Replayed up to here, live after: what the store says this partition has
        # handled (between low and high, Coverage.done decides message by message).
        self.saved = self.coverage.high
        # Whether replay runs any handler: not when every route is live only (replay=False).
        self.replays = decl.replay and any(r.replay for r in decl.route_table.values())
        start = 0 if self.replays else self.coverage.low
        start = self._load_snapshot(start)
        self.feed = rt.pump.feed(self.key, decl.routes, start, decl.page_capacity)
        rt.flusher.feeds[self.key] = self.feed.position
        # Positions up to ``low`` are true already (see Coverage): not worth writing.
        rt.flusher.saved[self.key] = max(saved, self.coverage.low)
        self.report_completed = rt.wants_completed()
        self.lock = trio.Lock()
        self.replayed = trio.Event()
        self.replay_position = start
        self.live = False
        self.stopped = False
        self.crashed: str | None = None
        self.crashes = 0
        self.in_flight = 0
        self.retrying: tuple[int, int] | None = None
        self.periodic_runs = 0
        self.wait_scopes: set[trio.CancelScope] = set()
        # What its handler or periodic work runs now: (command name or "periodic",
        # message id, what, the coroutine), set by _attempt.call around the call. The
        # event-loop watchdog reads it from its thread (see executing).
        self.running: tuple[str, int | None, str, Awaitable[None]] | None = None
        # The stretch the message loop is in, if any: handler calls share its scope.
        self.stretch: Stretch | None = None
        # The commits the message loop has in flight while it goes on (see _behind).
        self.behind = Behind(rt, self.key)
        # Its last block of the event loop: (Trio time it was reported, reason).
        self.blocked: tuple[float, str] | None = None

    def _load_snapshot(self, start: int) -> int:
        """Load the latest usable snapshot into ``state``; where the feed starts then
        (``start`` without one: a full replay)."""
        policy = self.decl.snapshots
        self.snapshots = None if policy is None else SnapshotKeeper(policy, self.key, self.name)
        if self.snapshots is None or policy is None:
            return start
        # Never past what the store says is handled: replay must reach the saved position.
        limit = min(self.rt.saved_positions.get(self.key, 0), self.rt.log.head.value)
        records = self.rt.snapshots.get(self.key, ())
        found = choose(records, policy, limit=limit, worker_name=self.name)
        if found is None:
            return start
        record, state = found
        self.state = restore(self.state, state)
        self.snapshots.loaded(record)
        return max(start, record.position)

    def state_position(self) -> int:
        """The last message ``state`` reflects, between messages: the feed's position,
        or a row replayed after it in the page at hand (a stop can leave a page half
        done; after a change of partitions, replayed rows follow live ones)."""
        position: int = max(self.feed.position.value, self.replay_position)
        return position

    def snapshot_at(self, position: int) -> SnapshotRecord | None:
        """The snapshot a commit of ``position`` carries, if one is due: ``state`` must
        reflect every message of this run up to ``position`` and nothing after. None
        after a crash of the message loop: a page it left half done is handled again,
        so ``state`` may hold some of it twice, and must not be saved."""
        keeper = self.snapshots
        if keeper is None or self.crashes or not keeper.due(position):
            return None
        return keeper.record(self.state, position, self.rt.clock())

    def redrive_snapshot(self) -> dict[str, Any]:
        """What a re-drive's commit carries when this run takes snapshots: the message it
        handles again changed ``state`` behind every snapshot, so they go, and one of
        ``state`` as it is now, at the position in memory, takes their place."""
        keeper = self.snapshots
        if keeper is None:
            return {}
        position = self.state_position()
        keeper.forget()
        record = keeper.record(self.state, position, self.rt.clock())
        if record is None:
            return {"forget_snapshots": [self.key]}
        return {
            "forget_snapshots": [self.key],
            "snapshots": [record],
            "positions": {self.key: position},
        }

    def snapshots_committed(self, records: Sequence[SnapshotRecord]) -> None:
        if self.snapshots is not None:
            for record in records:
                self.snapshots.committed(record)

    def key_hash(self, page: Page, index: int) -> int | Exception:
        """The stable hash of the partition key of row ``index`` (computed once per page
        for all the worker's partitions), or why it has none: a row that does not
        decode, or a key function that failed (partition 0 dead-letters those)."""
        memo_key = (self.name, index)
        cached = page.memo.get(memo_key)
        if cached is None:
            try:
                message = page.message(index, self.rt.registry)
                key_fn = self.decl.key_of(message.name)
                assert key_fn is not None  # checked when the worker was registered
                cached = stable_hash(key_fn(message.command))
            except Exception as exc:  # noqa: BLE001 - bad input or a key bug: dead-lettered
                cached = exc
            page.memo[memo_key] = cached
        result: int | Exception = cached
        return result

    def own_rows(self, page: Page) -> list[int]:
        """Indexes of this partition's routed rows of ``page``, in id order: the first
        partition to see the page splits it for all of them, so that no partition
        walks the others' rows (with 64 partitions, 64 visits per message)."""
        memo_key = (self.name, "partitions")
        split: dict[int, list[int]] | None = page.memo.get(memo_key)
        if split is None:
            split = {}
            for index in page.routed(self.routes):
                split.setdefault(self.owner(self.key_hash(page, index)), []).append(index)
            page.memo[memo_key] = split
        return split.get(self.partition, [])

    def owner(self, key_hash: int | Exception) -> int:
        """The partition that handles a row with this key hash."""
        return 0 if isinstance(key_hash, Exception) else key_hash % self.decl.partitions

    def executing(self) -> tuple[str, int | None, str] | None:
        """(command name or "periodic", message id, what) if this run's handler or
        periodic work is executing on the Trio thread at this instant, not just
        awaiting. Safe to call from another thread: it only reads."""
        running = self.running
        if running is None or not getattr(running[3], "cr_running", False):
            return None
        return running[0], running[1], running[2]

    async def interruptible(self, wait: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await wait(*args)`` unless graceful shutdown starts, then raise Stop."""
        with trio.CancelScope() as scope:
            self.wait_scopes.add(scope)
            if self.rt.stopping.is_set():
                scope.cancel()
            try:
                return await wait(*args)
            finally:
                self.wait_scopes.discard(scope)
        raise Stop

    async def wait_to_retry(self, delay: float) -> None:
        """Sleep ``delay`` seconds without holding the lock (periodic work may run)."""
        self.lock.release()
        try:
            await self.interruptible(trio.sleep, delay)
        finally:
            # Even when cancelled: the caller's `async with` releases it again.
            with trio.CancelScope(shield=True):
                await self.lock.acquire()
