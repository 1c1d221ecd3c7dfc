"""The summary worker under petrock_trio.testing's harness: calls, timing, faults, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import petrock_trio as pt
from features.items import (
    CreateItem,
    ItemsFeature,
    RequestSummaryGeneration,
    SetGeneratedSummary,
)
from petrock_trio.testing import FakeService, assert_delays, assert_times, worker_harness


class Summarizer:
    def __init__(self, fake: FakeService) -> None:
        self.fake = fake

    async def summarize(self, text: str, request_id: str) -> str:
        result: str = await self.fake(text, request_id)
        return result


def feature(fake: FakeService | None = None, *, timeout: float | None = None) -> ItemsFeature:
    fake = fake or FakeService(lambda text, request_id: text.upper())
    service = pt.ExternalService(
        "summarizer", failure_threshold=3, reset_timeout=10.0, timeout=timeout
    )
    return ItemsFeature(summarizer=Summarizer(fake), service=service, interval=1.0)


class TestSummaryWorker:
    """Handler calls, periodic timing, retries and injected faults, in virtual time."""

    async def test_handler_calls_and_emits(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            (created,) = await h.send(CreateItem("a", content="text"))
            request = RequestSummaryGeneration("a", f"items-summaries:{created.id}")
            assert [(c.command_type, c.outcome) for c in h.calls] == [
                ("items/create", "ok"),
                ("items/request-summary-generation", "ok"),
            ]
            assert h.emitted == [request]
            assert list(h.state.pending) == [request.request_id]
            await h.advance(1)
            await h.settle()
            assert h.emitted[-1] == SetGeneratedSummary("a", request.request_id, "TEXT")
            assert items.state.items["a"].summary == "TEXT"

    async def test_periodic_timing(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            start = trio.current_time()
            await h.advance(3.5)
            assert_times(h.periodic_times(), [0, 1, 2, 3], start=start)

    async def test_network_errors_are_retried(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            with h.failing(
                "items/request-summary-generation",
                times=2,
                error=lambda: ConnectionError("connection reset"),
            ):
                await h.send(CreateItem("a", content="x"))
            request_id = h.emitted[0].request_id
            (request_call,) = [c for c in h.calls if c.outcome == "ok" and c.attempt == 3]
            assert_delays(h.attempt_times(request_call.message_id), [1, 2])
            await h.advance(1)
            await h.settle()
            assert SetGeneratedSummary("a", request_id, "X") in h.emitted

    async def test_service_timeouts_degrade_then_recover(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService(lambda text, request_id: "ok")
        fake.hang()
        items = feature(fake, timeout=2.0)
        async with worker_harness(items.worker, feature=items) as h:
            await h.send(CreateItem("a", content="x"))
            await h.advance(10)
            assert h.health().status is pt.Health.DEGRADED
            assert items.state.items["a"].summary_status == "pending"
            fake.up()
            await h.advance(15)
            await h.settle()
            assert items.state.items["a"].summary_status == "ready"
            assert h.health().status is pt.Health.HEALTHY

    async def test_invalid_command_in_the_log(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            bad = await h.append_raw("items/create", b'{"name": 5, "content": "x"}')
            await h.send(CreateItem("b", content="y"))
            (letter,) = await h.dead_letters()
            assert letter.message_id == bad
            assert list(items.state.items) == ["b"]

    async def test_refused_command(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            with pytest.raises(pt.ValidationError):
                await h.send(CreateItem(""))
            assert h.calls == []


async def test_restart_replays_on_a_real_log(tmp_path: Path) -> None:
    fake = FakeService(lambda text, request_id: "summary")
    fake.down()
    items = feature(fake)
    async with worker_harness(items.worker, feature=items, database=str(tmp_path / "i.db")) as h:
        await h.send(CreateItem("a", content="x"))
        pending = dict(h.state.pending)
        await h.restart()
        assert h.state.pending == pending  # rebuilt by replay
        assert [c.outcome for c in h.calls_for("items/create", live=False)] == ["replay"]
        fake.up()
        await h.run_periodic()
        assert items.state.items["a"].summary == "summary"
        assert (await h.positions())["items-summaries"] >= 2


async def test_results_lost_with_a_failed_run_are_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 12 s a call: the third call of a run overruns the 30 s periodic timeout, and the
    # run's two results are lost with it. They are asked for again, not forgotten.
    fake = FakeService(lambda text, request_id: f"<{text}>", latency=12.0)
    items = feature(fake)
    async with worker_harness(items.worker, feature=items) as h:
        for name in "abc":
            await h.app.execute(CreateItem(name, content=name))
        await h.advance(600)
        await h.settle()
        assert {n: i.summary for n, i in items.state.items.items()} == {
            "a": "<a>",
            "b": "<b>",
            "c": "<c>",
        }
        assert [error for _, error in h.periodic_runs if error is not None]  # a run timed out
