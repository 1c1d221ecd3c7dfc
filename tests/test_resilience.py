"""Retries, circuit breakers, metrics, health and structured logs, exact on Trio's clock."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio.testing import FakeService, serving
from tests.support import Add, Note, Unrouted


def single_worker(
    handler: Any, *, route: str = "test/note", **worker_kw: Any
) -> tuple[pt.App, pt.PatternWorker[None]]:
    app = pt.App()
    for cls in (Add, Note, Unrouted):
        app.register_command(cls)
    worker: pt.PatternWorker[None] = pt.PatternWorker("w", **worker_kw)
    worker.on_command(route, handler)
    app.register_worker(worker)
    return app, worker


def circuit(service: pt.ExternalService) -> pt.Circuit:
    return service.circuit  # read afresh: the state changes with the clock


class TestCircuitBreaker:
    """Closed -> open after the threshold -> half-open after reset_timeout -> closed on success."""

    async def test_transitions(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        service = pt.ExternalService("svc", failure_threshold=3, reset_timeout=10.0)
        start = trio.current_time()
        fake.down()
        for _ in range(3):
            with pytest.raises(pt.testing.FakeServiceError):
                await service.call(fake)
        assert service.circuit is pt.Circuit.OPEN
        with pytest.raises(pt.ServiceUnavailable) as info:
            await service.call(fake)
        assert info.value.retry_after == 10.0
        assert len(fake.calls) == 3  # the open circuit did not call through
        await trio.sleep(9.999)
        assert circuit(service) is pt.Circuit.OPEN
        await trio.sleep(0.001)
        assert circuit(service) is pt.Circuit.HALF_OPEN
        with pytest.raises(pt.testing.FakeServiceError):
            await service.call(fake)  # the probe fails: open again for a full reset_timeout
        assert service.circuit is pt.Circuit.OPEN
        assert service.retry_after() == 10.0
        fake.up()
        await trio.sleep(10.0)
        assert await service.call(fake) == "ok"
        assert circuit(service) is pt.Circuit.CLOSED
        stats = service.statistics()
        # Opened twice: by the third failure, and again by the failed probe.
        assert (stats.calls, stats.failures, stats.rejected, stats.opened) == (5, 4, 1, 2)
        assert trio.current_time() - start == 20.0

    async def test_one_probe_at_a_time(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok", latency=1.0)
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=5.0)
        fake.fail_next()
        with pytest.raises(pt.testing.FakeServiceError):
            await service.call(fake)
        await trio.sleep(5.0)
        results: list[str] = []

        async def call() -> None:
            try:
                results.append(await service.call(fake))
            except pt.ServiceUnavailable:
                results.append("rejected")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call)
        assert sorted(results) == ["ok", "rejected"]

    async def test_timeout_counts_as_failure(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        fake.hang()
        service = pt.ExternalService("svc", failure_threshold=1, timeout=2.0)
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await service.call(fake)
        assert trio.current_time() - start == 2.0
        assert service.circuit is pt.Circuit.OPEN

    def test_invalid(self) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.ExternalService("x", failure_threshold=0)


class TestDegradation:
    """An open circuit skips periodic work and delays handlers without spending attempts."""

    async def test_periodic_skipped_while_open(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService(lambda: "ok")
        service = pt.ExternalService("svc", failure_threshold=2, reset_timeout=10.0)
        app = pt.App()
        worker: pt.PatternWorker[None] = pt.PatternWorker("w", services=[service])
        runs: list[float] = []

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            runs.append(trio.current_time())
            await service.call(fake)

        worker.set_periodic_work(work, interval=1.0)
        app.register_worker(worker)
        fake.outage(3.5)
        async with serving(app):
            start = trio.current_time()
            await trio.sleep(14.5)
            metrics = worker.metrics()
        # Runs at 0 and 1 fail and open the circuit until 11; 2..10 are skipped; the probe
        # at 11 succeeds (the outage ended at 3.5), so 12, 13, 14 run as usual.
        assert [t - start for t in runs] == [0.0, 1.0, 11.0, 12.0, 13.0, 14.0]
        assert (metrics.periodic_skipped, metrics.periodic_failures) == (9, 2)

    async def test_handler_waits_without_spending_attempts(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService(lambda: "ok")
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=30.0)
        attempts: list[tuple[float, int]] = []

        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            attempts.append((trio.current_time(), ctx.attempt))
            await service.call(fake)

        app, worker = single_worker(handler, retry=pt.Backoff(max_attempts=3), services=[service])
        fake.outage(50)
        async with serving(app):
            start = trio.current_time()
            await app.execute(Note("x"))
            await app.caught_up()
            letters = await app.dead_letters()
        # Attempt 1 fails and opens the circuit until 30: the failure is the service's,
        # so the worker waits for it without spending the attempt. Attempt 1 runs again
        # as the probe at 30, fails (the outage lasts until 50) and reopens it until 60;
        # still attempt 1 at 60, which succeeds.
        assert [(t - start, a) for t, a in attempts] == [(0.0, 1), (30.0, 1), (60.0, 1)]
        assert letters == []
        assert worker.metrics().processed == 1

    async def test_other_workers_unaffected(self, autojump_clock: trio.testing.MockClock) -> None:
        service = pt.ExternalService("svc", failure_threshold=1, reset_timeout=60.0)
        fake = FakeService()
        fake.down()

        async def needs_service(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            await service.call(fake)

        app, blocked = single_worker(needs_service, services=[service])
        seen: list[int] = []
        other: pt.PatternWorker[None] = pt.PatternWorker("other")

        @other.on_command("test/note")
        async def record(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            seen.append(ctx.message.id)

        app.register_worker(other)
        async with serving(app):
            for i in range(5):
                await app.execute(Note(str(i)))
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1, 2, 3, 4, 5]
            assert blocked.statistics().retrying_message == 1
            health = app.health()
        assert health.status is pt.Health.DEGRADED
        assert any("'svc' unavailable" in r for r in health.reasons)


class TestSteering:
    """Handlers steer retries: Retry(delay), never_retry, Permanent."""

    async def test_retry_with_delay(self, autojump_clock: trio.testing.MockClock) -> None:
        times: list[float] = []

        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            times.append(trio.current_time())
            if ctx.attempt < 3:
                raise pt.Retry(delay=7.5, reason="not ready")

        app, _ = single_worker(handler)
        with capture_logs() as logs:
            async with serving(app):
                start = trio.current_time()
                await app.execute(Note("x"))
                await app.caught_up()
        assert [t - start for t in times] == [0.0, 7.5, 15.0]
        retries = [e for e in logs if e["event"] == "petrock.retry_scheduled"]
        assert [e["log_level"] for e in retries] == ["info", "info"]
        assert not [e for e in logs if e["log_level"] == "error"]

    async def test_never_retry(self, autojump_clock: trio.testing.MockClock) -> None:
        calls: list[int] = []

        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            calls.append(ctx.attempt)
            raise KeyError("missing")

        app, _ = single_worker(handler, retry=pt.Backoff(never_retry=(KeyError,)))
        async with serving(app):
            await app.execute(Note("x"))
            await app.caught_up()
            (letter,) = await app.dead_letters()
        assert calls == [1]
        assert "KeyError" in letter.error


class TestMetrics:
    """Counters, rates and handler-time statistics equal what a scripted workload implies."""

    async def test_known_workload(self, autojump_clock: trio.testing.MockClock) -> None:
        async def handler(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            await trio.sleep(cmd.amount / 10)
            if cmd.key == "fail":
                raise pt.Permanent("scripted")

        app, worker = single_worker(handler, route="test/add")
        async with serving(app):
            start = trio.current_time()
            for amount in range(1, 11):  # 0.1 s .. 1.0 s: 5.5 s in all
                await app.execute(Add("ok", amount))
            await app.caught_up()
            assert trio.current_time() - start == pytest.approx(5.5)
            for _ in range(3):
                await app.execute(Add("fail", 0))
            await app.execute(Unrouted())
            await app.caught_up()
            metrics = worker.metrics()
        assert (metrics.processed, metrics.failed, metrics.dead_lettered) == (10, 3, 3)
        assert metrics.handler_time_avg == pytest.approx(0.55)
        assert metrics.handler_time_p50 == pytest.approx(0.5)
        assert metrics.handler_time_p95 == pytest.approx(1.0)
        # 10 handled within the first 5.5 s of a 60 s window: 10 / 5.5 per second;
        # 3 errors in the last minute: 3 a minute.
        assert metrics.messages_per_second == pytest.approx(10 / 5.5)
        assert metrics.errors_per_minute == 3.0
        assert (metrics.position, metrics.lag) == (14, 0)

    async def test_window_slides(self, autojump_clock: trio.testing.MockClock) -> None:
        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            pass

        app, worker = single_worker(handler)
        async with serving(app):
            for _ in range(120):
                await app.execute(Note("x"))
            await trio.sleep(30)
            assert worker.metrics().messages_per_second == pytest.approx(120 / 30)
            await trio.sleep(31)
            assert worker.metrics().messages_per_second == 0.0
            assert worker.metrics().processed == 120


class TestHealth:
    """Health follows error rates, dead letters, open circuits, lag and crashes."""

    async def test_transitions(self, autojump_clock: trio.testing.MockClock) -> None:
        fail = True

        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            if fail:
                raise RuntimeError("scripted")

        thresholds = pt.HealthThresholds(
            degraded_errors_per_minute=1, unhealthy_errors_per_minute=30, dead_letter_window=120
        )
        app, worker = single_worker(handler, retry=pt.Backoff(max_attempts=1), health=thresholds)
        async with serving(app):
            assert worker.health() == pt.HealthReport(pt.Health.HEALTHY)
            await app.execute(Note("1"))
            await app.caught_up()
            report = worker.health()
            assert report.status is pt.Health.DEGRADED
            assert any("dead-lettered" in r for r in report.reasons)
            for i in range(40):
                await app.execute(Note(str(i)))
            await app.caught_up()
            assert worker.health().status is pt.Health.UNHEALTHY
            assert app.health().status is pt.Health.UNHEALTHY
            fail = False
            await trio.sleep(61)  # the error window has passed; the dead letter has not
            report = worker.health()
            assert report.status is pt.Health.DEGRADED
            assert report.reasons == ("dead-lettered a message 61 s ago",)
            await trio.sleep(60)
            assert worker.health() == pt.HealthReport(pt.Health.HEALTHY)

    async def test_lag(self, autojump_clock: trio.testing.MockClock) -> None:
        async def slow(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            await trio.sleep(1)

        thresholds = pt.HealthThresholds(degraded_lag=5, unhealthy_lag=20)
        app, worker = single_worker(slow, health=thresholds)
        async with serving(app):
            for i in range(10):
                await app.execute(Note(str(i)))
            assert worker.health().status is pt.Health.DEGRADED
            await app.caught_up()
            assert worker.health().status is pt.Health.HEALTHY

    async def test_crashed_loop_restarts(
        self, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[int] = []

        async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            seen.append(ctx.message.id)

        app, worker = single_worker(handler)
        events: list[pt.Event] = []
        app.hooks.append(events.append)
        from petrock_trio._run import WorkerRun  # noqa: PLC0415 - the engine's own loop

        original = WorkerRun._handle_page
        crashes = 0

        async def buggy(self: Any, *args: Any) -> Any:
            nonlocal crashes
            if crashes == 0:
                crashes += 1
                raise ZeroDivisionError("engine bug")
            return await original(self, *args)

        monkeypatch.setattr(WorkerRun, "_handle_page", buggy)
        async with serving(app):
            start = trio.current_time()
            await app.execute(Note("x"))
            await trio.testing.wait_all_tasks_blocked()
            report = worker.health()
            assert report.status is pt.Health.UNHEALTHY
            assert "engine bug" in report.reasons[0]
            await app.caught_up()
            recovered_after = trio.current_time() - start
        assert seen == [1]
        assert recovered_after == 1.0  # the first restart waits one second
        (crash,) = [e for e in events if isinstance(e, pt.WorkerCrashed)]
        assert (crash.worker, crash.restart_in) == ("w", 1.0)
        assert worker.statistics().crashes == 1


class TestStructuredLogs:
    """Every worker line carries worker_name, command_type, message_id, execution_time."""

    async def test_fields(self, autojump_clock: trio.testing.MockClock) -> None:
        async def handler(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            if cmd.key == "slow":
                await trio.sleep(10)
            if cmd.key == "bad":
                raise ValueError("bad input")
            await trio.sleep(0.25)

        app, _ = single_worker(
            handler, route="test/add", handler_timeout=2.0, retry=pt.Backoff(max_attempts=2)
        )
        with capture_logs() as logs:
            async with serving(app):
                await app.execute(Add("ok"))
                await app.execute(Add("bad"))
                await app.execute(Add("slow"))
                await app.caught_up()
        by_event: dict[str, list[MutableMapping[str, Any]]] = {}
        for entry in logs:
            by_event.setdefault(entry["event"], []).append(entry)
        (done,) = by_event["petrock.handler.complete"]
        assert done["worker_name"] == "w"
        assert (done["command_type"], done["message_id"]) == ("test/add", 1)
        assert done["execution_time"] == 250.0
        failed = by_event["petrock.handler.failed"]
        assert [(e["message_id"], e["attempt"]) for e in failed] == [(2, 1), (2, 2)]
        assert failed[0]["error_details"] == "ValueError('bad input')"
        assert failed[0]["delay"] == 1.0
        assert "delay" not in failed[1]  # the last attempt is followed by a dead letter
        timeouts = by_event["petrock.handler.timeout"]
        assert [e["execution_time"] for e in timeouts] == [2000.0, 2000.0]
        assert "HandlerTimeout" in timeouts[0]["error_details"]
        letters = by_event["petrock.dead_lettered"]
        assert [(e["message_id"], e["attempts"]) for e in letters] == [(2, 2), (3, 2)]
        for entry in [*failed, *timeouts, *letters]:
            assert {"worker_name", "command_type", "message_id", "error_details"} <= entry.keys()

    def test_json_lines_off_a_terminal(self) -> None:
        stream = io.StringIO()
        pt.configure_logging(level="info", stream=stream)
        structlog.get_logger("t").info("hello", worker_name="w")
        structlog.get_logger("t").debug("filtered out")
        (line,) = stream.getvalue().splitlines()
        record = json.loads(line)
        assert (record["event"], record["worker_name"], record["level"]) == ("hello", "w", "info")

    def test_console_and_processors(self) -> None:
        stream = io.StringIO()

        def add_service(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
            event["service"] = "demo"
            return event

        pt.configure_logging(json=False, stream=stream, processors=[add_service])
        structlog.get_logger("t").warning("careful")
        output = stream.getvalue()
        assert "careful" in output
        assert "service=demo" in output


async def test_last_error_is_in_the_metrics(autojump_clock: trio.testing.MockClock) -> None:
    async def handler(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
        raise ValueError(f"cannot handle {cmd.text}")

    app, worker = single_worker(handler, retry=pt.Backoff(max_attempts=1))
    async with serving(app):
        assert worker.metrics().last_error is None
        await app.execute(Note("x"))
        await app.caught_up()
        report = app.inspect()
    assert worker.metrics().last_error == "ValueError('cannot handle x')"
    assert report["workers"]["w"]["metrics"]["last_error"] == "ValueError('cannot handle x')"
