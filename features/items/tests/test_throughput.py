"""The summary worker's throughput on a real SQLite log, against the floor every worker
must beat (100 messages a second: a floor far below what it does, not a timing test)."""

from __future__ import annotations

from pathlib import Path

from features.items import CreateItem, ItemsFeature
from petrock_trio.testing import Throughput, assert_throughput, measure_throughput

from .fakes import Summarizer

ITEMS = 300


async def test_summary_worker_beats_the_floor(tmp_path: Path) -> None:
    summarizer = Summarizer()  # answers at once: the figure is the worker's own
    feature = ItemsFeature(summarizer=summarizer)
    creates = [CreateItem(f"item-{i}", content=f"Text number {i}.") for i in range(ITEMS)]
    result = await measure_throughput(
        lambda: feature.worker, creates, count=ITEMS, directory=tmp_path, feature=feature
    )
    assert {i.summary_status for i in feature.state.items.values()} == {"ready"}
    assert len(feature.state.items) == ITEMS
    assert len(summarizer.fake.calls) == ITEMS
    # Each create is two messages for the worker to handle, each with a commit: the
    # create (which emits the request) and the request (which calls the summariser and
    # emits the result). The figure counts what it handled, in the time measured.
    handled = feature.worker.metrics().processed
    assert handled == 2 * ITEMS
    assert_throughput(Throughput(handled, result.seconds), minimum=100)
