"""Partitions spread over the processes sharing a log, and move when one stops.

Two app objects on one database stand for two processes (each has its own store
connections); tests/cluster runs real processes and kills one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio.testing import memory_database, serving, wait_until
from tests.support import Add, Echoed, Note

PARTITIONS = 8


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "log.db")


def build(database: str) -> pt.App:
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "spread", partitions=PARTITIONS, key=lambda cmd: cmd.key
    )

    @worker.on_command(Add)
    async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    app = pt.App(database, leases=True, lease_ttl=2.0, hooks=[])
    for cls in (Add, Echoed, Note):
        app.register_command(cls)
    app.register_worker(worker)
    return app


def held(app: pt.App) -> set[str]:
    leases: dict[str, Any] = app.inspect()["leases"]
    return set(leases["held"])


async def echoes(database: str) -> Counter[int]:
    async with pt.open_log(database, commands=[Add, Echoed, Note]) as log:
        rows = await log.read_after(0, 100_000)
    return Counter(m.command.source_id for m in rows if m.name == "test/echoed")


async def test_partitions_spread_and_move(database: str) -> None:
    first, second = build(database), build(database)
    sources: list[int] = []
    async with serving(first):
        everything = {f"spread#{i}/{PARTITIONS}" for i in range(PARTITIONS)}
        assert held(first) == everything
        async with serving(second):
            # The first hands over half as soon as it sees the second member.
            await wait_until(
                lambda: len(held(first)) == len(held(second)) == PARTITIONS // 2, timeout=30
            )
            assert held(first) | held(second) == everything
            assert first.inspect()["leases"]["handoffs"] >= PARTITIONS // 2

            def holders() -> set[str]:
                report = first.inspect()["workers"]["spread"]["partitions"]
                return {p["holder"] for p in report}

            # The other process's partitions show its holder (read at the next round).
            await wait_until(lambda: len(holders()) == 2, timeout=30)
            assert holders() == {
                first.inspect()["leases"]["holder"],
                second.inspect()["leases"]["holder"],
            }
            for i in range(40):
                app = (first, second)[i % 2]
                sources.append((await app.execute(Add(f"k{i}"))).id)
            await first.caught_up()
            await second.caught_up()
            # Each process waited for the partitions it runs; the log has every echo.
            assert sum((await echoes(database)).values()) == len(sources)
        # The second stopped gracefully: the first runs every partition again.
        await wait_until(lambda: held(first) == everything, timeout=30)
        sources.extend([(await first.execute(Add(f"later{i}"))).id for i in range(10)])
        await first.caught_up()
    seen = await echoes(database)
    assert set(seen.values()) == {1}
    assert sorted(seen) == sorted(sources)


async def test_a_process_that_joins_has_its_share_a_holder_round_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Rounds every 0.4 s (ttl 2 s). The first process, alone, holds every partition;
    the second joins 0.1 s after the first's round at 0: the first sees it at 0.4 and
    hands half over, which the second, short of its share, takes at its next look,
    within a fifth of a round, not at its own next round (0.5)."""
    with memory_database() as database:
        first, second = build(database), build(database)
        async with serving(first):
            started = trio.current_time()
            assert len(held(first)) == PARTITIONS
            await trio.sleep_until(started + 0.1)
            async with serving(second):
                await trio.sleep_until(started + 0.39)
                assert len(held(second)) == 0
                await trio.sleep_until(started + 0.4 + 0.4 / 5 + 0.01)
                assert len(held(first)) == len(held(second)) == PARTITIONS // 2
