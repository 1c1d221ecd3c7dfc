"""The summary worker, in virtual time, with a fake summariser."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import petrock_trio as pt
from features.items import (
    CreateItem,
    DeleteItem,
    ItemsFeature,
    RequestSummaryGeneration,
    UpdateItem,
)
from petrock_trio.testing import FakeService, memory_database, serving


class FakeSummarizer:
    def __init__(self) -> None:
        self.fake = FakeService(lambda text, request_id: f"summary of {text!r}")

    async def summarize(self, text: str, request_id: str) -> str:
        result: str = await self.fake(text, request_id)
        return result


@pytest.fixture
def database() -> Iterator[str]:
    with memory_database() as url:
        yield url


def items_app(
    database: str, summarizer: FakeSummarizer, *, interval: float = 1.0, threshold: int = 3
) -> tuple[pt.App, ItemsFeature]:
    app = pt.App(database=database, clock=pt.TrioWallClock())
    feature = ItemsFeature(
        summarizer=summarizer,
        service=pt.ExternalService("summarizer", failure_threshold=threshold, reset_timeout=10.0),
        interval=interval,
    )
    app.register_feature(feature)
    return app, feature


async def emitted(database: str, name: str) -> list[object]:
    async with pt.open_log(database) as log:
        rows = await log.store.read_after(0, 100_000, names=[name])
        return [log.registry.decode(r.name, r.payload) for r in rows]


class TestSummaries:
    """create -> request -> periodic work -> summary stored on the item."""

    async def test_summary_on_the_next_periodic_run(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            start = trio.current_time()
            created = await app.execute(CreateItem("a", content="Hello there."))
            await app.caught_up()
            assert feature.state.items["a"].summary_status == "pending"
            await trio.sleep(1.0)
            await app.caught_up()
            item = feature.state.items["a"]
        assert (item.summary, item.summary_status) == ("summary of 'Hello there.'", "ready")
        (call,) = summarizer.fake.calls
        assert call.at - start == 1.0
        assert call.args == ("Hello there.", f"items-summaries:{created.id}")

    async def test_summary_uses_content_at_request_time(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="first"))
            await app.caught_up()
            await app.execute(UpdateItem("a", content="second"))
            await trio.sleep(1.5)
            await app.caught_up()
        assert feature.state.items["a"].summary == "summary of 'first'"

    async def test_deleted_items_are_not_summarised(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("a", content="x"))
            await app.execute(DeleteItem("a"))
            await trio.sleep(3)
            await app.caught_up()
            assert feature.worker.state.pending == {}
        assert summarizer.fake.calls == []


class TestOutagesAndTimeouts:
    """A failing summariser delays summaries; after 24 h a request is abandoned."""

    async def test_outage_delays_not_loses(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            summarizer.fake.outage(25)
            for name in "abc":
                await app.execute(CreateItem(name, content=f"text {name}"))
            await trio.sleep(5)
            health = feature.worker.health()
            assert health.status is pt.Health.DEGRADED
            assert any("summarizer" in r for r in health.reasons)
            assert {n: i.summary_status for n, i in feature.state.items.items()} == dict.fromkeys(
                "abc", "pending"
            )
            await trio.sleep(40)
            await app.caught_up()
            statuses = {n: i.summary_status for n, i in feature.state.items.items()}
            skipped = feature.worker.metrics().periodic_skipped
        assert statuses == {"a": "ready", "b": "ready", "c": "ready"}
        assert skipped > 0  # periodic work was skipped while the circuit was open
        requests = await emitted(database, "items/set-generated-summary")
        assert sorted(r.item_id for r in requests) == ["a", "b", "c"]  # type: ignore[attr-defined]

    async def test_abandoned_after_24_hours(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        summarizer.fake.down()
        app, feature = items_app(database, summarizer, interval=60.0, threshold=1_000_000)
        async with serving(app):
            start = trio.current_time()
            await app.execute(CreateItem("a", content="x"))
            await trio.sleep(24 * 3600)
            assert feature.state.items["a"].summary_status == "pending"
            await trio.sleep(60)
            await app.caught_up()
            failed_at = trio.current_time() - start
            item = feature.state.items["a"]
        # Runs every 60 s from 0; at 86400 s the request is exactly 24 h old (not older),
        # so the run at 86460 s abandons it.
        assert (item.summary_status, item.summary_error) == ("failed", "timeout")
        assert failed_at == 86460.0
        assert len(summarizer.fake.calls) == 24 * 60  # one call a run, runs 60 .. 86400


class TestRestart:
    """Items created while the app was down get summaries; no request is emitted twice."""

    async def test_created_while_down(
        self, database: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        summarizer = FakeSummarizer()
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await app.execute(CreateItem("before", content="one"))
            await trio.sleep(1.5)
        async with pt.open_log(database, commands=[CreateItem]) as log:
            await log.append(CreateItem("while-down", content="two"))
        app, feature = items_app(database, summarizer)
        async with serving(app):
            await trio.sleep(1.5)
            await app.caught_up()
            statuses = {n: i.summary_status for n, i in feature.state.items.items()}
        assert statuses == {"before": "ready", "while-down": "ready"}
        requests = await emitted(database, "items/request-summary-generation")
        assert Counter(r.item_id for r in requests if isinstance(r, RequestSummaryGeneration)) == {
            "before": 1,
            "while-down": 1,
        }
        assert [c.args[0] for c in summarizer.fake.calls] == ["one", "two"]
