"""The summary worker, in virtual time, with a fake summariser."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import petrock_trio as pt
from features.items import (
    CreateItem,
    DeleteItem,
    FailSummaryGeneration,
    ItemsFeature,
    RequestSummaryGeneration,
    SetGeneratedSummary,
    UpdateItem,
)
from petrock_trio.testing import memory_database, serving

from .fakes import Summarizer


@pytest.fixture
def database() -> Iterator[str]:
    with memory_database() as url:
        yield url


@pytest.fixture
def file_clock() -> trio.testing.MockClock:
    """Virtual time for a real SQLite file: its writes run in a thread, so time jumps
    only once nothing has run for a moment, not while a write is under way."""
    return trio.testing.MockClock(autojump_threshold=0.01)


def items_app(
    database: str, summarizer: Summarizer, service: pt.ExternalService | None = None
) -> tuple[pt.App, ItemsFeature]:
    """An app with the items feature; its own breaker and bulkhead unless ``service``."""
    app = pt.App(database=database, clock=pt.TrioWallClock(), hooks=[])
    feature = (
        ItemsFeature(summarizer=summarizer)
        if service is None
        else ItemsFeature(summarizer=summarizer, service=service)
    )
    app.register_feature(feature)
    return app, feature


async def emitted(database: str, *commands: type) -> list[object]:
    async with pt.open_log(database) as log:
        names = [pt.command_name(c) for c in commands]
        rows = await log.store.read_after(0, 100_000, names=names)
        return [log.registry.decode(r.name, r.payload) for r in rows]


def statuses(feature: ItemsFeature) -> dict[str, str]:
    return {name: item.summary_status for name, item in feature.state.items.items()}


class TestSummaries:
    """create -> request -> the summariser, called by the request's handler -> summary."""

    async def test_summary_is_asked_for_at_once(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer(latency=2.0)
        app, feature = items_app(database, summarizer)
        async with serving(app):
            start = trio.current_time()
            created = await app.execute(CreateItem("a", content="Hello there."))
            await app.caught_up()
            ready_after = trio.current_time() - start
            item = feature.state.items["a"]
        assert (item.summary, item.summary_status) == ("<Hello there.>", "ready")
        (call,) = summarizer.fake.calls
        assert call.at == start  # no tick to wait for
        assert ready_after == 2.0  # the summariser's latency, nothing more
        assert call.args == ("Hello there.", f"items-summaries:{created.id}")

    async def test_summary_uses_content_at_request_time(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The content as of the request message: an update appended after it (while
        # the summariser works) does not change what is summarised.
        summarizer = Summarizer(latency=1.0)
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="first"))
            await trio.sleep(0.5)
            assert summarizer.in_flight() == 1
            await app.execute(UpdateItem("a", content="second"))
            await app.caught_up()
        assert feature.state.items["a"].summary == "<first>"

    async def test_item_deleted_during_the_call(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The result is refused at emit; the request is done, without an error.
        summarizer = Summarizer(latency=5.0)
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="x"))
            await trio.sleep(1)
            assert summarizer.in_flight() == 1
            await app.execute(DeleteItem("a"))
            await app.caught_up()
            metrics = feature.worker.metrics()
            letters = await app.dead_letters()
        assert feature.state.items == {}
        assert await emitted(database, SetGeneratedSummary, FailSummaryGeneration) == []
        assert (metrics.failed, metrics.dead_lettered, letters) == (0, 0, [])
        assert summarizer.fake.outcomes() == ["ok"]

    async def test_item_deleted_while_its_request_waits(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer()
        summarizer.fake.down()
        app, _ = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="x"))
            await trio.sleep(5)  # three failures: the circuit is open
            await app.execute(DeleteItem("a"))
            summarizer.fake.up()
            await trio.sleep(30)
            await app.caught_up()
            letters = await app.dead_letters()
        assert summarizer.fake.outcomes() == ["error"] * 3  # no call once it was deleted
        assert await emitted(database, SetGeneratedSummary, FailSummaryGeneration) == []
        assert letters == []

    async def test_item_created_again_gets_only_its_own_summary(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer()
        summarizer.fake.down()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="old"))
            await trio.sleep(5)
            await app.execute(DeleteItem("a"))
            again = await app.execute(CreateItem("a", content="new"))
            summarizer.fake.up()
            await trio.sleep(30)
            await app.caught_up()
        assert feature.state.items["a"].summary == "<new>"
        assert await emitted(database, SetGeneratedSummary) == [
            SetGeneratedSummary("a", f"items-summaries:{again.id}", "<new>")
        ]


class TestConcurrency:
    """Items are summarised at once, as many as the service's bulkhead lets through."""

    async def test_hundred_items_at_five_seconds_a_call(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        # One after another this would take 500 s. The bulkhead allows 8 calls at a
        # time (63 s at best); the 16 partitions' shares of the items are uneven.
        summarizer = Summarizer(latency=5.0)
        app, feature = items_app(database, summarizer)
        async with serving(app):
            start = trio.current_time()
            for i in range(100):
                await app.execute(CreateItem(f"item-{i}", content=f"text {i}"))
            await app.caught_up()
            elapsed = trio.current_time() - start
        assert statuses(feature) == {f"item-{i}": "ready" for i in range(100)}
        assert elapsed <= 120
        assert len(summarizer.fake.calls) == 100  # one each: none asked again
        assert summarizer.peak == 8


class TestOutages:
    """An outage delays summaries without losing or repeating any; after 24 h a
    request is given up."""

    async def test_every_item_summarised_after_an_outage(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer(latency=5.0)
        app, feature = items_app(database, summarizer)
        async with serving(app):
            for i in range(40):
                await app.execute(CreateItem(f"item-{i}", content=f"text {i}"))
            await trio.sleep(12)  # some summaries are ready, eight calls in flight
            done_before = sum(s == "ready" for s in statuses(feature).values())
            summarizer.fake.outage(120)
            await trio.sleep(60)
            health = feature.worker.health()
            await trio.sleep(60)
            await app.caught_up()
            letters = await app.dead_letters()
        assert 0 < done_before < 40
        assert health.status is pt.Health.DEGRADED
        assert any("external service 'summarizer' unavailable" in r for r in health.reasons)
        assert statuses(feature) == {f"item-{i}": "ready" for i in range(40)}
        results = await emitted(database, SetGeneratedSummary)
        assert Counter(r.item_id for r in results) == {f"item-{i}": 1 for i in range(40)}  # type: ignore[attr-defined]
        requests = await emitted(database, RequestSummaryGeneration)
        item_of = {r.request_id: r.item_id for r in requests}  # type: ignore[attr-defined]
        assert summarizer.overlaps(key=item_of.__getitem__) == []
        assert "error" in summarizer.fake.outcomes()
        assert letters == []

    async def test_abandoned_after_24_hours(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer()
        summarizer.fake.down()
        reset = 600.0  # a probe every ten minutes
        service = pt.ExternalService("summarizer", failure_threshold=3, reset_timeout=reset)
        app, feature = items_app(database, summarizer, service)
        async with serving(app):
            start = trio.current_time()
            await app.execute(CreateItem("a", content="x"))
            await trio.sleep(24 * 3600)
            assert feature.state.items["a"].summary_status == "pending"
            await trio.sleep(3600)
            await app.caught_up()
            item = feature.state.items["a"]
        (failed,) = await emitted(database, FailSummaryGeneration)
        assert (item.summary_status, item.summary_error) == ("failed", "timeout")
        assert failed == FailSummaryGeneration("a", item.summary_request, "timeout")
        # Attempts at 0, 1 and 3 s (backoff 1, 2 s; the third failure opens the circuit),
        # then one probe each time it half-opens: 3 + 600 k. The first attempt after
        # 86 400 s gives up without a call.
        probes = [3 + reset * k for k in range(1, 200)]
        given_up_at = next(t for t in probes if t > 24 * 3600)
        calls = [0.0, 1.0, 3.0, *(t for t in probes if t < given_up_at)]
        assert [c.at - start for c in summarizer.fake.calls] == calls
        assert given_up_at == 86403.0


class TestRestart:
    """Items created while the app was down get summaries; no request is emitted twice."""

    async def test_created_while_down(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = Summarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("before", content="one"))
            await app.caught_up()
        async with pt.open_log(database, commands=[CreateItem]) as log:
            await log.append(CreateItem("while-down", content="two"))
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.caught_up()
        assert statuses(feature) == {"before": "ready", "while-down": "ready"}
        requests = await emitted(database, RequestSummaryGeneration)
        assert Counter(r.item_id for r in requests) == {"before": 1, "while-down": 1}  # type: ignore[attr-defined]
        assert [c.args[0] for c in summarizer.fake.calls] == ["one", "two"]

    async def test_hard_stop_mid_way_on_a_sqlite_file(
        self, tmp_path: Path, file_clock: trio.testing.MockClock
    ) -> None:
        # Requests whose calls a crash cuts off have no position yet: live again on the
        # next start, asked for again. Those that committed are not.
        database = str(tmp_path / "items.db")
        summarizer = Summarizer(latency=5.0)
        app, _ = items_app(database, summarizer)
        async with serving(app, graceful=False):
            for i in range(40):
                await app.execute(CreateItem(f"item-{i}", content=f"text {i}"))
            await trio.sleep(12)
            cut_off = summarizer.in_flight()
        done_before = len(await emitted(database, SetGeneratedSummary))
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.caught_up()
        assert 0 < done_before < 40
        assert cut_off > 0
        assert statuses(feature) == {f"item-{i}": "ready" for i in range(40)}
        results = await emitted(database, SetGeneratedSummary)
        requests = await emitted(database, RequestSummaryGeneration)
        assert Counter(r.item_id for r in results) == {f"item-{i}": 1 for i in range(40)}  # type: ignore[attr-defined]
        assert Counter(r.item_id for r in requests) == {f"item-{i}": 1 for i in range(40)}  # type: ignore[attr-defined]
        item_of = {r.request_id: r.item_id for r in requests}  # type: ignore[attr-defined]
        assert summarizer.overlaps(key=item_of.__getitem__) == []
        asked = Counter(item_of[s.request_id] for s in summarizer.spans)
        # Asked again: the calls cut off (and a call that had returned, if the stop came
        # while its commit was still being written).
        assert sum(n - 1 for n in asked.values()) >= cut_off
