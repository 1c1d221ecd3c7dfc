"""One serving of a PatternWorker: its state, position, metrics, and its loops.

``WorkerRun.run`` replays, then starts the live loops, each one job: the message
loop (pages in id order; replay up to the saved position, then each live message
settled by ``_settle``), periodic work (``_periodic``) and re-drives
(``_redrive``). Handlers and periodic work take turns under one lock, so they share
``state`` without locks of their own.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

import trio

from . import _tracing
from ._attempt import handle
from ._behind import Unlanded
from ._context import HandlerContext
from ._errors import ConfigurationError, NotRunning
from ._events import Replayed, WorkerCrashed
from ._group import WorkerStatistics
from ._health import HealthReport, Signals, judge
from ._logging import get_logger
from ._message import Page
from ._metrics import WorkerMetrics, lag_seconds
from ._pause import follow_pause, paused_health, refuse_if_paused, wait_at_gate
from ._periodic import periodic_loop, periodic_once
from ._redrive import RedriveRequest, RedriveTicket, redrive_loop
from ._retry import Backoff
from ._runstate import RunState
from ._runtime import Runtime, Stop
from ._settle import dead_letter, settle
from ._snapshot_loop import snapshot_loop, take_snapshot
from ._stretch import Overran, Stretch
from ._worker import PatternWorker

__all__ = ["WorkerRun"]

_log = get_logger("petrock_trio.worker")

T = TypeVar("T")

# A crashed message loop (an engine bug, not a handler error) restarts after this.
_CRASH_BACKOFF = Backoff(initial=1.0, max_delay=60.0)


class WorkerRun(RunState):
    """One serving of a :class:`PatternWorker`: its loops, and what it shows."""

    def __init__(self, decl: PatternWorker[Any], rt: Runtime, partition: int = 0) -> None:
        super().__init__(decl, rt, partition)
        self._redrives: trio.MemorySendChannel[RedriveRequest] | None = None
        self.recorder.totals = rt.totals.of(self.name)
        # The page it handles, or last handled: what its lag in seconds is read from.
        self.page: Page | None = None
        # Around its wait for the next page: a pause ends the wait (see _pause).
        self.page_wait: trio.CancelScope | None = None
        decl.attach(self)

    def __repr__(self) -> str:
        retrying = f" retrying={self.retrying[0]}" if self.retrying else ""
        return (
            f"<WorkerRun {self.key!r} position={self.position} saved={self.saved} "
            f"live={self.live} in_flight={self.in_flight}{retrying}>"
        )

    # --- observation -----------------------------------------------------------------

    @property
    def position(self) -> int:
        position: int = self.feed.position.value
        return position

    def metrics(self) -> WorkerMetrics:
        position, head = self.position, self.rt.log.head.value
        lag = lag_seconds(position, head, self.rt.clock(), self.page, self.rt.pump.recent_page)
        return self.recorder.snapshot(position=position, head=head, lag_seconds=lag)

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            running=not self.stopped,
            live=self.live,
            position=self.position,
            in_flight=self.in_flight,
            retrying_message=self.retrying[0] if self.retrying else None,
            retry_attempt=self.retrying[1] if self.retrying else 0,
            detaches=self.feed.detaches,
            crashes=self.crashes,
        )

    def health(self) -> HealthReport:
        if self.stopped:
            return judge(Signals(crashed=self.crashed), self.decl.thresholds)
        now = trio.current_time()
        last = self.recorder.last_dead_letter_at
        blocked = self.blocked
        paused = self.rt.controls.paused(self.name)
        signals = Signals(
            crashed=self.crashed,
            errors_per_minute=self.recorder.rates(now)[1],
            dead_letter_age=None if last is None else now - last,
            unavailable=tuple(s.name for s in self.decl.services if not s.available),
            # While paused, lag is expected: the pause itself degrades it.
            lag=0 if paused else max(0, self.rt.log.head.value - self.position),
            retrying=self.retrying,
            blocked=None if blocked is None else (now - blocked[0], blocked[1]),
        )
        return paused_health(self, judge(signals, self.decl.thresholds))

    def replay_progress(self) -> tuple[int, int]:
        """(replayed up to, replay target): start-up progress."""
        return (self.saved if self.replayed.is_set() else self.replay_position), self.saved

    def describe(self) -> dict[str, Any]:
        """This partition as inspect shows it."""
        leases, keeper = self.rt.leases, self.snapshots
        position = self.position
        return {
            "partition": self.partition,
            "name": self.key,
            "position": position,
            "lag": max(0, self.rt.log.head.value - position),
            "holder": leases.holder if leases is not None else None,
            "health": self.health().to_dict(),
            "in_flight": self.in_flight,
            "retrying_message": self.retrying[0] if self.retrying else None,
            "snapshot": None if keeper is None else keeper.describe(self.rt.clock()),
        }

    # --- running ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replay, then handle live; never returns unless cancelled or stopped.

        ``task_status.started()`` once replay is done: live work, retries and waits
        for services come after.

        Error handling: handler errors are retried and dead-lettered, never raised. An
        unexpected error in the engine's own loop marks the worker unhealthy, is logged,
        and the loop restarts after a backoff from the last committed point.
        """
        send, receive = trio.open_memory_channel[RedriveRequest](64)
        self._redrives = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow_pause, self, lambda: self.page_wait)
                nursery.start_soon(self._supervise)
                nursery.start_soon(self._watch_replay)
                if self.snapshots is not None:
                    nursery.start_soon(snapshot_loop, self, self.snapshots)
                await self.replayed.wait()
                self.live = True
                if self.decl.periodic is not None:
                    nursery.start_soon(periodic_loop, self, self.decl.periodic)
                nursery.start_soon(redrive_loop, self, receive)
                task_status.started()
                await self.rt.stopping.wait()
                # Waits end at once; a running handler or periodic run finishes first
                # (serve cancels everything when the grace period runs out).
                self.stop()
        finally:
            self.live = False
            self.stopped = True
            self.stop()
            self.rt.controls.leave(self.key)
            if self.decl.partitions > 1 and not self.rt.stopping.is_set():
                # A partition that stops while the app goes on (a lost lease) is no
                # longer this process's to show; after a shutdown, the last runs stay.
                self.decl.detach(self)

    async def _watch_replay(self) -> None:
        # Replay is also done when the pump moves the feed past the saved position
        # without a routed message left to replay. A stop ends the watch: a partition
        # behind its siblings' highest saved position may never get there once its feed
        # is closed, and the run's nursery would wait for the watch until cancelled.
        with contextlib.suppress(Stop):
            await self.interruptible(self.feed.position.wait_value, lambda p: p >= self.saved)
        self.replayed.set()

    def stop(self) -> None:
        """Interrupt waits (never running handlers) for graceful shutdown."""
        for scope in self.wait_scopes:
            scope.cancel()
        self.feed.close()
        if self._redrives is not None:
            self._redrives.close()
        self.replayed.set()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._message_loop()
            except Stop:
                return
            except Exception as exc:  # noqa: BLE001 - an engine bug must not take the app down silently
                self.crashes += 1
                self.crashed = repr(exc)
                delay = _CRASH_BACKOFF.delay(min(self.crashes, 10))
                self.rt.report(WorkerCrashed(self.name, exc, delay))
                with contextlib.suppress(Unlanded):
                    # Where to start again: after it, if the commit in flight was written.
                    await self.behind.land()
                self.feed.rewind()
            else:
                return
            try:
                await self.interruptible(trio.sleep, delay)
            except Stop:
                return
            self.crashed = None

    async def _message_loop(self) -> None:
        feed = self.feed
        controls = self.rt.controls
        while True:
            if self.replayed.is_set() and controls.paused(self.name):
                await wait_at_gate(self, holding_lock=False)
            # Graceful shutdown closes the feed (see stop): EndOfChannel. A pause ends a
            # wait with nothing in hand (see _pause), and no page is taken then.
            with trio.CancelScope() as self.page_wait:
                try:
                    self.page = page = await feed.next_page()
                except trio.EndOfChannel:
                    return
            if self.page_wait.cancelled_caught:
                continue
            async with self.lock:
                page = await self._handle_page(page)
            feed.advance(page.last)
            self.rt.flusher.touch()

    async def _handle_page(self, page: Page) -> Page:
        """Handle the routed rows of ``page`` after the feed's position, in id order:
        this partition's rows only, replayed while the stored positions say they are
        done, live after. Their handlers run in stretches (``_stretch``): one cancel
        scope for many, each handler's deadline exact.

        With commits in flight at its end (``commit_behind``), the pages queued behind
        it in the feed are handled on in the same stretch instead of waiting for them
        to be written (up to a page's worth of this run's rows): a partition has a few
        rows a page. The last page handled is returned; the feed's position moves
        past each page once the commits of its rows are written."""
        entries = self._own_rows(page, self.feed.position.value)
        # Traced attempts each run in a span of their own, which a stretch would outlive.
        shared = _tracing.ACTIVE is None
        done = 0
        while True:
            resumed: Overran | Unlanded | None = None
            with trio.CancelScope() as scope:
                stretch = self.stretch = Stretch(scope) if shared else None
                try:
                    while True:
                        while done < len(entries):
                            await self._handle_row(*entries[done])
                            done += 1
                            if stretch is not None:
                                await stretch.between()
                        queued = self._queued_page(page, len(entries))
                        if queued is None:
                            break
                        self.behind.when_landed(self.feed.advance, page.last)
                        entries += self._own_rows(queued, page.last)
                        self.page = page = queued
                    await self.behind.land()
                except (Overran, Unlanded) as exc:
                    resumed = exc
                finally:
                    self.stretch = None
            if resumed is None:
                return page
            done = await self._resume(entries, done, resumed)

    def _own_rows(self, page: Page, after: int) -> list[tuple[Page, int]]:
        """(page, index) of each row of ``page`` after ``after`` that this run handles."""
        if self.decl.partitions > 1:
            # This partition's rows only: the page is split once for all partitions.
            indexes = [i for i in self.own_rows(page) if page.rows[i].id > after]
        else:
            indexes = list(page.routed(self.routes, after=after))
        return [(page, i) for i in indexes]

    def _queued_page(self, page: Page, rows: int) -> Page | None:
        """The page after ``page`` if the feed has it at hand and commits are in flight."""
        if not self.behind.landings or rows >= self.rt.pump.page_size:
            return None
        return self.feed.queued(page.last)

    async def _resume(
        self, entries: list[tuple[Page, int]], done: int, resumed: Overran | Unlanded
    ) -> int:
        """Outside the stretch: a message goes on from its attempt's outcome, that of a
        handler whose deadline spent the stretch or of a commit that failed behind the
        loop (then the messages after it are handled again). Where the rows go on."""
        while True:
            if isinstance(resumed, Unlanded):
                failed = resumed.landing.message_id
                done = next(d for d, (p, i) in enumerate(entries) if p.rows[i].id == failed)
                overran = resumed.resumption()
                if overran is None:
                    return done  # not written only for the one before: handled again
                resumed = overran
            try:
                await self._handle_row(*entries[done], resumed)
                await self.behind.land()
            except Unlanded as exc:
                resumed = exc
            else:
                return done + 1

    async def _handle_row(self, page: Page, index: int, overran: Overran | None = None) -> None:
        """One routed row of ``page``; with ``overran``, the rest of its handling after a
        stretch its handler's deadline spent, or its commit failed behind the loop (its
        outcome is settled, shutdown or not)."""
        if overran is None and self.rt.stopping.is_set():
            await self.behind.land()
            raise Stop
        row = page.rows[index]
        coverage = self.coverage
        key_hash: int | Exception = 0
        if self.decl.partitions > 1 or coverage.low < row.id <= coverage.high:
            # After a change of partitions, whether a row is done depends on its key.
            key_hash = self.key_hash(page, index)
        if coverage.done(row.id, 0 if isinstance(key_hash, Exception) else key_hash):
            # Never twice in a run: the loop can come back over rows it replayed (a
            # commit that failed behind it, a crash of the loop), state has them.
            if self.replays and row.id > self.replay_position:
                await self._replay_one(page, index, overran)
            elif self.stretch is None:
                await trio.lowlevel.checkpoint()
            self.replay_position = max(self.replay_position, row.id)
            return
        self.replayed.set()
        if overran is None and self.rt.controls.paused(self.name):
            await self.behind.land()
            await wait_at_gate(self, holding_lock=True)
        if isinstance(key_hash, Exception):
            await dead_letter(self, row, key_hash, attempts=1, first_failed_at=self.rt.clock())
        else:
            await settle(self, page, index, resumed=overran)
        # A message handled live has its position committed (see _attempt); in
        # memory it moves here for batched workers too, once its commit is written.
        self.behind.when_landed(self.feed.advance, row.id)

    async def _replay_one(self, page: Page, index: int, overran: Overran | None) -> None:
        rt = self.rt
        row = page.rows[index]
        if not self.routes[row.name].replay:
            await trio.lowlevel.checkpoint()
            return  # a live-only route: its effects happened when it was live
        if row.id in rt.dead_letter_ids.get(self.name, ()) or rt.controls.is_discarded(
            self.name, row.id
        ):
            await trio.lowlevel.checkpoint()
            return  # it never took effect live, so it does not take effect in replay
        try:
            message = page.message(index, rt.registry)
        except Exception:  # noqa: BLE001 - a bad row was dead-lettered when it was live
            return
        if overran is not None:
            await trio.lowlevel.checkpoint_if_cancelled()  # as in settle
            started, error = overran.started, overran.outcome
        else:
            ctx = HandlerContext(rt, self.name, message, is_replay=True, attempt=1)
            started = trio.current_time()
            try:
                error = await handle(self, ctx, started=started, what="replay of")
            except Overran as exc:
                exc.started = started
                raise
        self.recorder.replay()
        if rt.hooks:
            rt.report(Replayed(self.name, message, trio.current_time() - started, error))

    # --- operator verbs ----------------------------------------------------------------

    async def run_periodic_now(self) -> None:
        periodic = self.decl.periodic
        if periodic is None or self.stopped:
            raise NotRunning(f"worker {self.name!r} is not running or has no periodic work")
        refuse_if_paused(self, "run its periodic work")
        self.periodic_runs += 1
        async with self.lock:
            await periodic_once(self, periodic, self.periodic_runs)

    async def owner_of(self, message_id: int) -> int:
        """The partition of this worker that handles ``message_id``."""
        if self.decl.partitions == 1:
            await trio.lowlevel.checkpoint()
            return 0
        rows = await self.rt.log.store.read_after(message_id - 1, 1)
        if not rows or rows[0].id != message_id:
            raise LookupError(f"message {message_id} is not in the log")
        page = Page(message_id - 1, message_id, rows[:1])
        return self.owner(self.key_hash(page, 0))

    async def redrive(self, message_id: int, ticket: RedriveTicket | None = None) -> None:
        """Handle a dead-lettered message again, live; returns when it is done
        (``ticket`` says when it starts running)."""
        if self._redrives is None:
            raise NotRunning(f"worker {self.name!r} is not running")
        request = RedriveRequest(message_id, ticket)
        try:
            await self._redrives.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise NotRunning(f"worker {self.name!r} is stopping") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error

    # --- snapshots -----------------------------------------------------------------------

    async def snapshot_now(self) -> dict[str, Any]:
        """Save ``state`` now, after the message in hand; the snapshot as inspect shows
        it. A message waiting to retry may have left ``state`` half changed: its commit
        takes the snapshot instead, once it succeeds (``"pending": true``)."""
        keeper = self.snapshots
        if keeper is None:
            raise ConfigurationError(
                f"worker {self.name!r} takes no snapshots: declare snapshot_every= or "
                "snapshot_interval="
            )
        if self.stopped:
            raise NotRunning(f"worker {self.name!r} is not running")
        async with self.lock:
            keeper.requested = True
            pending = self.retrying is not None
            if not pending:
                await take_snapshot(self, keeper, quiet=False)
        return {**keeper.describe(self.rt.clock()), "partition": self.partition, "pending": pending}
