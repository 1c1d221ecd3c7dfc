"""petrock_trio.testing: the harness, fakes, faults, timing assertions, strategies, plugin."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio.testing import (
    FakeService,
    Throughput,
    assert_delays,
    assert_throughput,
    assert_times,
    measure_throughput,
    worker_harness,
)
from petrock_trio.testing.strategies import bad_payloads, command_sequences, commands_from
from tests.support import Add, Echoed, Note, Tally

ROOT = Path(__file__).resolve().parent.parent


def tally_worker(*, periodic: bool = False, **kw: Any) -> pt.PatternWorker[Tally]:
    worker: pt.PatternWorker[Tally] = pt.PatternWorker("tally", state=Tally(), **kw)

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Tally) -> None:
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    async def tick(ctx: pt.PeriodicContext, state: Tally) -> None:
        ctx.emit(Note(f"total {sum(state.totals.values())}"))

    if periodic:
        worker.set_periodic_work(tick, interval=2.0)
    return worker


COMMANDS = [Add, Echoed, Note]


class TestHarness:
    """The harness runs a worker as the engine does and records what it did."""

    async def test_calls_emits_state(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS) as h:
            (message,) = await h.send(Add("a", 2))
            await h.send(Add("a", 3), Note("ignored"))
            assert h.state.totals == {"a": 5}
            assert [(c.command_type, c.message_id, c.outcome) for c in h.calls] == [
                ("test/add", message.id, "ok"),
                ("test/add", 3, "ok"),
            ]
            assert Echoed(message.id, "a") in h.emitted
            assert h.metrics().processed == 2
            assert h.health().status is pt.Health.HEALTHY

    async def test_periodic_timing(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(tally_worker(periodic=True), commands=COMMANDS) as h:
            start = trio.current_time()
            await h.advance(6.5)
            assert_times(h.periodic_times(), [0, 2, 4, 6], start=start)
            await h.run_periodic()
            assert len(h.periodic_runs) == 5
            assert h.emitted[-1] == Note("total 0")

    async def test_retry_delays_and_injected_errors(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS) as h:
            with h.failing("test/add", times=3, error=lambda: ConnectionError("network down")):
                (message,) = await h.send(Add("a"))
            assert [c.outcome for c in h.calls] == ["error", "error", "error", "ok"]
            assert isinstance(h.calls[0].error, ConnectionError)
            assert_delays(h.attempt_times(message.id), [1, 2, 4])
            assert h.state.totals == {"a": 1}
            assert [e["event"] for e in h.logs].count("petrock.handler.failed") == 3

    async def test_timeout_and_invalid_command(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        worker = tally_worker(handler_timeout=2.0, retry=pt.Backoff(max_attempts=2))
        async with worker_harness(worker, commands=COMMANDS) as h:
            with h.failing("test/add", times=1, error=lambda: TimeoutError("slow service")):
                await h.send(Add("a"))
            assert [c.outcome for c in h.calls] == ["error", "ok"]
            bad = await h.append_raw("test/add", b'{"key": 7}')
            (letter,) = await h.dead_letters()
            assert (letter.message_id, letter.attempts) == (bad, 1)
            assert "DecodeError" in letter.error

    async def test_restart_replays(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS) as h:
            first = await h.send(Add("a"), Add("b"))
            await h.restart()
            assert h.state.totals == {"a": 1, "b": 1}
            ids = [m.id for m in first]
            assert [c.message_id for c in h.calls_for("test/add", live=False)] == ids
            (third,) = await h.send(Add("c"))
            assert [c.message_id for c in h.calls_for("test/add")] == [*ids, third.id]
            await h.restart()
            assert (await h.positions())["tally"] == h.app.inspect()["head"]

    async def test_hard_restart_keeps_exactly_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS) as h:
            await h.send(Add("a"))
            await h.restart(hard=True)
            await h.send(Add("b"))
            echoes = [e for e in h.emitted if isinstance(e, Echoed)]
            assert echoes == [Echoed(1, "a"), Echoed(3, "b")]

    async def test_real_file(self, tmp_path: Path) -> None:
        db = str(tmp_path / "real.db")
        async with worker_harness(tally_worker(), commands=COMMANDS, database=db) as h:
            await h.send(Add("a"))
            await h.restart()
            assert h.state.totals == {"a": 1}
        assert await trio.Path(db).exists()


class TestFaults:
    """A FaultyStore fails writes and corrupts rows; the engine loses nothing."""

    async def test_failed_commit_is_retried(self, autojump_clock: trio.testing.MockClock) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            await h.send(Add("x"))
            # Fail the next transaction that records a worker's position: its emit.
            h.store.fail_commits(1, when=lambda commits: any(c.positions for c in commits))
            await h.send(Add("a"))
            assert [c.outcome for c in h.calls_for("test/add")] == ["ok", "error", "ok"]
            assert [e for e in h.emitted if isinstance(e, Echoed)] == [
                Echoed(1, "x"),
                Echoed(3, "a"),
            ]
            assert h.store.failed_commits == 1

    async def test_corrupt_row_is_dead_lettered(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        async with worker_harness(tally_worker(), commands=COMMANDS, faults=True) as h:
            assert h.store is not None
            h.store.corrupt(1)
            await h.append(Add("a"), Add("b"))
            (letter,) = await h.dead_letters()
            assert letter.message_id == 1
            assert h.state.totals == {"b": 1}


class TestFakeService:
    """Fakes script failures, outages, latency and flakiness on Trio's clock."""

    async def test_scripting(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService(lambda x: x * 2, latency=0.5)
        assert await fake(2) == 4
        fake.fail_next(2)
        for _ in range(2):
            with pytest.raises(pt.testing.FakeServiceError):
                await fake(1)
        fake.outage(10)
        with pytest.raises(pt.testing.FakeServiceError):
            await fake(1)
        await trio.sleep(10)
        assert await fake(3) == 6
        assert fake.outcomes() == ["ok", "error", "error", "error", "ok"]
        assert fake.calls[1].at - fake.calls[0].at == 0.5

    async def test_flaky_rate_is_repeatable(self, autojump_clock: trio.testing.MockClock) -> None:
        def run() -> FakeService:
            fake = FakeService()
            fake.flaky(0.3, seed=7)
            return fake

        outcomes = []
        for fake in (run(), run()):
            for _ in range(200):
                with contextlib.suppress(pt.testing.FakeServiceError):
                    await fake()
            outcomes.append(fake.outcomes())
        assert outcomes[0] == outcomes[1]
        assert 40 <= outcomes[0].count("error") <= 80

    async def test_hang_is_cut_by_timeouts(self, autojump_clock: trio.testing.MockClock) -> None:
        fake = FakeService()
        fake.hang()
        with trio.move_on_after(3) as scope:
            await fake()
        assert scope.cancelled_caught
        assert fake.outcomes() == ["hang"]


class TestAssertionHelpers:
    """Each helper passes on a match and fails, with a message, when it should."""

    def test_assert_times(self) -> None:
        assert_times([10.0, 12.0], [0, 2], start=10.0)
        with pytest.raises(AssertionError, match=r"times \[0, 2\] != expected \[0, 3\]"):
            assert_times([10.0, 12.0], [0, 3], start=10.0)
        with pytest.raises(AssertionError):
            assert_times([1.0], [1.0, 2.0])

    def test_assert_delays(self) -> None:
        assert_delays([0, 1, 3, 7], [1, 2, 4])
        with pytest.raises(AssertionError, match="delays"):
            assert_delays([0, 1, 3, 7], [1, 2, 5])
        with pytest.raises(AssertionError):
            assert_delays([0, 1], [1, 2])

    def test_assert_throughput(self) -> None:
        assert_throughput(Throughput(1000, 2.0), minimum=100)
        with pytest.raises(AssertionError, match="below the minimum of 100"):
            assert_throughput(Throughput(50, 1.0))


class TestThroughputHelper:
    """measure_throughput fills a real log and counts every message handled."""

    async def test_measure(self, tmp_path: Path) -> None:
        handled = 0

        def factory() -> pt.PatternWorker[None]:
            worker: pt.PatternWorker[None] = pt.PatternWorker("count")

            @worker.on_command("test/note")
            async def count(ctx: pt.HandlerContext, cmd: Note, state: None) -> None:
                nonlocal handled
                handled += 1

            return worker

        result = await measure_throughput(
            factory, [Note("a"), Add("b")], count=3000, directory=tmp_path
        )
        assert (result.messages, handled) == (3000, 1500)
        assert result.seconds > 0
        assert "msg/s" in str(result)


class TestStrategies:
    """Strategies build valid commands from classes or a registry; bad payloads never decode."""

    @given(st.data())
    def test_sequences_encode(self, data: st.DataObject) -> None:
        registry = pt.CommandRegistry()
        for cls in COMMANDS:
            registry.register(cls)
        sequence = data.draw(command_sequences(*COMMANDS, max_size=10))
        single = data.draw(commands_from(registry))
        for cmd in [*sequence, single]:
            name, payload = registry.encode(cmd)
            assert registry.decode(name, payload) == cmd

    @given(bad_payloads())
    def test_bad_payloads(self, payload: bytes) -> None:
        registry = pt.CommandRegistry()
        registry.register(Note)
        with pytest.raises(pt.DecodeError):
            registry.decode("test/note", payload)


class TestPlugin:
    """The pytest plugin's fixtures are there without any conftest."""

    async def test_fixtures(
        self,
        petrock_harness: Callable[..., Any],
        petrock_database: str,
        fake_service: Callable[..., FakeService],
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        assert petrock_database.startswith("file:")
        service = fake_service(lambda: "ok")
        assert await service() == "ok"
        async with petrock_harness(
            tally_worker(), commands=COMMANDS, database=petrock_database
        ) as h:
            await h.send(Add("a"))
            assert h.state.totals == {"a": 1}
