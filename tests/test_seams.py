"""Regression tests for defects at the seams of the engine, through the public API only.

Each section covers one defect found on 625a5af; a comment names the tests that failed
there and how.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio._behind import DEPTH
from petrock_trio.testing import (
    FakeService,
    FakeServiceError,
    memory_database,
    serving,
    worker_harness,
)

# --- commands ------------------------------------------------------------------------


@pt.command("seams/add")
@attrs.frozen
class Add:
    n: int


@pt.command("seams/note")
@attrs.frozen
class Note:
    n: int = 0


@pt.command("seams/ask")
@attrs.frozen
class Ask:
    n: int


@pt.command("seams/answer")
@attrs.frozen
class Answer:
    n: int


@pt.command("seams/tick")
@attrs.frozen
class Tick:
    run: int


@pt.command("seams/sign-up")
@attrs.frozen
class SignUp:
    name: str


@pt.command("seams/create-user")
@attrs.frozen
class CreateUser:
    name: str

    def validate(self, state: Any) -> None:
        if self.name in state.users:
            raise pt.ValidationError(f"{self.name!r} is taken", command_name="seams/create-user")


class Fatal(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


# --- helpers -------------------------------------------------------------------------


def serve_quietly(app: pt.App) -> Callable[..., Any]:
    """``serve`` for ``nursery.start``, leaving signals to the test runner."""
    return functools.partial(pt.serve, app, handle_signals=False)


async def logged(app: pt.App, name: str) -> list[Any]:
    """The commands called ``name`` in the app's log, decoded, in order."""
    return [m.command for m in await app.log.read_after(0, limit=100_000) if m.name == name]


def circuit(service: pt.ExternalService) -> pt.Circuit:
    return service.circuit  # read afresh: it changes with the clock and the calls


@pytest.fixture
def file_clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Virtual time for a real file: jump only after 50 ms of real quiet (thread hops)."""
    mock_clock.autojump_threshold = 0.05
    return mock_clock


# --- defect 1 --------------------------------------------------------------------------


# On 625a5af (defect 1) an idle feed moved past a page it was offered before its
# subscriber ran: the in-memory store lost routed messages with pages of 1 and 2.
PAGE_SIZES = [
    pytest.param(1, id="page-1"),
    pytest.param(2, id="page-2"),
    pytest.param(1000, id="page-1000"),
]


class TestPumpDeliversEveryRoutedMessage:
    """Routed messages landing together with unrouted ones reach the worker and the
    projection, on every store and page size."""

    @staticmethod
    async def run_rounds(database: str, page_size: int) -> tuple[list[int], list[int]]:
        app = pt.App(database=database, page_size=page_size, hooks=[])
        app.state.applied = []
        app.register_command(Add, apply=lambda state, cmd, message: state.applied.append(cmd.n))
        app.register_command(Note)
        handled: list[int] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker("adder")

        @worker.on_command("seams/add")
        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            handled.append(cmd.n)

        app.register_worker(worker)
        async with serving(app):
            for i in range(20):
                # Executed together: one group commit of [Add, Note, Note].
                async with trio.open_nursery() as nursery:
                    for cmd in (Add(i), Note(), Note()):
                        nursery.start_soon(app.execute, cmd)
            await app.caught_up()
        return handled, app.state.applied

    @pytest.mark.parametrize("page_size", PAGE_SIZES)
    async def test_memory(self, page_size: int) -> None:
        handled, applied = await self.run_rounds(":memory:", page_size)
        assert sorted(handled) == list(range(20))
        assert sorted(applied) == list(range(20))

    @pytest.mark.parametrize("page_size", PAGE_SIZES)
    async def test_sqlite_file(self, tmp_path: Path, page_size: int) -> None:
        handled, applied = await self.run_rounds(str(tmp_path / "log.db"), page_size)
        assert sorted(handled) == list(range(20))
        assert sorted(applied) == list(range(20))

    @pytest.mark.postgres
    @pytest.mark.parametrize("page_size", PAGE_SIZES)
    async def test_postgres(self, postgres_url: str, page_size: int) -> None:
        handled, applied = await self.run_rounds(postgres_url, page_size)
        assert sorted(handled) == list(range(20))
        assert sorted(applied) == list(range(20))


# --- defect 2 --------------------------------------------------------------------------

TIMEOUT = 5.0


def asking_app(
    on_ask: Callable[[pt.HandlerContext, Ask, None], Any],
) -> tuple[pt.App, pt.PatternWorker[None], list[pt.Event], list[int]]:
    """A worker with a handler under test for Ask and a trivial one for Ping (Note)."""
    app = pt.App(hooks=[], clock=pt.TrioWallClock())
    for cls in (Ask, Answer, Note):
        app.register_command(cls)
    events: list[pt.Event] = []
    app.hooks.append(events.append)
    worker: pt.PatternWorker[None] = pt.PatternWorker("asker", handler_timeout=TIMEOUT)
    worker.on_command("seams/ask", on_ask)
    noted: list[int] = []

    @worker.on_command("seams/note")
    async def on_note(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        await trio.lowlevel.checkpoint()
        noted.append(cmd.n)

    app.register_worker(worker)
    return app, worker, events, noted


def failures(events: list[pt.Event], command: str) -> list[pt.HandlerFailed]:
    return [e for e in events if isinstance(e, pt.HandlerFailed) and e.command_type == command]


def completions(events: list[pt.Event]) -> collections.Counter[str]:
    return collections.Counter(e.message.name for e in events if isinstance(e, pt.HandlerCompleted))


class TestTimeoutAfterTheHandlerReturned:
    """A timeout that lands after the handler returned never commits its emits twice,
    never blames the next message and never crashes the worker."""

    @pytest.mark.parametrize(
        "early",
        [
            pytest.param(1e-6, id="a-hair-before"),
            # Failed on 625a5af (defect 2): emits committed, then retried as timed out.
            pytest.param(0.0, id="exactly-at-deadline"),
        ],
    )
    async def test_reply_at_the_deadline_emits_once(
        self, autojump_clock: trio.testing.MockClock, early: float
    ) -> None:
        async def on_ask(ctx: pt.HandlerContext, cmd: Ask, state: None) -> None:
            start = trio.current_time()
            reply = trio.Event()

            async def answer() -> None:
                if ctx.attempt == 1:  # a later attempt (if any) gets its reply at once
                    await trio.sleep_until(start + TIMEOUT - early)
                reply.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                await reply.wait()
            ctx.emit(Answer(cmd.n))

        app, worker, events, noted = asking_app(on_ask)
        async with serving(app):
            for i in range(20):  # each at-deadline reply is a fresh chance to go wrong
                await app.execute(Ask(i))
                await app.execute(Note(i))
            await app.caught_up()
            answers = await logged(app, "seams/answer")
            health = worker.health()
        assert answers == [Answer(i) for i in range(20)]
        assert completions(events) == {"seams/ask": 20, "seams/note": 20}
        assert noted == list(range(20))
        assert failures(events, "seams/note") == []
        if early:
            assert failures(events, "seams/ask") == []  # in time: not retried
        assert worker.statistics().crashes == 0
        assert health.status is not pt.Health.UNHEALTHY

    # Failed on 625a5af (defect 2): the emits landed, then the attempt was retried as
    # timed out and emitted again.
    async def test_shielded_overrun_emits_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async def on_ask(ctx: pt.HandlerContext, cmd: Ask, state: None) -> None:
            with trio.CancelScope(shield=True):
                await trio.sleep(TIMEOUT + 1)
            ctx.emit(Answer(cmd.n))

        app, worker, events, noted = asking_app(on_ask)
        async with serving(app):
            for i in range(3):
                await app.execute(Ask(i))
                await app.execute(Note(i))
            await app.caught_up()
            answers = await logged(app, "seams/answer")
            health = worker.health()
        assert answers == [Answer(0), Answer(1), Answer(2)]
        assert noted == [0, 1, 2]
        assert completions(events)["seams/note"] == 3
        assert failures(events, "seams/note") == []
        assert worker.statistics().crashes == 0
        assert health.status is not pt.Health.UNHEALTHY

    # Failed on 625a5af (defect 2): a handler that swallows the cancellation emits twice.
    @pytest.mark.parametrize(
        "swallowed",
        [
            pytest.param(BaseException, id="BaseException"),
            pytest.param(trio.Cancelled, id="Cancelled"),
        ],
    )
    async def test_swallowed_cancellation_emits_at_most_once(
        self, autojump_clock: trio.testing.MockClock, swallowed: type[BaseException]
    ) -> None:
        async def on_ask(ctx: pt.HandlerContext, cmd: Ask, state: None) -> None:
            with contextlib.suppress(swallowed):
                await trio.sleep(TIMEOUT + 1)
            ctx.emit(Answer(cmd.n))

        app, worker, events, noted = asking_app(on_ask)
        async with serving(app):
            await app.execute(Ask(0))
            await app.execute(Note(0))
            await app.caught_up()
            answers = await logged(app, "seams/answer")
            health = worker.health()
        assert answers in ([], [Answer(0)])
        assert noted == [0]
        assert failures(events, "seams/note") == []
        assert worker.statistics().crashes == 0
        assert health.status is not pt.Health.UNHEALTHY

    # Failed on 625a5af (defect 2): the timeout of a handler that swallowed it was
    # blamed on the next message.
    @pytest.mark.parametrize(
        "swallowed",
        [
            pytest.param(BaseException, id="BaseException"),
            pytest.param(trio.Cancelled, id="Cancelled"),
        ],
    )
    async def test_swallowed_cancellation_does_not_blame_the_next_message(
        self, autojump_clock: trio.testing.MockClock, swallowed: type[BaseException]
    ) -> None:
        async def on_ask(ctx: pt.HandlerContext, cmd: Ask, state: None) -> None:
            with contextlib.suppress(swallowed):
                await trio.sleep(TIMEOUT + 1)

        app, worker, events, noted = asking_app(on_ask)
        async with serving(app):
            await app.execute(Ask(0))
            await app.execute(Note(0))
            await app.caught_up()
            health = worker.health()
        assert noted == [0]
        assert completions(events)["seams/note"] == 1
        assert failures(events, "seams/note") == []
        assert worker.statistics().crashes == 0
        assert health.status is not pt.Health.UNHEALTHY


# --- defect 3 --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def must_survive() -> AsyncIterator[None]:
    """Turn a BaseException escaping serve into a test failure (not a dead test run)."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must not stop pytest
        raise AssertionError(f"serve died: {exc!r}") from None


class TestBaseExceptionInAHandler:
    """A handler raising KeyboardInterrupt, SystemExit or another BaseException fails
    its message like any error; serve and the other workers carry on."""

    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(KeyboardInterrupt, id="KeyboardInterrupt"),
            pytest.param(SystemExit, id="SystemExit"),
            pytest.param(Fatal, id="custom-BaseException"),
        ],
    )
    # Failed on 625a5af (defect 3): a BaseException from a handler kills serve.
    async def test_dead_lettered_and_serving_goes_on(
        self, tmp_path: Path, file_clock: trio.testing.MockClock, error: type[BaseException]
    ) -> None:
        database = str(tmp_path / "log.db")
        attempts: list[int] = []
        steady_saw: list[int] = []

        def build() -> pt.App:
            app = pt.App(database=database, hooks=[], clock=pt.TrioWallClock())
            app.register_command(Add)
            app.register_command(Note)
            fragile: pt.PatternWorker[None] = pt.PatternWorker(
                "fragile", retry=pt.Backoff(max_attempts=2)
            )

            @fragile.on_command("seams/add")
            async def explode(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                if not ctx.is_replay:
                    attempts.append(ctx.message.id)
                    raise error("raised by a handler")

            steady: pt.PatternWorker[None] = pt.PatternWorker("steady")

            async def record(ctx: pt.HandlerContext, cmd: object, state: None) -> None:
                if not ctx.is_replay:
                    steady_saw.append(ctx.message.id)

            steady.on_command("seams/add", record)
            steady.on_command("seams/note", record)
            app.register_worker(fragile)
            app.register_worker(steady)
            return app

        app = build()
        async with must_survive(), serving(app):
            await app.execute(Add(1))
            await app.execute(Note(2))
            await app.caught_up()
            letters = await app.dead_letters("fragile")
            await app.execute(Note(3))
            await app.caught_up()
            assert app.running
        assert attempts == [1, 1]  # retried once per its Backoff, then dead-lettered
        assert [(d.message_id, d.attempts) for d in letters] == [(1, 2)]
        assert steady_saw == [1, 2, 3]

        app = build()  # the same file again: the dead letter is not run live again
        async with must_survive(), serving(app):
            await app.execute(Note(4))
            await app.caught_up()
        assert attempts == [1, 1]
        assert steady_saw == [1, 2, 3, 4]


# --- defect 4 --------------------------------------------------------------------------


class TestStartUpDoesNotWaitForLiveWork:
    """``nursery.start(serve, app)`` returns once replay is done, not once the live
    messages of the first page are handled."""

    # Failed on 625a5af (defect 4): start-up waits for the first page's live retries.
    async def test_live_retries_come_after_start(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        attempts: list[tuple[int, int, float]] = []

        def build(database: str) -> pt.App:
            app = pt.App(database=database, hooks=[], clock=pt.TrioWallClock())
            app.register_command(Add)
            worker: pt.PatternWorker[None] = pt.PatternWorker(
                "retrier", retry=pt.Backoff(initial=2.0, max_attempts=4)
            )

            @worker.on_command("seams/add")
            async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                if ctx.is_replay:
                    return
                attempts.append((ctx.message.id, ctx.attempt, trio.current_time()))
                if cmd.n > 1 and ctx.attempt < 4:
                    raise RuntimeError("not yet")  # retried after 2, 4 and 8 s

            app.register_worker(worker)
            return app

        with memory_database() as database:
            async with serving(build(database)) as app:  # the worker's position becomes 1
                await app.execute(Add(1))
                await app.caught_up()
            async with pt.open_log(database, commands=[Add]) as log:
                await log.append(Add(2), Add(3))  # in the same page as message 1
            attempts.clear()
            app = build(database)
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                await nursery.start(serve_quietly(app))
                started_after = trio.current_time() - start
                await app.caught_up()
                app.stop()
        assert started_after == 0
        assert [(m, a, t - start) for m, a, t in attempts] == [
            (2, 1, 0),
            (2, 2, 2),
            (2, 3, 6),
            (2, 4, 14),
            (3, 1, 14),
            (3, 2, 16),
            (3, 3, 20),
            (3, 4, 28),
        ]

    # Failed on 625a5af (defect 4): start-up waits for a declared service's circuit to close.
    async def test_open_circuit_is_waited_for_after_start(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService()
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=30.0)

        def build(database: str) -> pt.App:
            app = pt.App(database=database, hooks=[], clock=pt.TrioWallClock())
            app.register_command(Add)
            worker: pt.PatternWorker[None] = pt.PatternWorker("caller", services=[service])

            @worker.on_command("seams/add")
            async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
                if not ctx.is_replay:
                    await service.call(fake)

            app.register_worker(worker)
            return app

        with memory_database() as database:
            async with serving(build(database)) as app:
                await app.execute(Add(1))
                await app.caught_up()
            async with pt.open_log(database, commands=[Add]) as log:
                await log.append(Add(2))
            fake.down()
            with pytest.raises(FakeServiceError):
                await service.call(fake)  # the circuit is open for 30 s
            fake.up()
            fake.calls.clear()
            app = build(database)
            async with trio.open_nursery() as nursery:
                start = trio.current_time()
                await nursery.start(serve_quietly(app))
                started_after = trio.current_time() - start
                await app.caught_up()
                done_after = trio.current_time() - start
                app.stop()
        assert started_after == 0
        assert [(c.at - start, c.outcome) for c in fake.calls] == [(30, "ok")]
        assert done_after == 30


# --- defect 5 --------------------------------------------------------------------------


class TestOutageOfADeclaredService:
    """Failed half-open probes do not spend attempts, and every opening of the circuit
    is counted and logged."""

    # Failed on 625a5af (defect 5): failed probes counted as attempts, so all 5 messages
    # were dead-lettered.
    async def test_outage_dead_letters_nothing(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService()
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=5.0)
        app = pt.App(hooks=[], clock=pt.TrioWallClock())
        app.register_command(Add)
        worker: pt.PatternWorker[None] = pt.PatternWorker("caller", services=[service])
        handled: list[int] = []

        @worker.on_command("seams/add")
        async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            await service.call(fake)
            handled.append(cmd.n)

        app.register_worker(worker)
        fake.outage(600)
        with capture_logs() as logs:
            async with serving(app):
                for i in range(5):
                    await app.execute(Add(i))
                await app.caught_up()
                letters = await app.dead_letters()
        assert letters == []
        assert handled == [0, 1, 2, 3, 4]
        # With a threshold of 1, every failed call that got through opened the circuit.
        openings = fake.outcomes().count("error")
        assert openings > 1
        assert service.statistics().opened == openings
        assert [e["event"] for e in logs if e["event"] == "petrock.circuit_opened"] == [
            "petrock.circuit_opened"
        ] * openings

    # Failed on 625a5af (defect 5): a re-opening after a failed probe is neither counted nor logged.
    async def test_reopening_is_counted_and_logged(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService()
        fake.down()
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=5.0)
        with capture_logs() as logs:
            with pytest.raises(FakeServiceError):
                await service.call(fake)
            await trio.sleep(5)
            assert circuit(service) is pt.Circuit.HALF_OPEN
            with pytest.raises(FakeServiceError):
                await service.call(fake)  # the probe fails: open again
        assert circuit(service) is pt.Circuit.OPEN
        assert service.statistics().opened == 2
        assert [e["event"] for e in logs if e["event"] == "petrock.circuit_opened"] == [
            "petrock.circuit_opened",
            "petrock.circuit_opened",
        ]


# --- defect 6 --------------------------------------------------------------------------


class TestRetrySteeringInsideAnExceptionGroup:
    """Permanent and Retry raised inside a nursery steer the retry as when raised directly."""

    # Failed on 625a5af (defect 6): Permanent inside an ExceptionGroup is retried 8 times.
    async def test_permanent_in_a_group_dead_letters_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("grouped")

        @worker.on_command("seams/add")
        async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            async def child() -> None:
                raise pt.Permanent("cannot be done")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)

        async with worker_harness(worker, commands=[Add]) as h:
            (message,) = await h.send(Add(1))
            letters = await h.dead_letters()
        assert len(h.attempt_times(message.id)) == 1
        assert [d.attempts for d in letters] == [1]

    # Failed on 625a5af (defect 6): Retry(delay=3) inside an ExceptionGroup waits the policy's 1 s.
    async def test_retry_in_a_group_waits_its_delay(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("grouped")

        @worker.on_command("seams/add")
        async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            if ctx.attempt > 1:
                return

            async def child() -> None:
                raise pt.Retry(delay=3, reason="not yet")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)

        async with worker_harness(worker, commands=[Add]) as h:
            (message,) = await h.send(Add(1))
        times = h.attempt_times(message.id)
        assert [t - times[0] for t in times] == [0, 3]


def writes_dead_letter(commits: Sequence[Any]) -> bool:
    """Whether a transaction writes a dead letter (FaultyStore's ``when``)."""
    return any(c.dead_letters for c in commits)


class TestFailedDeadLetterCommit:
    """A failed dead-letter commit is retried alone; the backoff does not start over."""

    # Failed on 625a5af (defect 6): a failed dead-letter commit restarts the whole backoff.
    async def test_handler_runs_max_attempts_times(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "doomed", retry=pt.Backoff(max_attempts=3)
        )
        runs: list[int] = []

        @worker.on_command("seams/add")
        async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            runs.append(ctx.attempt)
            raise RuntimeError("always")

        async with worker_harness(worker, commands=[Add], faults=True) as h:
            assert h.store is not None
            h.store.fail_commits(1, when=writes_dead_letter)
            await h.send(Add(1))
            letters = await h.dead_letters()
            failed_commits = h.store.failed_commits
        assert failed_commits == 1
        assert runs == [1, 2, 3]
        assert [d.attempts for d in letters] == [3]


class TestRedriveDuringShutdown:
    """A re-drive interrupted by graceful shutdown raises NotRunning."""

    # Failed on 625a5af (defect 6): a private _Stop leaks out of redrive.
    async def test_redrive_raises_not_running(self, autojump_clock: trio.testing.MockClock) -> None:
        app = pt.App(hooks=[], clock=pt.TrioWallClock())
        app.register_command(Add)
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "doomed", retry=pt.Backoff(max_attempts=2)
        )

        @worker.on_command("seams/add")
        async def handle(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            raise RuntimeError("always")

        app.register_worker(worker)
        outcome: list[Exception] = []
        async with serving(app):
            message = await app.execute(Add(1))
            await app.caught_up()

            async def redrive() -> None:
                try:
                    await app.redrive("doomed", message.id)
                except Exception as exc:  # noqa: BLE001 - what escapes is the point
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(redrive)
                await trio.sleep(0.5)  # its first attempt failed; the retry waits 1 s
                app.stop()
        assert len(outcome) == 1
        assert isinstance(outcome[0], pt.NotRunning), repr(outcome[0])


class TestPeriodicRunWithASlowCommit:
    """A periodic run whose emits landed after a slow commit counts as completed."""

    # Failed on 625a5af (defect 6): a periodic run whose slow commit landed counts as timed out.
    async def test_counts_as_completed_and_emits_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("ticker", periodic_timeout=2.0)
        armed = False

        async def tick(ctx: pt.PeriodicContext, state: None) -> None:
            if armed:
                ctx.emit(Tick(ctx.run))

        worker.set_periodic_work(tick, interval=1000.0)
        async with worker_harness(worker, commands=[Tick], faults=True) as h:
            await h.advance(1)  # the go-live run is over, with nothing emitted
            assert h.store is not None
            h.store.stall_commits(5.0)  # longer than the periodic timeout
            armed = True
            await h.run_periodic()
            await h.advance(10)
            ticks = await logged(h.app, "seams/tick")
            metrics = h.metrics()
        assert len(ticks) == 1
        assert (metrics.periodic_runs, metrics.periodic_failures, metrics.timeouts) == (2, 0, 0)


class ServiceDown(Exception):
    """The service failed."""


class TestStaleSuccessDuringAProbe:
    """A call that started while the circuit was closed cannot close it when it succeeds
    during a half-open probe."""

    # Failed on 625a5af (defect 6): a stale success closes a half-open circuit.
    async def test_only_the_probe_decides(self, autojump_clock: trio.testing.MockClock) -> None:
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=5.0)

        async def slow_success() -> str:
            await trio.sleep(10)
            return "ok"

        async def failure() -> str:
            raise ServiceDown

        async def slow_failure() -> str:
            await trio.sleep(10)
            raise ServiceDown

        results: list[str] = []

        async def call(fn: Callable[[], Any]) -> None:
            try:
                results.append(await service.call(fn))
            except ServiceDown:
                results.append("failed")

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(call, slow_success)  # A: starts while closed
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ServiceDown):
                await service.call(failure)  # opens the circuit at 0
            await trio.sleep(5)
            assert circuit(service) is pt.Circuit.HALF_OPEN
            nursery.start_soon(call, slow_failure)  # B: the probe, from 5 to 15
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_until(start + 10.5)  # A succeeded at 10
            assert results == ["ok"]
            assert circuit(service) is pt.Circuit.HALF_OPEN
            assert not service.available  # the probe is still in flight
            await trio.sleep_until(start + 15.5)  # B failed at 15
            assert results == ["ok", "failed"]
            assert circuit(service) is pt.Circuit.OPEN


# --- defect 7 --------------------------------------------------------------------------


class TestEmitValidation:
    """Emits are validated one at a time against state that includes every earlier
    command, as ``execute`` is."""

    # Failed on 625a5af (defect 7): two workers emit the same refused command.
    async def test_only_one_of_two_racing_emits_lands(self) -> None:
        app = pt.App(hooks=[])
        app.state.users = set()
        app.register_command(
            CreateUser, apply=lambda state, cmd, message: state.users.add(cmd.name)
        )
        app.register_command(SignUp)
        for name in ("welcomer", "registrar"):
            worker: pt.PatternWorker[None] = pt.PatternWorker(name)

            @worker.on_command("seams/sign-up")
            async def create(ctx: pt.HandlerContext, cmd: SignUp, state: None) -> None:
                with contextlib.suppress(pt.ValidationError):  # the expected race
                    ctx.emit(CreateUser(cmd.name))

            app.register_worker(worker)
        async with serving(app):
            await app.execute(SignUp("ada"))
            await app.caught_up()
            created = await logged(app, "seams/create-user")
        assert created == [CreateUser("ada")]


class TestPositionsOfQuietWorkers:
    """A live message's position is durable before the worker starts its next live
    message, emits or not: a crash re-handles at most one message per worker. With
    ``commit_behind``, before it commits the one ``DEPTH`` messages after it."""

    @pytest.mark.parametrize("mode", ["exact", "batch_positions", "commit_behind"])
    async def test_position_saved_before_the_next_message(
        self, autojump_clock: trio.testing.MockClock, mode: str
    ) -> None:
        app = pt.App(clock=pt.TrioWallClock(), hooks=[])
        app.register_command(Note)
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "quiet",
            batch_positions=mode == "batch_positions",
            commit_behind=mode == "commit_behind",
        )
        behind: list[int] = []

        @worker.on_command(Note)
        async def note(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            if not ctx.is_replay:
                saved = (await app.log.store.positions()).get("quiet", 0)
                behind.append(ctx.message.id - 1 - saved)

        app.register_worker(worker)
        async with serving(app):
            await app.log.append(*[Note(i) for i in range(20)])
            await app.caught_up()
        assert len(behind) == 20
        if mode == "batch_positions":
            # Written in groups: handling goes ahead of the saved position.
            assert max(behind) > 1
        elif mode == "commit_behind":
            # Commits in flight while the next handler runs, never more than DEPTH.
            assert behind[0] == 0
            assert 1 <= max(behind) <= DEPTH
        else:
            assert behind == [0] * 20
