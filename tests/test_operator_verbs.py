"""Operator verbs: re-drive that answers at once, bulk re-drive and discard, pause and
resume (persisted, obeyed by every process sharing the log), reset of a position."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._partition import stable_hash
from petrock_trio.stores import Commit, DeadLetterRecord, Store, open_store
from petrock_trio.testing import memory_database, serving, wait_until
from tests.support import Add, Note, Unrouted
from tests.test_cli import EXE, order, run, start_shop, wait_for_dead_letter
from tests.test_cli import TOKEN as CLI_TOKEN
from tests.test_cli_readonly import (  # the fixture puts structlog back after invoke()
    _structlog_as_it_was,  # noqa: F401
    companions,
    fingerprint,
    foreign_file,
    invoke,
    petrock_file,
)
from tests.test_http import TOKEN, api, error_of


def letter(worker: str, message_id: int, name: str = "test/add") -> DeadLetterRecord:
    return DeadLetterRecord(worker, message_id, name, "RuntimeError('x')", 1, 1.0, 2.0, "tb")


async def seeded(store: Store, count: int = 6) -> None:
    """``count`` messages, alternately test/add and test/note."""
    names = ["test/add" if i % 2 else "test/note" for i in range(1, count + 1)]
    await store.commit_many([Commit(appends=[(n, b"{}") for n in names], timestamp=1.0)])


class TestStoreControls:
    """Every store keeps the controls, resets positions atomically, and discards."""

    async def test_no_controls_at_first(self, store: Store) -> None:
        assert await store.controls() == []
        assert await store.discarded() == []

    async def test_pause_and_resume_persist(self, store: Store) -> None:
        paused = await store.set_paused("w", paused=True, now=10.0)
        assert paused == pt.stores.ControlRecord("w", paused=True, updated_at=10.0)
        assert await store.controls() == [paused]
        resumed = await store.set_paused("w", paused=False, now=11.0)
        assert resumed == pt.stores.ControlRecord("w", paused=False, updated_at=11.0)
        assert await store.controls() == [resumed]

    async def test_reset_is_refused_unless_paused(self, store: Store) -> None:
        await seeded(store)
        await store.commit_many([Commit(positions={"w": 4})])
        with pytest.raises(pt.NotPaused, match="pause it"):
            await store.reset_positions("w", ["w"], 1, now=5.0)
        await store.set_paused("w", paused=False, now=5.0)
        with pytest.raises(pt.NotPaused):
            await store.reset_positions("w", ["w"], 1, now=5.0)
        assert await store.positions() == {"w": 4}

    async def test_reset_rewrites_what_the_worker_has_after_the_position(
        self, store: Store
    ) -> None:
        await seeded(store)
        await store.commit_many(
            [
                Commit(
                    positions={"w#0/2": 6, "w#1/2": 5, "w": 3, "w-other": 6, "w#x": 6},
                    dead_letters=[letter("w", 2), letter("w", 5), letter("w-other", 5)],
                    retries=[pt.stores.RetryRecord("w#1/2", 6, 2, 99.0, 1.0)],
                )
            ]
        )
        await store.discard_dead_letters([("w", 5)], now=3.0)
        await store.leases("me", {}, ["w#0/2", "w#1/2"], ttl=60, now=pt.SystemClock())
        epochs = {r.worker: r.epoch for r in await store.lease_records()}
        await store.set_paused("w", paused=True, now=4.0)

        record = await store.reset_positions("w", ["w#0/4", "w#1/4"], 2, now=5.0)

        assert (record.paused, record.generation, record.reset_to) == (True, 1, 2)
        # Every position of the worker, under any partitioning, is the new one; names
        # that only look alike are another worker's.
        assert await store.positions() == {"w#0/4": 2, "w#1/4": 2, "w-other": 6, "w#x": 6}
        assert await store.retries() == []
        assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [
            ("w", 2),
            ("w-other", 5),
        ]
        assert await store.discarded() == []
        # Its leases moved to a new epoch and are free: the holder is fenced off.
        leases = {r.worker: r for r in await store.lease_records()}
        assert {w: leases[w].epoch for w in epochs} == {w: e + 1 for w, e in epochs.items()}
        assert all(leases[w].expires_at == 0 for w in epochs)
        fenced = Commit(positions={"w#0/2": 6}, leases={"w#0/2": epochs["w#0/2"]})
        with pytest.raises(pt.LeaseLost):
            await store.commit_many([fenced])
        assert await store.controls() == [record]

    async def test_a_second_reset_raises_the_generation_again(self, store: Store) -> None:
        await seeded(store)
        await store.set_paused("w", paused=True, now=1.0)
        await store.reset_positions("w", ["w"], 4, now=2.0)
        record = await store.reset_positions("w", ["w"], 1, now=3.0)
        assert (record.generation, record.reset_to, record.updated_at) == (2, 1, 3.0)
        assert await store.positions() == {"w": 1}

    async def test_discard_keeps_a_tombstone(self, store: Store) -> None:
        await store.commit_many(
            [Commit(dead_letters=[letter("w", 1), letter("w", 2), letter("v", 1)])]
        )
        gone = await store.discard_dead_letters([("w", 2), ("v", 1), ("w", 9)], now=7.0)
        assert sorted((d.worker, d.message_id) for d in gone) == [("v", 1), ("w", 2)]
        assert gone[0].traceback == "tb"
        assert [(d.worker, d.message_id) for d in await store.dead_letters()] == [("w", 1)]
        assert await store.discarded() == [("v", 1), ("w", 2)]
        assert await store.discarded("w") == [("w", 2)]
        assert await store.discard_dead_letters([], now=8.0) == []

    async def test_count_messages(self, store: Store) -> None:
        await seeded(store)
        assert await store.count_messages(0, 6, ["test/add"]) == (3, 1, 5)
        assert await store.count_messages(1, 4, ["test/add", "test/note"]) == (3, 2, 4)
        assert await store.count_messages(5, 6, ["test/add"]) == (0, None, None)
        assert await store.count_messages(0, 6, []) == (0, None, None)
        assert await store.count_messages(4, 2, ["test/add"]) == (0, None, None)


class TestReadOnlyControls:
    """A read-only opening reads the controls, and of an older log reads none."""

    async def test_older_sqlite_file(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        writer = open_store(str(path))
        await writer.open()
        await writer.set_paused("w", paused=True, now=1.0)
        await writer.aclose()
        reader = open_store(str(path), read_only=True)
        await reader.open()
        try:
            assert [r.worker for r in await reader.controls()] == ["w"]
            with pytest.raises(pt.StoreError, match="read-only"):
                await reader.set_paused("w", paused=False, now=2.0)
        finally:
            await reader.aclose()
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE worker_controls")
            conn.execute("DROP TABLE discarded_letters")
        reader = open_store(str(path), read_only=True)
        await reader.open()
        try:
            assert await reader.controls() == []
            assert await reader.discarded() == []
        finally:
            await reader.aclose()
        # A writer's opening gives an older file the tables.
        writer = open_store(str(path))
        await writer.open()
        try:
            assert await writer.controls() == []
            await writer.set_paused("w", paused=True, now=3.0)
        finally:
            await writer.aclose()


async def test_store_calls_are_checkpoints() -> None:
    store = open_store(":memory:")
    await store.open()
    try:
        calls = [
            store.controls(),
            store.set_paused("w", paused=True, now=1.0),
            store.discarded(),
            store.discard_dead_letters([], now=1.0),
            store.count_messages(0, 1, ["x"]),
            store.reset_positions("w", ["w"], 0, now=1.0),
        ]
        for call in calls:
            with trio.CancelScope() as scope:
                scope.cancel()
                await call
            assert scope.cancelled_caught
    finally:
        await store.aclose()


# --- the engine: an app with a worker that fails while told to ------------------------


@attrs.define
class Shop:
    """What the `orders` worker does: it fails on the keys in ``broken``."""

    broken: set[str] = attrs.Factory(set)
    live: list[int] = attrs.Factory(list)
    replayed: list[int] = attrs.Factory(list)
    periodic: int = 0
    hold: trio.Event | None = None
    permanent: bool = False  # broken keys fail for good (dead-lettered at once)


def shop_app(
    database: str = ":memory:",
    *,
    shop: Shop | None = None,
    attempts: int = 4,
    initial: float = 1.0,
    partitions: int = 1,
    **kw: Any,
) -> tuple[pt.App, pt.PatternWorker[list[str]], Shop]:
    """`orders` handles test/add (retrying 1 + 2 + 4 s with 4 attempts) and keeps the
    keys it handled in its state; test/note and test/unrouted are nobody's."""
    shop = shop if shop is not None else Shop()
    app = pt.App(database=database, hooks=[], **kw)
    for cls in (Add, Note, Unrouted):
        app.register_command(cls)
    worker: pt.PatternWorker[list[str]] = pt.PatternWorker(
        "orders",
        state=[],
        retry=pt.Backoff(initial=initial, factor=2.0, max_attempts=attempts),
        partitions=partitions,
        health=pt.HealthThresholds(degraded_errors_per_minute=1e9, unhealthy_errors_per_minute=1e9),
    )

    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: list[str]) -> None:
        if shop.hold is not None and not ctx.is_replay:
            await shop.hold.wait()
        if cmd.key in shop.broken and not ctx.is_replay:
            if shop.permanent:
                raise pt.Permanent(f"broken for good: {cmd.key}")
            raise RuntimeError(f"broken: {cmd.key}")
        state.append(cmd.key)
        (shop.replayed if ctx.is_replay else shop.live).append(ctx.message.id)

    worker.on_command("test/add", on_add, key=lambda cmd: cmd.key if partitions > 1 else None)

    async def tick(ctx: pt.PeriodicContext, state: list[str]) -> None:
        shop.periodic += 1

    worker.set_periodic_work(tick, interval=10.0)
    app.register_worker(worker)
    return app, worker, shop


async def dead_letter_of(app: pt.App, key: str) -> int:
    message = await app.execute(Add(key))
    await app.caught_up()
    (letter,) = [d for d in await app.dead_letters("orders") if d.message_id == message.id]
    return letter.message_id


def status_of(ticket: pt.RedriveTicket) -> str:
    return ticket.status  # read again: the re-drive moves it on meanwhile


class TestStartRedrive:
    """A re-drive returns a ticket at once; the ticket follows it to its end."""

    async def test_a_still_failing_redrive_answers_at_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        async with serving(app):
            message_id = await dead_letter_of(app, "vase")
            started = trio.current_time()
            ticket = await app.start_redrive("orders", message_id)
            assert trio.current_time() == started  # no virtual time at all
            assert (ticket.status, ticket.done) == ("queued", False)
            assert app.redrive_tickets.get(ticket.id) is ticket
            await trio.sleep(0.5)
            assert status_of(ticket) == "running"
            assert (await ticket.wait()) is ticket
            # The whole schedule again: 1 + 2 + 4 s between its four attempts.
            assert trio.current_time() - started == 7.0
            assert ticket.status == "failed"
            assert ticket.dead_letter is not None
            assert ticket.dead_letter.attempts == 8
            assert ticket.error == ticket.dead_letter.error
            answer = ticket.to_dict()
            assert (answer["status"], answer["resolved"]) == ("failed", False)
            assert answer["dead_letter"]["attempts"] == 8

    async def test_a_fixed_redrive_resolves(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        async with serving(app):
            message_id = await dead_letter_of(app, "vase")
            shop.broken.clear()
            ticket = await (await app.start_redrive("orders", message_id)).wait()
            assert (ticket.status, ticket.error, ticket.dead_letter) == ("resolved", None, None)
            assert ticket.to_dict()["resolved"] is True
            assert await app.dead_letters() == []
            assert shop.live == [message_id]

    async def test_redrive_still_waits(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        async with serving(app):
            message_id = await dead_letter_of(app, "vase")
            started = trio.current_time()
            await app.redrive("orders", message_id)
            assert trio.current_time() - started == 7.0
            (letter,) = await app.dead_letters()
            assert letter.attempts == 8

    async def test_refusals(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        async with serving(app):
            message_id = await dead_letter_of(app, "vase")
            with pytest.raises(LookupError, match="no pattern worker"):
                await app.start_redrive("nobody", message_id)
            with pytest.raises(LookupError, match="no dead letter"):
                await app.start_redrive("orders", message_id + 1)
            await app.pause_worker("orders")
            with pytest.raises(pt.WorkerPaused, match="resume it"):
                await app.start_redrive("orders", message_id)
            with pytest.raises(pt.WorkerPaused):
                await app.redrive("orders", message_id)
            assert app.redrive_tickets.tickets == {}
        with pytest.raises(pt.NotRunning):
            await app.start_redrive("orders", message_id)

    async def test_a_stop_ends_the_ticket(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        async with serving(app):
            message_id = await dead_letter_of(app, "vase")
            ticket = await app.start_redrive("orders", message_id)
            await trio.sleep(1.5)  # between its first and second attempt
            assert ticket.status == "running"
        assert status_of(ticket) == "failed"
        assert ticket.error is not None
        assert "NotRunning" in ticket.error

    async def test_tickets_are_bounded(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app()
        shop.broken.update({"a", "b", "c"})
        app.redrive_tickets.capacity = 2
        async with serving(app):
            ids = [await dead_letter_of(app, key) for key in "abc"]
            first = await app.start_redrive("orders", ids[0])
            second = await app.start_redrive("orders", ids[1])
            with pytest.raises(pt.RedriveBacklog, match="2 re-drives are unfinished"):
                await app.start_redrive("orders", ids[2])
            await first.wait()
            third = await app.start_redrive("orders", ids[2])
            # The oldest finished ticket made room.
            assert list(app.redrive_tickets.tickets) == [second.id, third.id]
            assert app.redrive_tickets.get(first.id) is None


class TestBulk:
    """Dead letters re-driven or discarded by worker, by command, or all of them."""

    async def test_redrive_by_filter(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, shop = shop_app(attempts=1)
        shop.broken.update({"a", "b"})
        async with serving(app):
            ids = [await dead_letter_of(app, key) for key in "ab"]
            # A dead letter of a worker this app does not have (it was removed).
            await app.log.commit(app.log.new_commit(dead_letters=[letter("gone", 1, "old/cmd")]))
            with pytest.raises(pt.OperatorError, match="name a worker or a command"):
                await app.start_redrives()
            shop.broken.clear()
            bulk = await app.start_redrives(command="test/add")
            assert sorted(t.message_id for t in bulk.tickets) == ids
            assert bulk.skipped == ()
            for ticket in bulk.tickets:
                await ticket.wait()
            assert [t.status for t in bulk.tickets] == ["resolved", "resolved"]
            everything = await app.start_redrives(every=True)
            assert everything.tickets == ()
            assert everything.skipped == (("gone", 1, "no pattern worker of that name here"),)
            assert everything.to_dict()["count"] == 0

    async def test_bulk_fits_whole_or_not_at_all(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, shop = shop_app(attempts=1)
        shop.broken.update({"a", "b", "c"})
        app.redrive_tickets.capacity = 2
        async with serving(app):
            for key in "abc":
                await dead_letter_of(app, key)
            with pytest.raises(pt.RedriveBacklog):
                await app.start_redrives(worker="orders")
            assert app.redrive_tickets.tickets == {}

    async def test_discard_keeps_the_message_done(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        shop = Shop(broken={"vase"})
        with memory_database() as database:
            app, worker, _ = shop_app(database, shop=shop)
            async with serving(app):
                vase = await dead_letter_of(app, "vase")
                await app.execute(Add("cup"))
                await app.caught_up()
                with pytest.raises(pt.OperatorError):
                    await app.discard_dead_letters()
                (gone,) = await app.discard_dead_letters(worker="orders")
                assert (gone.worker, gone.message_id, gone.attempts) == ("orders", vase, 4)
                assert await app.dead_letters() == []
                assert app.inspect()["workers"]["orders"]["position"] == vase + 1
                assert await app.discard_dead_letters(every=True) == []
            # Replay skips it as it skips a dead letter: it never took effect.
            shop.broken.clear()
            again, worker, _ = shop_app(database, shop=shop)
            async with serving(again):
                assert worker.state == ["cup"]
                assert shop.replayed == [vase + 1]


VERBS: list[Any] = [
    pytest.param(lambda app, m: app.start_redrive("orders", m), id="start_redrive"),
    pytest.param(lambda app, m: app.start_redrives(every=True), id="start_redrives"),
    pytest.param(lambda app, m: app.discard_dead_letters(command="none"), id="discard"),
    pytest.param(lambda app, m: app.pause_worker("orders"), id="pause_worker"),
    pytest.param(lambda app, m: app.resume_worker("orders"), id="resume_worker"),
    pytest.param(lambda app, m: app.reset_plan("orders", to=1), id="reset_plan"),
]


@pytest.mark.parametrize("verb", VERBS)
async def test_verbs_are_checkpoints(autojump_clock: trio.testing.MockClock, verb: Any) -> None:
    app, _, shop = shop_app(attempts=1)
    shop.broken.add("vase")
    async with serving(app):
        message_id = await dead_letter_of(app, "vase")
        with trio.testing.assert_checkpoints():
            await verb(app, message_id)
        await app.pause_worker("orders")
        with trio.testing.assert_checkpoints():
            await app.reset_position("orders", to=message_id)


class TestPause:
    """A paused worker finishes its message, then handles nothing until resumed."""

    async def test_pause_and_resume(self, autojump_clock: trio.testing.MockClock) -> None:
        app, worker, shop = shop_app()
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
            position = worker.position
            record = await app.pause_worker("orders", wait=True)
            assert (record.worker, record.paused) == ("orders", True)
            assert app.inspect()["workers"]["orders"]["paused"] is True
            health = worker.health()
            assert health.status is pt.Health.DEGRADED
            assert health.reasons == ("paused by an operator",)
            assert app.health().reasons == ("orders: paused by an operator",)
            ticks = shop.periodic
            late = await app.execute(Add("b"))
            for _ in range(3):
                await app.execute(Unrouted())  # nobody's: even these leave it where it is
            await trio.sleep(60)
            assert shop.live == [1]
            assert worker.position == position
            assert shop.periodic == ticks  # periodic work is skipped
            await app.resume_worker("orders")
            await app.caught_up()
            assert shop.live == [1, late.id]
            assert worker.position == app.log.head.value
            assert worker.health().status is pt.Health.HEALTHY
            assert app.inspect()["workers"]["orders"]["paused"] is False
            await trio.sleep(15)
            assert shop.periodic > ticks

    async def test_the_message_in_hand_is_finished(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, worker, shop = shop_app()
        shop.hold = trio.Event()
        async with serving(app):
            first = await app.execute(Add("a"))
            await app.execute(Add("b"))
            await trio.sleep(1)
            assert worker.statistics().in_flight == 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(app.pause_worker, "orders", wait=True))
                await trio.sleep(1)
                shop.hold.set()  # the handler in flight goes on and commits
            assert shop.live == [first.id]
            assert worker.position == first.id
            await trio.sleep(30)
            assert shop.live == [first.id]
            await app.resume_worker("orders")
            await app.caught_up()
            assert len(shop.live) == 2

    async def test_a_pause_outlives_a_restart(self, autojump_clock: trio.testing.MockClock) -> None:
        shop = Shop()
        with memory_database() as database:
            app, _, _ = shop_app(database, shop=shop)
            async with serving(app):
                await app.execute(Add("a"))
                await app.caught_up()
                await app.pause_worker("orders")
                waiting = await app.execute(Add("b"))
            again, worker, _ = shop_app(database, shop=shop)
            async with serving(again):  # start-up replays, then the worker stays paused
                assert worker.state == ["a"]
                await trio.sleep(30)
                assert shop.live == [1]
                assert worker.health().reasons == ("paused by an operator",)
                await again.resume_worker("orders")
                await again.caught_up()
                assert shop.live == [1, waiting.id]

    async def test_a_redrive_taken_before_the_pause_waits(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, shop = shop_app()
        shop.broken.add("vase")
        shop.hold = trio.Event()
        async with serving(app):
            vase = await app.execute(Add("vase"))
            shop.hold.set()
            await app.caught_up()
            shop.broken.clear()
            shop.hold = trio.Event()
            await app.execute(Add("cup"))  # held in its handler
            await trio.sleep(1)
            ticket = await app.start_redrive("orders", vase.id)
            await app.pause_worker("orders")
            shop.hold.set()
            await trio.sleep(30)
            assert ticket.status == "queued"
            await app.resume_worker("orders")
            assert (await ticket.wait()).status == "resolved"

    async def test_unknown_workers(self, autojump_clock: trio.testing.MockClock) -> None:
        app, _, _ = shop_app()
        with pytest.raises(pt.NotRunning):
            await app.pause_worker("orders")
        async with serving(app):
            with pytest.raises(LookupError):
                await app.pause_worker("nobody")
            with pytest.raises(LookupError):
                await app.reset_position("nobody", to=0)


class TestReset:
    """A reset, only while paused, restarts the worker from the new position."""

    async def test_refused_unless_paused_and_in_the_log(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, worker, _ = shop_app()
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
            with pytest.raises(pt.NotPaused, match="pause it"):
                await app.reset_position("orders", to=0)
            await app.pause_worker("orders")
            for to in (-1, 2):
                with pytest.raises(pt.BadPosition, match=r"0 to 1"):
                    await app.reset_position("orders", to=to)
            await app.resume_worker("orders")
            with pytest.raises(pt.NotPaused):
                await app.reset_position("orders", to=0)
            assert worker.position == 1

    async def test_back_handles_again_live_and_forward_skips(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, worker, shop = shop_app(attempts=1)
        async with serving(app):
            for key in "abcde":
                await app.execute(Add(key))
                await app.execute(Note(key))  # nobody's
            await app.caught_up()
            assert shop.live == [1, 3, 5, 7, 9]
            await app.pause_worker("orders")
            plan = await app.reset_plan("orders", to=4)
            assert (plan.replayed, plan.again, plan.skipped, plan.pending) == (
                pt.MessageRange(2, 1, 3),
                pt.MessageRange(3, 5, 9),
                pt.MessageRange(),
                pt.MessageRange(),
            )
            assert plan.positions == {"orders": 10}
            assert "handled live again: 3 messages (ids 5 to 9)" in plan.describe()
            done = await app.reset_position("orders", to=4)
            assert done == plan
            await trio.sleep(1)
            # Restarted from the store while still paused: state rebuilt up to 4.
            assert worker.state == ["a", "b"]
            assert shop.replayed == [1, 3]
            assert shop.live == [1, 3, 5, 7, 9]
            assert worker.position == 4
            await app.resume_worker("orders")
            await app.caught_up()
            assert shop.live == [1, 3, 5, 7, 9, 5, 7, 9]
            assert worker.state == ["a", "b", "c", "d", "e"]

            # Reset to where it is: nothing again, nothing skipped; it replays.
            fresh = await app.execute(Add("f"))
            await app.caught_up()
            await app.pause_worker("orders", wait=True)
            late = await app.execute(Add("g"))
            shop.live.clear()
            shop.replayed.clear()
            plan = await app.reset_position("orders", to=fresh.id)
            assert (plan.again, plan.skipped) == (pt.MessageRange(), pt.MessageRange())
            assert plan.pending == pt.MessageRange(1, late.id, late.id)
            assert shop.replayed == [1, 3, 5, 7, 9, fresh.id]
            await app.resume_worker("orders")
            await app.caught_up()
            assert shop.live == [late.id]

    async def test_forward_skips_what_was_not_handled(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, worker, shop = shop_app()
        async with serving(app):
            await app.execute(Add("a"))
            await app.caught_up()
            await app.pause_worker("orders", wait=True)
            skipped = [await app.execute(Add(key)) for key in "bc"]
            later = await app.execute(Add("d"))
            plan = await app.reset_position("orders", to=skipped[-1].id)
            assert plan.again == pt.MessageRange()
            assert plan.skipped == pt.MessageRange(2, skipped[0].id, skipped[1].id)
            assert plan.pending == pt.MessageRange(1, later.id, later.id)
            await app.resume_worker("orders")
            await app.caught_up()
            assert shop.live == [1, later.id]
            # Replayed, never handled live: their effects never happen.
            assert shop.replayed == [1, skipped[0].id, skipped[1].id]
            assert worker.state == ["a", "b", "c", "d"]

    async def test_dead_letters_after_the_position_go(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        app, _, shop = shop_app(attempts=1)
        shop.broken.update({"a", "b"})
        async with serving(app):
            first = await dead_letter_of(app, "a")
            second = await dead_letter_of(app, "b")
            await app.pause_worker("orders")
            plan = await app.reset_position("orders", to=first)
            assert plan.dead_letters == 1
            assert [d.message_id for d in await app.dead_letters()] == [first]
            shop.broken.clear()
            await app.resume_worker("orders")
            await app.caught_up()
            assert shop.live == [second]

    async def test_every_partition(self, autojump_clock: trio.testing.MockClock) -> None:
        app, worker, shop = shop_app(partitions=3)
        async with serving(app):
            for key in "abcdefgh":
                await app.execute(Add(key))
            await app.caught_up()
            await app.pause_worker("orders", wait=True)
            plan = await app.reset_position("orders", to=3)
            assert plan.again == pt.MessageRange(5, 4, 8)
            assert plan.replayed == pt.MessageRange(3, 1, 3)
            await trio.sleep(1)
            # Each partition is back at 3, and went on at most past other partitions'
            # messages, never past its own first one after 3: it waits paused.
            owner = {i: stable_hash(key) % 3 for i, key in enumerate("abcdefgh", 1)}
            firsts = [min((m for m in range(4, 9) if owner[m] == i), default=9) for i in range(3)]
            positions = await app.log.store.positions()
            assert sorted(positions) == [f"orders#{i}/3" for i in range(3)]
            for i, first in enumerate(firsts):
                assert 3 <= positions[f"orders#{i}/3"] < first
            await app.resume_worker("orders")
            await app.caught_up()
            assert sorted(shop.live) == [1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
            states = worker.partition_states().values()
            assert sorted(k for s in states for k in s) == list("abcdefgh")


# --- over HTTP ---------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def poll(client: httpx.AsyncClient, url: str, *, until: set[str]) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            ticket: dict[str, Any] = (await client.get(url)).json()
            if ticket["status"] in until:
                return ticket
            await trio.sleep(0.01)


class TestHTTP:
    """The verbs through a real server and a real client."""

    async def test_a_still_failing_redrive_answers_within_100_ms(self) -> None:
        # The worker's schedule is 1 + 2 + 4 s: a re-drive that waited for it would
        # answer after 7 s.
        app, _, shop = shop_app(attempts=4, initial=1.0)
        shop.broken.add("vase")
        shop.permanent = True  # dead-lettered at once the first time
        async with api(app, token=TOKEN) as client:
            message = await client.post("/commands/test/add", json={"key": "vase"}, headers=AUTH)
            await app.caught_up()
            shop.permanent = False  # from now on it fails, and is retried
            started = time.perf_counter()
            answer = await client.post(
                f"/dead-letters/orders/{message.json()['id']}/redrive", headers=AUTH
            )
            took = time.perf_counter() - started
            print(f"202 after {took * 1000:.1f} ms")
            assert took < 0.1
            assert answer.status_code == 202
            body = answer.json()
            assert body["status"] in {"queued", "running"}
            assert body["url"].endswith(f"/redrives/{body['ticket']}")
            assert answer.headers["location"] == body["url"]
            running = await poll(client, body["url"], until={"running"})
            assert running["resolved"] is None
            # Stopping the app ends the re-drive: its ticket says so.
            app.stop()
            failed = await poll(client, body["url"], until={"failed"})
            assert "NotRunning" in failed["error"]

    async def test_polls_to_failed_and_to_resolved(self) -> None:
        app, _, shop = shop_app(attempts=3, initial=0.05)
        shop.broken.add("vase")
        async with api(app, token=TOKEN) as client:
            message = await client.post("/commands/test/add", json={"key": "vase"}, headers=AUTH)
            await app.caught_up()
            path = f"/dead-letters/orders/{message.json()['id']}/redrive"
            ticket = (await client.post(path, headers=AUTH)).json()
            failed = await poll(client, ticket["url"], until={"failed"})
            assert (failed["resolved"], failed["dead_letter"]["attempts"]) == (False, 6)
            assert failed["error"] == failed["dead_letter"]["error"]
            shop.broken.clear()
            ticket = (await client.post(path, headers=AUTH)).json()
            resolved = await poll(client, ticket["url"], until={"resolved", "failed"})
            assert (resolved["status"], resolved["dead_letter"]) == ("resolved", None)
            assert (await client.get("/dead-letters")).json() == {"dead_letters": []}
            gone = await client.get("/redrives/no-such-ticket")
            assert error_of(gone) == (404, "NotFound")

    async def test_bulk(self) -> None:
        app, _, shop = shop_app(attempts=1)
        shop.broken.update({"a", "b", "c"})
        async with api(app, token=TOKEN) as client:
            for key in "abc":
                await client.post("/commands/test/add", json={"key": key}, headers=AUTH)
            await app.caught_up()
            bodies: list[Any] = [{}, {"worker": 5}, {"nope": 1}, [], {"all": "yes"}, {"all": False}]
            for body in bodies:
                refused = await client.post("/dead-letters/redrive", json=body, headers=AUTH)
                assert error_of(refused) == (400, "BadRequest"), body
            refused = await client.post("/dead-letters/discard", content=b"{", headers=AUTH)
            assert error_of(refused) == (400, "BadRequest")
            unauthorized = await client.post("/dead-letters/redrive", json={"all": True})
            assert error_of(unauthorized) == (401, "Unauthorized")

            shop.broken.discard("a")
            answer = await client.post(
                "/dead-letters/redrive", json={"worker": "orders"}, headers=AUTH
            )
            assert answer.status_code == 202
            body = answer.json()
            assert (body["count"], body["skipped"]) == (3, [])
            outcomes = sorted(
                [
                    (
                        t["message_id"],
                        (await poll(client, t["url"], until={"resolved", "failed"}))["status"],
                    )
                    for t in body["tickets"]
                ]
            )
            assert outcomes == [(1, "resolved"), (2, "failed"), (3, "failed")]

            discarded = await client.post(
                "/dead-letters/discard", json={"command": "test/add"}, headers=AUTH
            )
            assert discarded.status_code == 200
            assert discarded.json()["count"] == 2
            assert sorted(d["message_id"] for d in discarded.json()["discarded"]) == [2, 3]
            assert (await client.get("/dead-letters")).json() == {"dead_letters": []}

    async def test_pause_resume_and_reset(self) -> None:
        app, worker, shop = shop_app(attempts=1)
        async with api(app, token=TOKEN) as client:
            for key in "ab":
                await client.post("/commands/test/add", json={"key": key}, headers=AUTH)
            await app.caught_up()
            early = await client.post("/workers/orders/reset", json={"to": 0}, headers=AUTH)
            assert error_of(early) == (409, "NotPaused")
            assert error_of(await client.post("/workers/orders/pause")) == (401, "Unauthorized")
            assert error_of(await client.post("/workers/nobody/pause", headers=AUTH))[0] == 404

            paused = await client.post("/workers/orders/pause", headers=AUTH)
            assert paused.status_code == 200
            assert (paused.json()["worker"], paused.json()["paused"]) == ("orders", True)
            health = (await client.get("/health")).json()
            assert (health["status"], health["reasons"]) == (
                "degraded",
                ["orders: paused by an operator"],
            )
            assert (await client.get("/inspect")).json()["workers"]["orders"]["paused"] is True
            shop.broken.add("c")
            shop.permanent = True

            for query in ("", "?to=x", "?to=99", "?to=-1"):
                bad = await client.get(f"/workers/orders/reset{query}")
                assert error_of(bad) == (400, "BadRequest"), query
            resets: list[Any] = [{}, {"to": "1"}, {"to": True}, {"to": 1, "more": 2}]
            for body in resets:
                bad = await client.post("/workers/orders/reset", json=body, headers=AUTH)
                assert error_of(bad) == (400, "BadRequest"), body
            plan = (await client.get("/workers/orders/reset?to=1")).json()
            assert (plan["to"], plan["again"], plan["replayed"]["count"]) == (
                1,
                {"count": 1, "first": 2, "last": 2},
                1,
            )
            assert plan["summary"][0].startswith("reset 'orders' to position 1")
            done = await client.post("/workers/orders/reset", json={"to": 1}, headers=AUTH)
            assert done.status_code == 200
            assert done.json()["again"] == plan["again"]
            assert worker.state == ["a"]

            resumed = await client.post("/workers/orders/resume", headers=AUTH)
            assert resumed.json()["paused"] is False
            assert resumed.json()["resets"] == 1
            await app.caught_up()
            assert shop.live == [1, 2, 2]
            assert (await client.get("/health")).json()["status"] == "healthy"

    async def test_a_redrive_of_a_paused_worker_is_409(self) -> None:
        app, _, shop = shop_app(attempts=1)
        shop.broken.add("vase")
        async with api(app, token=TOKEN) as client:
            await client.post("/commands/test/add", json={"key": "vase"}, headers=AUTH)
            await app.caught_up()
            await client.post("/workers/orders/pause", headers=AUTH)
            refused = await client.post("/dead-letters/orders/1/redrive", headers=AUTH)
            assert error_of(refused) == (409, "WorkerPaused")
            bulk = await client.post("/dead-letters/redrive", json={"all": True}, headers=AUTH)
            assert bulk.json()["skipped"] == [
                {"worker": "orders", "message_id": 1, "reason": "the worker is paused"}
            ]


# --- two processes sharing one log ---------------------------------------------------


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "shared.db")


def two_apps(database: str, shop: Shop, *, partitions: int = 1) -> tuple[pt.App, pt.App]:
    """Two app objects on one database with leases, standing for two processes."""
    options: dict[str, Any] = {"leases": True, "lease_ttl": 1.0, "partitions": partitions}
    first, _, _ = shop_app(database, shop=shop, attempts=1, **options)
    second, _, _ = shop_app(database, shop=shop, attempts=1, **options)
    return first, second


def runs_here(app: pt.App) -> list[str]:
    return sorted(n for n in app.inspect()["leases"]["held"] if n.startswith("orders"))


async def noticed(app: pt.App, *, paused: bool) -> float:
    """Seconds until ``app`` (another process) obeys the pause or the resume."""
    started = time.perf_counter()
    rt = app._rt
    assert rt is not None
    with trio.fail_after(10):
        while rt.controls.paused("orders") != paused:  # noqa: ASYNC110 - another client's write
            await trio.sleep(0.005)
    return time.perf_counter() - started


class TestAcrossProcesses:
    """Every process that serves the log obeys a pause, a resume and a reset."""

    @pytest.mark.parametrize("partitions", [1, 2])
    async def test_pause_and_resume(self, shared: str, partitions: int) -> None:
        shop = Shop()
        first, second = two_apps(shared, shop, partitions=partitions)
        async with serving(first), serving(second):
            await wait_until(lambda: len(runs_here(first) + runs_here(second)) == partitions)
            keys = [f"k{i}" for i in range(6)]
            for key in keys:
                await first.execute(Add(key))
            await wait_until(lambda: len(shop.live) == len(keys))
            # Paused through the process that may run none of it: both obey.
            await second.pause_worker("orders")
            took = await noticed(first, paused=True)
            print(f"pause noticed by the other process after {took * 1000:.1f} ms")
            assert took < 1.0
            for key in keys:
                await second.execute(Add(f"late-{key}"))
            await trio.sleep(0.5)
            assert len(shop.live) == len(keys)
            health = [app.inspect()["health"] for app in (first, second)]
            reasons = [r for h in health for r in h["reasons"]]
            assert any("paused by an operator" in r for r in reasons)
            await first.resume_worker("orders")
            took = await noticed(second, paused=False)
            print(f"resume noticed by the other process after {took * 1000:.1f} ms")
            await wait_until(lambda: len(shop.live) == 2 * len(keys))
            assert sorted(shop.live) == list(range(1, 2 * len(keys) + 1))

    async def test_reset_from_the_process_that_does_not_run_it(self, shared: str) -> None:
        shop = Shop()
        first, second = two_apps(shared, shop)
        async with serving(first):
            await wait_until(lambda: runs_here(first) == ["orders"])
            async with serving(second):
                for key in "abcd":
                    await first.execute(Add(key))
                await wait_until(lambda: len(shop.live) == 4)
                await second.pause_worker("orders")
                await noticed(first, paused=True)
                plan = await second.reset_position("orders", to=1)
                assert plan.again == pt.MessageRange(3, 2, 4)
                # The process that ran it is fenced off and starts again from the store,
                # wherever the lease goes now.
                await wait_until(lambda: shop.replayed == [1], timeout=10)
                await second.resume_worker("orders")
                await wait_until(lambda: len(shop.live) == 7, timeout=10)
                assert shop.live == [1, 2, 3, 4, 2, 3, 4]
                # Its position comes back to 4 (the last one's commit follows its handler).
                store = first.log.store
                with trio.fail_after(10):
                    while (await store.positions())["orders"] != 4:  # noqa: ASYNC110
                        await trio.sleep(0.01)


# --- the command line, through real subprocesses ---------------------------------------


class TestCommandLine:
    """The verbs as `petrock-trio` runs them, against a served app and its database."""

    def test_dead_letters(self, tmp_path: Path) -> None:
        server, url = start_shop(tmp_path, "--token", CLI_TOKEN)
        auth = {"PETROCK_TRIO_TOKEN": CLI_TOKEN, "PETROCK_TRIO_URL": url}
        try:
            vase = order(url, "broken-vase", CLI_TOKEN)
            wait_for_dead_letter(url, vase)

            # Returns at once with the ticket; status --wait follows it to its end.
            queued = run("dead-letters", "retry", "packer", str(vase), cwd=tmp_path, env=auth)
            assert queued.returncode == 0, queued.stderr
            ticket = re.search(r"ticket ([0-9a-f]+)", queued.stdout)
            assert ticket is not None, queued.stdout
            followed = run("dead-letters", "status", ticket[1], "--wait", cwd=tmp_path, env=auth)
            assert followed.returncode == 1
            assert "failed again (2 attempts)" in followed.stdout

            again = run("dead-letters", "retry-all", "--all", "--wait", cwd=tmp_path, env=auth)
            assert again.returncode == 1
            assert "1 re-drive(s) started" in again.stdout
            assert "failed again (3 attempts)" in again.stdout
            refused = run("dead-letters", "retry-all", cwd=tmp_path, env=auth)
            assert refused.returncode == 2
            assert "give --worker, --command or --all" in refused.stderr
            discard = ("dead-letters", "discard", "--worker", "packer")
            gone = run(*discard, "--yes", "--json", cwd=tmp_path, env=auth)
            assert gone.returncode == 0, gone.stderr
            assert [d["message_id"] for d in json.loads(gone.stdout)] == [vase]
            nothing = run(*discard, cwd=tmp_path, env=auth)
            assert (nothing.returncode, nothing.stdout) == (0, "0 dead letter(s) discarded\n")
        finally:
            assert server.stop() == 0
            server.kill()

    def test_workers(self, tmp_path: Path) -> None:
        server, url = start_shop(tmp_path, "--token", CLI_TOKEN)
        auth = {"PETROCK_TRIO_TOKEN": CLI_TOKEN, "PETROCK_TRIO_URL": url}
        try:
            first = order(url, "cup", CLI_TOKEN)
            paused = run("workers", "pause", "packer", cwd=tmp_path, env=auth)
            assert paused.returncode == 0, paused.stderr
            assert "packer paused" in paused.stdout
            held = order(url, "saucer", CLI_TOKEN)
            time.sleep(0.5)
            report = httpx.get(f"{url}/inspect").json()["workers"]["packer"]
            assert report["paused"] is True
            assert report["position"] < held

            # Reset asks first, saying what it means; no answer is no.
            reset = ("workers", "reset", "packer", "--to", "0")
            declined = subprocess.run(
                [EXE, *reset],
                cwd=tmp_path,
                env={**os.environ, **auth},
                input="n\n",
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert declined.returncode == 1
            assert "replayed to rebuild its state: no messages" in declined.stdout
            assert f"handled live again: 1 message (ids {first})" in declined.stdout
            done = run(*reset, "--yes", "--json", cwd=tmp_path, env=auth)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["again"] == {"count": 1, "first": first, "last": first}

            resumed = run("workers", "resume", "packer", cwd=tmp_path, env=auth)
            assert resumed.returncode == 0, resumed.stderr
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/inspect").json()["workers"]["packer"]["position"] < held:
                assert time.monotonic() < deadline
                time.sleep(0.05)

            # Written straight to the database: the serving app obeys it all the same.
            direct = run("workers", "pause", "packer", "--database", "shop.db", cwd=tmp_path)
            assert direct.returncode == 0, direct.stderr
            deadline = time.monotonic() + 10
            while not httpx.get(f"{url}/inspect").json()["workers"]["packer"]["paused"]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            nobody = run("workers", "pause", "nobody", "--database", "shop.db", cwd=tmp_path)
            assert nobody.returncode == 1
            assert "no worker named 'nobody'" in nobody.stderr
        finally:
            assert server.stop() == 0
            server.kill()
        offline = run(
            "workers", "resume", "packer", "--database", "shop.db", "--json", cwd=tmp_path
        )
        assert json.loads(offline.stdout)["paused"] is False

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(("workers", "pause", "w"), id="pause"),
            pytest.param(("workers", "resume", "w"), id="resume"),
            pytest.param(("dead-letters", "discard", "--all", "--yes"), id="discard"),
        ],
    )
    def test_a_database_that_is_no_log_is_refused_untouched(
        self, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        theirs = foreign_file(tmp_path / "theirs.db", wal=False)
        before = fingerprint(theirs)
        refused = invoke(*args, "--database", str(theirs))
        assert refused.exit_code == 3
        assert "is not a petrock_trio database" in refused.stderr
        assert fingerprint(theirs) == before
        assert companions(theirs) == []
        # A log is written: what every app serving it then obeys.
        log = petrock_file(tmp_path / "log.db")
        written = invoke(*args, "--database", str(log))
        assert written.exit_code == 0, written.output
