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
from petrock_trio.testing import (
    FakeService,
    assert_delays,
    assert_times,
    wait_until,
    worker_harness,
)

from .fakes import Summarizer


def feature(fake: FakeService | None = None, *, timeout: float | None = None) -> ItemsFeature:
    fake = fake or FakeService(lambda text, request_id: text.upper())
    service = pt.ExternalService(
        "summarizer", failure_threshold=3, reset_timeout=10.0, timeout=timeout
    )
    return ItemsFeature(summarizer=Summarizer(fake), service=service)


def contents(items: ItemsFeature) -> dict[str, str]:
    """The content of each item as of its latest summary request."""
    return dict(items.state.requested_content)


class TestSummaryWorker:
    """Handler calls, concurrency, retries and injected faults, in virtual time."""

    async def test_handler_calls_and_emits(self, autojump_clock: trio.testing.MockClock) -> None:
        items = feature()
        async with worker_harness(items.worker, feature=items) as h:
            (created,) = await h.send(CreateItem("a", content="text"))
            request = RequestSummaryGeneration("a", f"items-summaries:{created.id}")
            assert [(c.command_type, c.outcome) for c in h.calls] == [
                ("items/create", "ok"),
                ("items/request-summary-generation", "ok"),
            ]
            assert h.emitted == [request, SetGeneratedSummary("a", request.request_id, "TEXT")]
            assert contents(items) == {"a": "text"}
            assert items.state.items["a"].summary == "TEXT"

    async def test_items_are_summarised_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService(lambda text, request_id: text.upper(), latency=5.0)
        items = feature(fake)
        async with worker_harness(items.worker, feature=items) as h:
            start = trio.current_time()
            await h.send(*(CreateItem(name, content=name) for name in "abc"))
            assert_times([c.at for c in fake.calls], [0, 0, 0], start=start)
            assert trio.current_time() - start == 5.0
            assert {n: i.summary for n, i in items.state.items.items()} == {
                "a": "A",
                "b": "B",
                "c": "C",
            }
            assert h.periodic_runs == []  # nothing polls

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
            assert SetGeneratedSummary("a", request_id, "X") in h.emitted

    async def test_service_timeouts_degrade_then_recover(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fake = FakeService(lambda text, request_id: "ok")
        fake.hang()
        items = feature(fake, timeout=2.0)
        async with worker_harness(items.worker, feature=items) as h:
            await h.send(CreateItem("a", content="x"), settle=False)
            # Attempts at 0, 3 and 7 s each time out after 2 s; the third opens the circuit.
            await h.advance(10)
            assert h.health().status is pt.Health.DEGRADED
            assert items.state.items["a"].summary_status == "pending"
            fake.up()
            await h.advance(15)  # the probe at 19 s answers
            await h.settle()
            assert items.state.items["a"].summary_status == "ready"
            assert not any("unavailable" in r for r in h.health().reasons)
            await h.advance(60)  # the timeouts leave the error rate's window
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

    async def test_a_slow_summariser_loses_nothing(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # 12 s a call: a periodic run of the former worker timed out at 30 s with the
        # results it had, and asked again later. Each result now commits on its own.
        fake = FakeService(lambda text, request_id: f"<{text}>", latency=12.0)
        items = feature(fake)
        async with worker_harness(items.worker, feature=items) as h:
            start = trio.current_time()
            await h.send(*(CreateItem(name, content=name) for name in "abc"))
            assert trio.current_time() - start == 12.0
            assert {n: i.summary for n, i in items.state.items.items()} == {
                "a": "<a>",
                "b": "<b>",
                "c": "<c>",
            }
            assert fake.outcomes() == ["ok"] * 3


async def test_restart_replays_on_a_real_log(tmp_path: Path) -> None:
    fake = FakeService(lambda text, request_id: "summary")
    fake.down()
    items = feature(fake)
    async with worker_harness(items.worker, feature=items, database=str(tmp_path / "i.db")) as h:
        await h.app.execute(CreateItem("a", content="x"))
        await wait_until(lambda: fake.calls)  # the first attempt failed: a retry is due
        before = contents(items)
        await h.restart()
        assert contents(items) == before == {"a": "x"}  # rebuilt by replay
        assert [c.outcome for c in h.calls_for("items/create", live=False)] == ["replay"]
        fake.up()
        await h.settle()
        assert items.state.items["a"].summary == "summary"
        assert fake.outcomes()[-1] == "ok"
        assert min((await h.positions()).values()) >= 1
