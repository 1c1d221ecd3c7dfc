"""Partitioned workers: many messages in flight per worker, log order kept per key."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import petrock_trio as pt
from petrock_trio._partition import Coverage, partition_name, split_name, stable_hash
from petrock_trio.testing import memory_database, serving
from tests.support import Add, Echoed, Note


@attrs.define
class Seen:
    """What handlers saw, outside worker state (replay does not reset it)."""

    live: list[tuple[int, str, int, int]] = attrs.Factory(list)  # (id, key, partition, started)
    replayed: list[tuple[int, str, int]] = attrs.Factory(list)
    keys: list[str] = attrs.Factory(list)


def partitioned(
    seen: Seen,
    partitions: int,
    *,
    delay: float = 0.0,
    fail: Any = None,
    emit: bool = True,
    **kw: Any,
) -> pt.PatternWorker[dict[str, int]]:
    worker: pt.PatternWorker[dict[str, int]] = pt.PatternWorker(
        "totals", state={}, partitions=partitions, key=lambda cmd: cmd.key, **kw
    )

    @worker.on_command(Add)
    async def add(ctx: pt.HandlerContext, cmd: Add, state: dict[str, int]) -> None:
        if ctx.is_replay:
            seen.replayed.append((ctx.message.id, cmd.key, ctx.partition))
        else:
            seen.live.append((ctx.message.id, cmd.key, ctx.partition, int(trio.current_time())))
            seen.keys.append(ctx.idempotency_key)
            if fail is not None:
                fail(ctx, cmd)
            await trio.sleep(delay)
            if emit:
                ctx.emit(Echoed(ctx.message.id, cmd.key))
        state[cmd.key] = state.get(cmd.key, 0) + cmd.amount

    return worker


def app_with(database: str, worker: pt.PatternWorker[Any], **kw: Any) -> pt.App:
    app = pt.App(database, clock=pt.TrioWallClock(), hooks=[], **kw)
    for cls in (Add, Echoed, Note):
        app.register_command(cls)
    app.register_worker(worker)
    return app


async def echoes(path: str) -> Counter[int]:
    async with pt.open_log(path, commands=[Add, Echoed, Note]) as log:
        rows = await log.read_after(0, 100_000)
    return Counter(m.command.source_id for m in rows if m.name == "test/echoed")


class TestHashing:
    """A key's partition is the same in every process and Python run."""

    def test_stable_hash_is_fixed(self) -> None:
        # Fixed values: a change of the hash would move keys between partitions.
        assert stable_hash("a") == stable_hash("a")
        assert stable_hash("a") % 8 == stable_hash("a") % 8
        assert len({stable_hash(k) for k in ("1", 1, b"1", ("1",))}) == 4

    def test_stable_hash_agrees_across_processes(self, tmp_path: Path) -> None:
        import subprocess  # noqa: PLC0415
        import sys  # noqa: PLC0415

        code = (
            "from petrock_trio._partition import stable_hash as h; print(h('k'), h(7), h(('a', 1)))"
        )
        outs = {
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONHASHSEED": seed, "PATH": ""},
                cwd=Path(__file__).parent.parent,
            ).stdout
            for seed in ("1", "2", "random")
        }
        assert outs == {f"{stable_hash('k')} {stable_hash(7)} {stable_hash(('a', 1))}\n"}

    @pytest.mark.parametrize("bad", [1.5, None, True, ["a"]])
    def test_other_key_types_are_refused(self, bad: object) -> None:
        with pytest.raises(TypeError, match="partition key"):
            stable_hash(bad)

    def test_names(self) -> None:
        assert partition_name("w", 0, 1) == "w"
        assert partition_name("w", 3, 8) == "w#3/8"
        assert split_name("w#3/8") == ("w", 3, 8)
        assert split_name("w") == ("w", 0, 1)


class TestCoverage:
    """What is done after a change of N: per key, the old owner's position says so."""

    def test_one_generation(self) -> None:
        c = Coverage.of("w", 0, 2, {"w#0/2": 10, "w#1/2": 4, "other": 99})
        assert (c.low, c.high) == (10, 10)

    def test_repartition(self) -> None:
        saved = {"w#0/2": 10, "w#1/2": 4}
        c = Coverage.of("w", 1, 3, saved)
        assert (c.low, c.high) == (4, 10)
        assert c.done(4, 1)
        assert c.done(7, 2)  # hash 2: old partition 0, done up to 10
        assert not c.done(7, 3)  # hash 3: old partition 1, done up to 4
        assert not c.done(11, 2)

    def test_from_unpartitioned(self) -> None:
        c = Coverage.of("w", 2, 4, {"w": 50})
        assert (c.low, c.high) == (50, 50)


class TestDeclaration:
    def test_a_partitioned_worker_needs_a_key_for_every_route(self) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("w", partitions=2)

        @worker.on_command(Add, key=lambda c: c.key)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: Any) -> None: ...

        @worker.on_command(Note)
        async def note(ctx: pt.HandlerContext, cmd: Note, state: Any) -> None: ...

        with pytest.raises(pt.ConfigurationError, match="no key for 'test/note'"):
            pt.App().register_worker(worker)

    @pytest.mark.parametrize("bad", [0, -1, True])
    def test_partitions_must_be_positive(self, bad: int) -> None:
        with pytest.raises(pt.ConfigurationError, match="partitions"):
            pt.PatternWorker("w", partitions=bad)

    def test_a_name_like_a_partitions_is_refused(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="partition"):
            pt.PatternWorker("w#1/2")


class TestConcurrency:
    """Partitions run concurrently; each key's messages in log order, one at a time."""

    async def test_slow_handlers_overlap_across_partitions(self, autojump_clock: Any) -> None:
        seen = Seen()
        worker = partitioned(seen, 8, delay=1.0, emit=False)
        app = app_with(":memory:", worker)
        keys = [f"k{i}" for i in range(40)]
        async with serving(app):
            start = trio.current_time()
            for key in keys:
                await app.execute(Add(key))
            await app.caught_up()
            elapsed = trio.current_time() - start
        # One partition alone would take 40 s; the busiest of 8 takes its share.
        busiest = max(Counter(stable_hash(k) % 8 for k in keys).values())
        assert elapsed == pytest.approx(busiest, abs=0.01)
        assert sorted(k for _, k, _, _ in seen.live) == sorted(keys)
        for _, key, partition, _ in seen.live:
            assert partition == stable_hash(key) % 8
        assert seen.keys == [f"totals:{i}" for i, *_ in seen.live]
        assert sum(sum(s.values()) for s in worker.partition_states().values()) == 40

    async def test_each_key_in_log_order(self, autojump_clock: Any) -> None:
        seen = Seen()
        worker = partitioned(seen, 4, delay=0.3, emit=False)
        app = app_with(":memory:", worker)
        async with serving(app):
            for i in range(30):
                await app.execute(Add(f"k{i % 5}", i))
            await app.caught_up()
        by_key: dict[str, list[int]] = defaultdict(list)
        for message_id, key, _, _ in seen.live:
            by_key[key].append(message_id)
        assert all(ids == sorted(ids) for ids in by_key.values())
        assert sum(len(v) for v in by_key.values()) == 30

    async def test_a_retrying_message_blocks_only_its_partition(self, autojump_clock: Any) -> None:
        seen = Seen()

        def fail(ctx: pt.HandlerContext, cmd: Add) -> None:
            if cmd.key == "bad" and ctx.attempt < 3:
                raise RuntimeError("flaky")

        worker = partitioned(seen, 4, fail=fail, emit=False, retry=pt.Backoff(initial=10.0))
        app = app_with(":memory:", worker)
        bad_partition = stable_hash("bad") % 4
        others = [k for k in (f"k{i}" for i in range(20)) if stable_hash(k) % 4 != bad_partition]
        async with serving(app):
            await app.execute(Add("bad"))
            for key in others[:6]:
                await app.execute(Add(key))
            await trio.sleep(1)
            # The other partitions went on while "bad" waits for its retry.
            assert {k for _, k, _, _ in seen.live} >= set(others[:6])
            assert worker.statistics().retrying_message == 1
            assert worker.health().status is pt.Health.DEGRADED
            assert f"partition {bad_partition}" in worker.health().reasons[0]
            await app.caught_up()
        assert [m for m, k, _, _ in seen.live if k == "bad"] == [1, 1, 1]


class TestRestarts:
    """Positions per partition: nothing re-handled, nothing skipped across restarts."""

    async def test_restart_and_repartition(self, tmp_path: Path) -> None:
        db = str(tmp_path / "app.db")
        handled: Counter[int] = Counter()
        plan = [(2, 15), (3, 10), (1, 5), (5, 12)]
        total = 0
        for partitions, count in plan:
            seen = Seen()
            worker = partitioned(seen, partitions)
            app = app_with(db, worker)
            async with serving(app):
                for i in range(count):
                    await app.execute(Add(f"k{(total + i) % 7}"))
                await app.caught_up()
                # Replay rebuilt each partition's totals from its own keys' messages.
                states = worker.partition_states()
                replayed_total = sum(sum(s.values()) for s in states.values())
                assert replayed_total == total + count
            total += count
            handled.update(m for m, *_ in seen.live)
            assert len(seen.replayed) == total - count
        adds = [m for m, n in (await echoes(db)).items()]
        assert sorted(handled) == sorted(adds)
        assert set(handled.values()) == {1}
        assert set((await echoes(db)).values()) == {1}
        assert len(handled) == total

    async def test_inspect_shows_partitions(self, autojump_clock: Any) -> None:
        seen = Seen()
        worker = partitioned(seen, 3)
        app = app_with(":memory:", worker)
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
            report = app.inspect()["workers"]["totals"]
        assert report["partition_count"] == 3
        parts = report["partitions"]
        assert [p["partition"] for p in parts] == [0, 1, 2]
        assert [p["name"] for p in parts] == ["totals#0/3", "totals#1/3", "totals#2/3"]
        assert {p["position"] for p in parts} == {2}
        assert report["position"] == 2
        assert all(p["health"]["status"] == "healthy" for p in parts)


class TestPeriodic:
    async def test_periodic_work_runs_per_partition_with_its_state(
        self, autojump_clock: Any
    ) -> None:
        seen = Seen()
        worker = partitioned(seen, 3, emit=False)
        runs: list[tuple[int, int]] = []

        async def tick(ctx: pt.PeriodicContext, state: dict[str, int]) -> None:
            runs.append((ctx.partition, sum(state.values())))

        worker.set_periodic_work(tick, interval=10.0)
        app = app_with(":memory:", worker)
        async with serving(app):
            for key in ("a", "b", "c", "d", "e", "f"):
                await app.execute(Add(key))
            await app.caught_up()
            await trio.sleep(10.5)
        later = runs[3:6]
        assert sorted(p for p, _ in later) == [0, 1, 2]
        expected = Counter(stable_hash(k) % 3 for k in "abcdef")
        assert dict(later) == {p: expected.get(p, 0) for p in range(3)}


class TestBulkhead:
    async def test_at_most_k_calls_in_flight(self, autojump_clock: Any) -> None:
        service = pt.ExternalService("slow", max_concurrent=3)
        in_flight = peak = 0

        async def call() -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await trio.sleep(1)
            in_flight -= 1

        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "calls", partitions=16, key=lambda c: c.key, services=[service]
        )

        @worker.on_command(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            await service.call(call)

        app = app_with(":memory:", worker)
        async with serving(app):
            start = trio.current_time()
            for i in range(12):
                await app.execute(Add(f"k{i}"))
            await app.caught_up()
            elapsed = trio.current_time() - start
        assert peak == 3
        assert elapsed >= 4.0

    def test_max_concurrent_must_be_positive(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="max_concurrent"):
            pt.ExternalService("s", max_concurrent=0)


class TestUnevenPositions:
    """Partitions stopped at different positions, then served with another N."""

    async def test_a_lagging_partition_is_not_skipped_after_repartitioning(
        self, tmp_path: Path
    ) -> None:
        db = str(tmp_path / "app.db")
        # The lagging key is in partition 1: a bug once judged keys of an unpartitioned
        # run as if they all hashed to partition 0.
        slow = next(k for k in (f"s{i}" for i in range(50)) if stable_hash(k) % 2 == 1)
        fast = next(k for k in (f"k{i}" for i in range(50)) if stable_hash(k) % 2 == 0)
        stuck, fast_done = trio.Event(), trio.Event()
        seen = Seen()

        def block(ctx: pt.HandlerContext, cmd: Add) -> None:
            if cmd.key == slow:
                stuck.set()
                raise pt.Retry(delay=1.0)
            if [k for _, k, _, _ in seen.live].count(fast) == 3:
                fast_done.set()

        app = app_with(db, partitioned(seen, 2, fail=block))
        async with serving(app, graceful=False):
            await app.execute(Add(slow))
            for _ in range(3):
                await app.execute(Add(fast))
            await stuck.wait()
            await fast_done.wait()
            # Cut off now, while the slow partition waits for its retry: the fast
            # partition's position is past the slow one's.
        for partitions in (1, 3):
            again = Seen()
            app = app_with(db, partitioned(again, partitions))
            async with serving(app):
                await app.caught_up()
            if partitions == 1:
                assert slow in [k for _, k, _, _ in again.live]
            else:
                assert again.live == []
        assert set((await echoes(db)).values()) == {1}
        assert sum((await echoes(db)).values()) == 4

    async def test_a_key_that_fails_blames_only_its_own_message(self, tmp_path: Path) -> None:
        """After a change of partitions, a message whose key fails is dead-lettered; the
        next one, past the old positions, is handled (it once inherited the failure of
        the message before it)."""
        db = str(tmp_path / "app.db")
        async with pt.open_log(db, commands=[Add]) as log:
            await log.append(*(Add(k) for k in ("a", "b", "c", "d", "bad", "e")))
            await log.store.commit_many(
                [log.new_commit(positions={"totals#0/2": 1, "totals#1/2": 5})]
            )

        def key(cmd: Add) -> str:
            if cmd.key == "bad":
                raise ValueError("no key for this one")
            return cmd.key

        handled: list[int] = []
        worker: pt.PatternWorker[None] = pt.PatternWorker("totals", key=key)

        @worker.on(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
            if not ctx.is_replay:
                handled.append(ctx.message.id)

        app = app_with(db, worker)
        async with serving(app):
            await app.caught_up()
            letters = await app.dead_letters("totals")
        assert [(d.message_id, "no key" in d.error) for d in letters] == [(5, True)]
        assert 6 in handled

    async def test_dropping_the_key_while_positions_differ_is_refused(self, tmp_path: Path) -> None:
        db = str(tmp_path / "app.db")
        async with pt.open_log(db, commands=[Add]) as log:
            await log.append(Add("a"), Add("b"))
            await log.store.commit_many(
                [log.new_commit(positions={"totals#0/2": 2, "totals#1/2": 1})]
            )
        worker: pt.PatternWorker[None] = pt.PatternWorker("totals")

        @worker.on_command(Add)
        async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None: ...

        app = app_with(db, worker)
        with pytest.raises(pt.ConfigurationError, match="needs its key="):
            await pt.serve(app, handle_signals=False)


class TestPeriodicEmitsBeforeTheCut:
    """A periodic run that fails or times out still commits what it emitted."""

    @pytest.mark.parametrize("ending", ["timeout", "error"])
    async def test_emits_land(self, autojump_clock: Any, ending: str) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("batch", periodic_timeout=5.0)
        runs = 0

        async def work(ctx: pt.PeriodicContext, state: None) -> None:
            nonlocal runs
            runs += 1
            if runs > 1:
                return
            ctx.emit(Note("first"))
            ctx.emit(Note("second"))
            if ending == "error":
                raise RuntimeError("after two results")
            await trio.sleep(60)  # cut off by the 5 s timeout

        worker.set_periodic_work(work, interval=100.0)
        failures: list[pt.Event] = []
        app = app_with(":memory:", worker)
        app.hooks.append(failures.append)
        async with serving(app):
            await trio.sleep(10)
            await app.caught_up()
            rows = await app.log.read_after(0, 100)
        assert [m.command.text for m in rows if m.name == "test/note"] == ["first", "second"]
        (failed,) = [e for e in failures if isinstance(e, pt.PeriodicFailed)]
        assert failed.timed_out is (ending == "timeout")


async def test_the_command_line_shows_each_partition(autojump_clock: Any) -> None:
    from rich.console import Console  # noqa: PLC0415

    from petrock_trio._cli_read import _live_tables  # noqa: PLC0415

    app = app_with(":memory:", partitioned(Seen(), 2))
    async with serving(app):
        await app.execute(Add("a"))
        await app.caught_up()
        report = app.inspect()
    console = Console(width=200, record=True)
    for table in _live_tables(report, []):
        console.print(table)
    text = console.export_text()
    assert "totals: 2 partitions" in text
    assert "totals#0/2" in text
    assert "totals#1/2" in text


class TestStopBehindTheOthers:
    """A partition whose position is behind its siblings' stops at once on shutdown."""

    async def test_stop_does_not_wait_for_the_grace_period(self, autojump_clock: Any) -> None:
        # The partition's replay watch waited for its position to reach the highest
        # saved position of all partitions, which a closed feed never moves it to: every
        # stop soon after a start then waited out shutdown_grace.
        slow = next(k for k in (f"s{i}" for i in range(50)) if stable_hash(k) % 2 == 1)
        fast = next(k for k in (f"k{i}" for i in range(50)) if stable_hash(k) % 2 == 0)

        def block(ctx: pt.HandlerContext, cmd: Add) -> None:
            if cmd.key == slow:
                raise pt.Retry(delay=100.0)

        with memory_database() as db:
            app = app_with(db, partitioned(Seen(), 2, fail=block), shutdown_grace=10.0)
            async with serving(app):
                await app.execute(Add(slow))
                await app.execute(Add(fast))
                await app.execute(Add(fast))
                await trio.sleep(1)
            app = app_with(db, partitioned(Seen(), 2, fail=block), shutdown_grace=10.0)
            async with serving(app):
                stopping = trio.current_time()
            assert trio.current_time() - stopping == 0


async def test_metrics_show_each_partition(autojump_clock: Any) -> None:
    from prometheus_client import generate_latest  # noqa: PLC0415
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    from petrock_trio._http_metrics import app_registry  # noqa: PLC0415

    app = app_with(":memory:", partitioned(Seen(), 3))
    async with serving(app):
        await app.execute(Add("a"))
        await app.caught_up()
        text = generate_latest(app_registry(app)).decode()
    samples = {
        (s.name, s.labels.get("partition")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("worker") == "totals"
    }
    for partition in ("0", "1", "2"):
        assert samples["petrock_partition_position", partition] == 2
        assert samples["petrock_partition_lag_messages", partition] == 0
        assert samples["petrock_partition_running", partition] == 1
    assert samples["petrock_worker_position", None] == 2


async def test_a_reason_shared_by_partitions_is_said_once(autojump_clock: Any) -> None:
    service = pt.ExternalService("api", failure_threshold=1, reset_timeout=60.0)

    async def fail() -> None:
        raise OSError("down")

    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "calls", partitions=4, key=lambda c: c.key, services=[service]
    )

    @worker.on_command(Add)
    async def add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        await service.call(fail)

    app = app_with(":memory:", worker)
    async with serving(app):
        await app.execute(Add("a"))
        await trio.sleep(1)
        report = worker.health()
    assert report.status is pt.Health.DEGRADED
    unavailable = [r for r in report.reasons if "api" in r]
    assert len(unavailable) == 1
    assert unavailable[0].startswith("partitions 0, 1, 2, 3: ")
