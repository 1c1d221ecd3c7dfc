"""Where the testing kit surprised its users: each case as a user meets it.

A refused command names itself wherever it is refused; the harness says what
``send`` and ``append`` wait for and can stop at a scheduled retry; a fake's latest
availability script wins; a feature's other workers stay out of a harness; an app
served under a MockClock keeps wall time on the virtual clock by itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import (
    FakeService,
    FakeServiceError,
    assert_times,
    serving,
    worker_harness,
)
from tests.support import Add, Echoed, Note

EPOCH = pt.TrioWallClock().epoch


@attrs.define
class Stock:
    available: dict[str, int] = attrs.Factory(lambda: {"apple": 3})


@pt.command("kit/reserve")
@attrs.frozen
class Reserve:
    sku: str
    qty: int

    def validate(self, state: Stock) -> None:
        # Raised without command_name, as most validate methods are written.
        if self.qty < 1:
            raise pt.ValidationError("qty must be at least 1")
        if state.available.get(self.sku, 0) < self.qty:
            raise pt.ValidationError(f"only {state.available.get(self.sku, 0)} {self.sku} left")


def apply_reserve(state: Stock, cmd: Reserve, message: pt.Message) -> None:
    state.available[cmd.sku] -= cmd.qty


def stock_app(**options: Any) -> pt.App:
    app = pt.App(**options)
    app.register_command(Reserve, apply_reserve, state=Stock())
    app.register_command(Note)
    return app


class TestRefusalsNameTheirCommand:
    """ValidationError.command_name is filled wherever a command is refused."""

    async def test_execute(self, autojump_clock: trio.testing.MockClock) -> None:
        app = stock_app()
        async with serving(app):
            with pytest.raises(pt.ValidationError) as info:
                await app.execute(Reserve("apple", 0))
        assert info.value.command_name == "kit/reserve"

    async def test_a_name_given_by_validate_is_kept(self) -> None:
        app = pt.App()
        app.register_command(Reserve, state=Stock())

        @pt.command("kit/named")
        @attrs.frozen
        class Named:
            def validate(self, state: object) -> None:
                raise pt.ValidationError("refused", command_name="kit/other")

        app.register_command(Named)
        async with serving(app):
            with pytest.raises(pt.ValidationError) as info:
                await app.execute(Named())
        assert info.value.command_name == "kit/other"

    async def test_emit(self, autojump_clock: trio.testing.MockClock) -> None:
        refusals: list[pt.ValidationError] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker("reserver")

        @worker.on_command("test/note")
        async def reserve(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            try:
                ctx.emit(Reserve("apple", int(cmd.text)))
            except pt.ValidationError as exc:
                refusals.append(exc)

        app = stock_app()
        async with worker_harness(worker, commands=[], feature=_Registers(app)) as h:
            await h.send(Note("9"))
        assert [r.command_name for r in refusals] == ["kit/reserve"]

    async def test_emit_checked_again_at_commit(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # Valid when emitted, refused when the handler's commit checks it again:
        # another command took the stock meanwhile.
        gate = trio.Event()
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "reserver", retry=pt.Backoff(max_attempts=1)
        )

        @worker.on_command("test/note")
        async def reserve(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            ctx.emit(Reserve("apple", 2))
            await gate.wait()

        app = stock_app()
        async with worker_harness(worker, feature=_Registers(app)) as h:
            await h.app.execute(Note("go"))
            await trio.testing.wait_all_tasks_blocked()
            await h.app.execute(Reserve("apple", 2))
            gate.set()
            await h.settle()
            (call,) = h.calls
            assert isinstance(call.error, pt.ValidationError)
            assert call.error.command_name == "kit/reserve"

    async def test_http_answer_names_the_command(self) -> None:
        app = stock_app()
        async with trio.open_nursery() as nursery, serving(app):
            url = await nursery.start(partial(pt.serve_http, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                refused = await client.post("/commands/kit/reserve", json={"sku": "pear", "qty": 1})
                unknown = await client.post("/commands/kit/nothing", json={})
            nursery.cancel_scope.cancel()
        assert refused.status_code == 422
        assert refused.json()["error"] == {
            "type": "ValidationError",
            "message": "only 0 pear left",
            "command": "kit/reserve",
        }
        assert unknown.status_code == 400
        assert unknown.json()["error"]["command"] == "kit/nothing"


@attrs.frozen
class _Registers:
    """A feature that hands its commands and state over from a prepared app."""

    source: pt.App

    def register(self, app: pt.App) -> None:
        for name in self.source.registry.names():
            cls = self.source.registry.lookup(name)
            apply = self.source.projection.appliers.get(name)
            app.register_command(
                cls, apply[0] if apply else None, state=self.source.state_for(name)
            )


def flaky_worker(fails: int, **options: Any) -> tuple[pt.PatternWorker[None], list[float]]:
    """A worker whose handler of test/add fails its first ``fails`` runs."""
    worker: pt.PatternWorker[None] = pt.PatternWorker("flaky", **options)
    runs: list[float] = []

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        runs.append(trio.current_time())
        if len(runs) <= fails:
            raise ConnectionError("not yet")
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    return worker, runs


class TestWhatSendAndAppendWaitFor:
    """send/append wait until the worker has settled the messages (retries waited
    out); with settle=False they return as soon as the worker is done or waits for a
    retry, and settle() waits for the rest."""

    async def test_append_settles_by_default(self, autojump_clock: trio.testing.MockClock) -> None:
        worker, runs = flaky_worker(2)
        async with worker_harness(worker, commands=[Add, Echoed]) as h:
            start = trio.current_time()
            (message,) = await h.append(Add("a"))
            assert_times(runs, [0, 1, 3], start=start)
            assert trio.current_time() - start == 3
            assert h.emitted == [Echoed(message.id, "a")]

    @pytest.mark.parametrize("drive", ["send", "append", "append_raw"])
    async def test_settle_false_returns_at_the_scheduled_retry(
        self, drive: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker, runs = flaky_worker(2)
        async with worker_harness(worker, commands=[Add, Echoed]) as h:
            start = trio.current_time()
            if drive == "append_raw":
                await h.append_raw("test/add", b'{"key": "a"}', settle=False)
            else:
                await getattr(h, drive)(Add("a"), settle=False)
            assert trio.current_time() == start
            assert [c.outcome for c in h.calls] == ["error"]
            assert h.metrics().retried == 1
            await h.settle()
            assert [c.outcome for c in h.calls] == ["error", "error", "ok"]
            assert trio.current_time() - start == 3
            assert_times(runs, [0, 1, 3], start=start)

    async def test_settle_false_returns_after_success_without_waiting_for_emits(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker, _ = flaky_worker(0)
        async with worker_harness(worker, commands=[Add, Echoed, Note]) as h:
            messages = await h.append(Note("not routed"), Add("a"), settle=False)
            assert [c.message_id for c in h.calls] == [messages[1].id]
            assert (await h.positions()).get("flaky", 0) >= messages[1].id

    async def test_waiting_for_a_service_that_never_returns_is_reported(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService()
        fake.down()
        service = pt.ExternalService("never", failure_threshold=1, reset_timeout=30.0)
        worker: pt.PatternWorker[None] = pt.PatternWorker("caller", services=[service])

        @worker.on_command("test/add")
        async def call(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            await service.call(fake)

        async with worker_harness(worker, commands=[Add]) as h:
            start = trio.current_time()
            (message,) = await h.send(Add("a"), settle=False)
            assert trio.current_time() == start
            with pytest.raises(trio.TooSlowError, match=rf"message {message.id}\b.*120 s"):
                await h.settle(timeout=120)
            assert trio.current_time() - start == 120
            fake.up()
            await h.settle()
            assert h.calls[-1].outcome == "ok"


def two_worker_feature() -> tuple[Any, pt.PatternWorker[list[str]], pt.PatternWorker[list[str]]]:
    first: pt.PatternWorker[list[str]] = pt.PatternWorker("first", state=[])
    second: pt.PatternWorker[list[str]] = pt.PatternWorker("second", state=[])

    @first.on_command("test/note")
    async def one(ctx: pt.HandlerContext, cmd: Note, state: list[str]) -> None:
        state.append(cmd.text)

    @second.on_command("test/note")
    async def two(ctx: pt.HandlerContext, cmd: Note, state: list[str]) -> None:
        state.append(cmd.text)

    @attrs.frozen
    class Feature:
        def register(self, app: pt.App) -> None:
            app.register_command(Note)
            app.register_worker(first)
            app.register_worker(second)

    return Feature(), first, second


class TestFeatureHarness:
    """worker_harness(w, feature=f) serves w with f's commands and state, and none of
    f's other workers."""

    async def test_other_workers_stay_out(self, autojump_clock: trio.testing.MockClock) -> None:
        feature, first, second = two_worker_feature()
        async with worker_harness(second, feature=feature) as h:
            await h.send(Note("x"))
            assert list(h.app.workers) == ["second"]
            assert second.state == ["x"]
            assert first.state == []
            assert h.app.inspect()["positions"] == {"second": 1}

    async def test_the_worker_given_is_the_one_served(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # A feature that builds its own worker of that name: the harness serves the
        # one the test holds, whose state it shows.
        feature, first, _ = two_worker_feature()
        mine: pt.PatternWorker[list[str]] = pt.PatternWorker("first", state=[])

        @mine.on_command("test/note")
        async def note(ctx: pt.HandlerContext, cmd: Note, state: list[str]) -> None:
            state.append(cmd.text.upper())

        async with worker_harness(mine, feature=feature) as h:
            await h.send(Note("x"))
            assert h.app.workers == {"first": mine}
            assert h.state == ["X"]
            assert first.state == []


class TestFakeServiceScripts:
    """Of down(), outage(seconds) and hang() the latest wins; up() ends them all and
    every pending failure."""

    async def test_outage_after_down(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        fake.down()
        fake.outage(5)
        with pytest.raises(FakeServiceError):
            await fake()
        await trio.sleep(5)
        assert await fake() == "ok"

    async def test_down_after_outage(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        fake.outage(5)
        fake.down()
        await trio.sleep(60)
        assert not fake.available
        with pytest.raises(FakeServiceError):
            await fake()
        fake.up()
        assert await fake() == "ok"

    async def test_outage_after_hang(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        fake.hang()
        fake.outage(5)
        with pytest.raises(FakeServiceError):
            await fake()
        await trio.sleep(5)
        assert await fake() == "ok"
        assert fake.outcomes() == ["error", "ok"]

    async def test_up_clears_every_script(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda: "ok")
        fake.fail_next(3)
        fake.flaky(1.0)
        fake.hang()
        fake.up()
        assert [await fake() for _ in range(5)] == ["ok"] * 5

    async def test_call_times(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(latency=0.5)
        start = trio.current_time()
        await fake(1, key="k")
        await trio.sleep(2)
        await fake(2)
        assert [(c.at - start, c.args, c.kwargs) for c in fake.calls] == [
            (0, (1,), {"key": "k"}),
            (2.5, (2,), {}),
        ]

    @pytest.mark.parametrize(
        ("script", "match"),
        [
            pytest.param(lambda f: f.outage(-1), "outage", id="negative-outage"),
            pytest.param(lambda f: f.fail_next(-2), "fail_next", id="negative-count"),
            pytest.param(lambda f: f.flaky(1.5), "rate", id="rate-above-one"),
            pytest.param(lambda f: FakeService(latency=-1), "latency", id="negative-latency"),
        ],
    )
    def test_bad_scripts_are_refused(self, script: Any, match: str) -> None:
        with pytest.raises(pt.ConfigurationError, match=match):
            script(FakeService())


class TestWallClockUnderMockClock:
    """An app served under trio's MockClock stamps virtual wall time unless given a
    clock: timestamps and resumed retries follow the clock the test drives."""

    async def test_timestamps_follow_the_mock_clock(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = stock_app()
        async with serving(app):
            await trio.sleep(100)
            message = await app.execute(Note("a"))
        assert message.timestamp == datetime.fromtimestamp(EPOCH + trio.current_time(), UTC)

    async def test_an_explicit_clock_is_kept(self, autojump_clock: trio.testing.MockClock) -> None:
        app = stock_app(clock=pt.SystemClock)
        async with serving(app):
            before = time.time()
            message = await app.execute(Note("a"))
        assert message.timestamp.timestamp() >= before

    async def test_the_real_clock_gives_system_time(self) -> None:
        app = stock_app()
        before = time.time()
        async with serving(app):
            message = await app.execute(Note("a"))
        assert before <= message.timestamp.timestamp() <= time.time()

    async def test_a_resumed_retry_waits_exactly_what_is_left(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The retry's due time is stored as wall time; with real wall time under a
        # MockClock the restarted worker would wait the whole delay again.
        times: list[float] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "slow-retry", retry=pt.Backoff(initial=10.0)
        )

        @worker.on_command("test/note")
        async def fail_once(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
            times.append(trio.current_time())
            if len(times) == 1:
                raise ConnectionError("first call fails")

        with pt.testing.memory_database() as database:
            app = stock_app(database=database)
            app.register_worker(worker)
            start = trio.current_time()
            async with serving(app):
                await app.execute(Note("a"))
                await trio.sleep(4)
            app = stock_app(database=database)
            app.register_worker(_fresh(worker, fail_once))
            async with serving(app):
                await app.caught_up()
        assert_times(times, [0, 10], start=start)


def _fresh(worker: pt.PatternWorker[None], handler: Any) -> pt.PatternWorker[None]:
    again: pt.PatternWorker[None] = pt.PatternWorker(worker.name, retry=pt.Backoff(initial=10.0))
    again.on_command("test/note", handler)
    return again
