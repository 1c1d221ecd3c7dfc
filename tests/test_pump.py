"""The log pump: each message read once, fan-out by name, slow subscribers detached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio._log import MessageLog
from petrock_trio._message import Page
from petrock_trio._pump import LogPump
from petrock_trio.stores import Commit, open_store
from petrock_trio.testing import FaultyStore, serving
from tests.support import Add, Note, Unrouted


def recording_worker(
    name: str, routes: list[str], seen: list[int], delay: float = 0.0, **kw: Any
) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker(name, **kw)

    async def handler(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:
        if delay:
            await trio.sleep(delay)
        seen.append(ctx.message.id)

    for route in routes:
        worker.on_command(route, handler)
    return worker


def app_with(*workers: pt.PatternWorker[Any], database: str = ":memory:", **kw: Any) -> pt.App:
    app = pt.App(database=database, **kw)
    for cls in (Add, Note, Unrouted):
        app.register_command(cls)
    for worker in workers:
        app.register_worker(worker)
    return app


class TestFanOut:
    """Every worker sees exactly its routed messages, in id order; rows are read once."""

    async def test_routing_and_order(self) -> None:
        adds: list[int] = []
        notes: list[int] = []
        both: list[int] = []
        app = app_with(
            recording_worker("adds", ["test/add"], adds),
            recording_worker("notes", ["test/note"], notes),
            recording_worker("both", ["test/add", "test/note"], both),
        )
        async with serving(app):
            for i in range(30):
                cmd = Add(str(i)) if i % 3 == 0 else Note(str(i)) if i % 3 == 1 else Unrouted(i)
                await app.execute(cmd)
            await app.caught_up()
            positions = {name: w.position for name, w in app.workers.items()}
        assert adds == list(range(1, 31, 3))
        assert notes == list(range(2, 31, 3))
        assert both == sorted(adds + notes)
        assert positions == {"adds": 30, "notes": 30, "both": 30}

    async def test_each_row_read_once_with_many_workers(self, tmp_path: Path) -> None:
        db = str(tmp_path / "fan.db")
        async with pt.open_log(db, commands=[Add, Note]) as log:
            await log.append(*[Add(str(i)) if i % 2 else Note(str(i)) for i in range(2000)])
        seen: dict[str, list[int]] = {}
        workers = []
        for n in range(20):
            seen[f"w{n}"] = []
            workers.append(
                recording_worker(f"w{n}", ["test/add" if n % 2 else "test/note"], seen[f"w{n}"])
            )
        app = app_with(*workers, database=db)
        async with serving(app) as running:
            await running.caught_up()
            report = running.inspect()
        assert report["store"]["rows_read"] == 2000
        assert report["pump"]["rows_read"] == 2000
        for n in range(20):
            assert len(seen[f"w{n}"]) == 1000

    async def test_slow_worker_does_not_delay_another(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        fast: list[int] = []
        slow: list[int] = []
        app = app_with(
            recording_worker("fast", ["test/add"], fast),
            recording_worker("slow", ["test/add"], slow, delay=4.0, page_capacity=2),
        )
        async with serving(app):
            start = trio.current_time()
            for i in range(50):
                await app.execute(Add(str(i)))
            await trio.testing.wait_all_tasks_blocked()
            fast_done = trio.current_time() - start
            assert fast == list(range(1, 51))
            assert len(slow) <= 1
            await app.caught_up()
            slow_done = trio.current_time() - start
            stats = app.workers["slow"].statistics()  # type: ignore[union-attr]
        assert fast_done == 0
        assert slow_done == 50 * 4.0
        assert slow == list(range(1, 51))
        assert stats.detaches >= 1  # it fell behind, read on its own, and caught up

    async def test_unrouted_messages_only_advance_position(self) -> None:
        seen: list[int] = []
        app = app_with(recording_worker("adds", ["test/add"], seen))
        async with serving(app):
            for i in range(5):
                await app.execute(Unrouted(i))
            await app.caught_up()
            worker = app.workers["adds"]
            assert worker.position == 5
            assert worker.metrics().processed == 0
        assert seen == []


class TestCatchUpShared:
    """Runs that start behind the pump (leased workers and partitions start once their
    lease is held, after the pump) read the log they missed once between them."""

    async def test_partitions_catching_up_read_each_row_once(self, tmp_path: Path) -> None:
        db = str(tmp_path / "catch-up.db")
        async with pt.open_log(db, commands=[Add, Note]) as log:
            await log.append(*[Note(str(i)) for i in range(3000)])
        seen: list[int] = []
        worker = recording_worker(
            "split", ["test/note"], seen, partitions=16, key=lambda cmd: cmd.text
        )
        app = app_with(worker, database=db, leases=True)
        async with serving(app) as running:
            await running.caught_up()
            report = running.inspect()
        assert sorted(seen) == list(range(1, 3001))
        # The pump started at the head (nothing was attached yet): the partitions read
        # the 3,000 rows they missed, once for all sixteen.
        assert report["pump"]["rows_read"] == 0
        assert report["store"]["rows_read"] == 3000

    async def test_a_cancelled_read_leaves_the_others_to_read(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = app_with()
        store = FaultyStore(open_store(":memory:"))
        log = MessageLog(store, app.registry, app.clock)
        await log.open()
        await log.append(*[Note(str(i)) for i in range(10)])
        pump = LogPump(log, page_size=4)
        pump.position.value = log.head.value
        store.stall_reads(10.0)
        pages: dict[str, Page] = {}
        start = trio.current_time()

        async def read(who: str, scope: trio.CancelScope | None = None) -> None:
            with scope or trio.CancelScope():
                pages[who] = await pump.read_page(0, ["test/note"])

        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()
            nursery.start_soon(read, "first", first)
            await trio.testing.wait_all_tasks_blocked()  # it is reading
            nursery.start_soon(read, "second")
            nursery.start_soon(read, "third")
            await trio.sleep(1.0)
            first.cancel()  # the task whose read the others wait for
        assert "first" not in pages
        assert pages["second"] is pages["third"]  # one read between them, from 1 s
        assert trio.current_time() - start == 11.0
        assert [r.id for r in pages["second"].rows] == [1, 2, 3, 4]
        # A feed further into that page is served from it, with no read.
        store.stall_reads(0)
        assert await pump.read_page(2, ["test/note"]) is pages["second"]
        assert await pump.read_page(2, None) is not pages["second"]  # read for fewer names
        await store.aclose()


class TestHandedRows:
    """The rows this process appends reach the feeds without a read, when nothing of
    another process's comes between; otherwise the pump reads, and misses nothing."""

    async def test_own_rows_are_not_read_back(self, tmp_path: Path) -> None:
        seen: list[int] = []
        app = app_with(
            recording_worker("all", ["test/add", "test/note"], seen),
            database=str(tmp_path / "own.db"),
        )
        async with serving(app) as running:
            for i in range(20):
                await running.execute(Add(str(i)))
            await running.execute_many([Note(str(i)) for i in range(30)])
            await running.caught_up()
            report = running.inspect()
        assert seen == list(range(1, 51))
        assert (report["pump"]["rows_handed"], report["pump"]["rows_read"]) == (50, 0)

    async def test_rows_of_another_process_first_are_read(self, tmp_path: Path) -> None:
        db = str(tmp_path / "shared.db")
        seen: list[int] = []
        app = app_with(recording_worker("all", ["test/add", "test/note"], seen), database=db)
        async with serving(app) as running, pt.open_log(db, commands=[Add, Note]) as other:
            await running.execute(Add("mine"))
            for round_ in range(5):
                # Appended by another log on the file: this app's log learns of them
                # only from its watch, and its own next rows come after them.
                await other.append(Note(f"theirs {round_}"), Note("and"))
                await running.execute(Add(str(round_)))
            await running.caught_up()
            report = running.inspect()
        assert seen == list(range(1, 17))
        assert report["pump"]["rows_read"] >= 10  # theirs at least, each once at most
        assert report["pump"]["rows_read"] + report["pump"]["rows_handed"] >= 16

    @settings(max_examples=60, deadline=None)
    @given(
        steps=st.lists(
            st.one_of(
                st.tuples(st.just("own"), st.integers(1, 7)),
                st.tuples(st.just("theirs"), st.integers(1, 7), st.booleans()),
                st.tuples(st.just("settle"), st.just(0)),
            ),
            max_size=25,
        ),
        page_size=st.integers(1, 6),
    )
    async def test_any_interleaving_delivers_each_row_once_in_order(
        self, steps: list[tuple[Any, ...]], page_size: int
    ) -> None:
        """Own commits (handed over), another writer's (seen at once or later, as a
        watch would), the pump running between them or not: each row once, in order."""
        app = app_with()
        store = open_store(":memory:")
        log = MessageLog(store, app.registry, app.clock)
        await log.open()
        pump = LogPump(log, page_size=page_size)
        feed = pump.feed("sub", None, 0)
        got: list[int] = []
        contiguous: list[bool] = []

        async def subscriber() -> None:
            while True:
                page = await feed.next_page()
                contiguous.append(page.after <= feed.position.value)
                got.extend(r.id for r in page.rows if r.id > feed.position.value)
                feed.advance(page.last)

        async with trio.open_nursery() as nursery:
            await nursery.start(log.run_writer)
            await nursery.start(pump.run)
            nursery.start_soon(subscriber)
            for kind, count, *rest in steps:
                if kind == "own":
                    await log.append(*[Note(str(i)) for i in range(count)])
                elif kind == "theirs":
                    commit = Commit(appends=[("test/note", b'{"text":"x"}')] * count)
                    await store.commit_many([commit])
                    if rest[0]:
                        log.publish_head(await store.head())
                else:
                    await trio.testing.wait_all_tasks_blocked()
            log.publish_head(await store.head())
            await feed.position.wait_value(lambda p: p >= log.head.value)
            nursery.cancel_scope.cancel()
        head = await store.head()
        assert got == list(range(1, head + 1))
        assert all(contiguous)
        await store.aclose()
