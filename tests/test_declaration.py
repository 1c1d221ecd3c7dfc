"""Declaring a worker in one place: routes from command classes, commands registered by
the worker, typos refused before serving, programming errors dead-lettered at once, and
live-only routes that replay skips."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._retry import Backoff, GiveUp, decide
from petrock_trio.testing import memory_database, serving


@pt.command("decl/place")
@attrs.frozen
class PlaceOrder:
    order_id: str
    amount: int = 1


@pt.command("decl/placed")
@attrs.frozen
class OrderPlaced:
    order_id: str


@pt.command("decl/unregistered")
@attrs.frozen
class NeverRegistered:
    value: int = 0


@pt.command("decl/contested")
@attrs.frozen
class Contested:
    order_id: str


@attrs.frozen
class NotACommand:
    value: int = 0


@attrs.define
class Orders:
    placed: list[str] = attrs.Factory(list)


class TestRoutesFromClasses:
    """`on(cls)` routes by the class's command name, as a decorator or a call."""

    def test_decorator_and_call_forms(self) -> None:
        worker = pt.PatternWorker("orders", state=Orders())

        @worker.on(PlaceOrder, timeout=2.0, retry=pt.Backoff(max_attempts=3))
        async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
            state.placed.append(cmd.order_id)

        async def placed(ctx: pt.HandlerContext, cmd: OrderPlaced, state: Orders) -> None:
            pass

        assert worker.on(OrderPlaced, placed, replay=False) is placed
        assert worker.routes == {"decl/place", "decl/placed"}
        route = worker.route_table["decl/place"]
        assert route.handler is place
        assert route.command is PlaceOrder
        assert route.timeout == 2.0
        assert route.retry == pt.Backoff(max_attempts=3)
        assert worker.limit("decl/place") == 2.0
        assert route.replay
        assert not worker.route_table["decl/placed"].replay

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            pytest.param("decl/place", "on_command", id="a-name"),
            pytest.param(NotACommand, "decorate it with @pt.command", id="not-decorated"),
            pytest.param(NotACommand(), "takes a command class", id="an-instance"),
        ],
    )
    def test_only_command_classes(self, target: Any, message: str) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")
        with pytest.raises(pt.ConfigurationError, match=message):
            worker.on(target)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            pytest.param({"timeout": 0}, "timeout must be positive", id="timeout"),
            pytest.param({"replay": "no"}, "replay must be True or False", id="replay"),
            pytest.param({"key": "order_id"}, "key .* is not callable", id="key"),
        ],
    )
    def test_bad_options_are_refused_where_given(
        self, options: dict[str, Any], message: str
    ) -> None:
        """The decorator form refuses them before it is applied, as the call form does."""
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")
        with pytest.raises(pt.ConfigurationError, match=message):
            worker.on(PlaceOrder, **options)
        with pytest.raises(pt.ConfigurationError, match=message):
            worker.on_command("decl/place", **options)
        assert worker.routes == frozenset()

    def test_a_class_routed_twice(self) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")

        async def handle(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:
            pass

        worker.on(PlaceOrder, handle)
        with pytest.raises(pt.ConfigurationError, match="already routes 'decl/place'"):
            worker.on_command("decl/place", handle)

    async def test_key_per_route_partitions(self, autojump_clock: trio.testing.MockClock) -> None:
        worker = pt.PatternWorker("orders", state=Orders(), partitions=4)
        seen: dict[str, set[int]] = {}

        @worker.on(PlaceOrder, key=lambda cmd: cmd.order_id)
        async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
            seen.setdefault(cmd.order_id, set()).add(ctx.partition)

        app = pt.App()
        app.register_worker(worker)
        async with serving(app):
            for n in range(20):
                await app.execute(PlaceOrder(f"o{n % 5}", n))
            await app.caught_up()
        assert sorted(seen) == [f"o{n}" for n in range(5)]
        assert all(len(partitions) == 1 for partitions in seen.values())
        assert len(set().union(*seen.values())) > 1


class TestRegistration:
    """`register_worker` registers the classes its routes name, once."""

    def test_registers_the_routed_classes(self) -> None:
        app = pt.App()
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")

        @worker.on(PlaceOrder)
        async def handle(ctx: pt.HandlerContext, cmd: PlaceOrder, state: None) -> None:
            pass

        app.register_worker(worker)
        assert app.registry.names() == ["decl/place"]
        assert app.registry.lookup("decl/place") is PlaceOrder

    def test_the_same_class_again_is_fine(self) -> None:
        """Registered before (with its apply) or by another worker: nothing changes."""
        app = pt.App(state=Orders())
        applied: list[str] = []
        app.register_command(PlaceOrder, lambda s, cmd, m: applied.append(cmd.order_id))
        for name in ("a", "b"):
            worker: pt.PatternWorker[None] = pt.PatternWorker(name)
            worker.on(PlaceOrder, _ignore)
            app.register_worker(worker)
        assert app.registry.names() == ["decl/place"]
        assert "decl/place" in app.projection.appliers
        # Registering the class after the worker did keeps working too.
        app.register_command(PlaceOrder, lambda s, cmd, m: None)

    def test_a_different_class_under_the_name(self) -> None:
        @pt.command("decl/contested")
        @attrs.frozen
        class Impostor:
            order_id: str

        app = pt.App()
        app.register_command(Impostor)
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")
        worker.on(PlaceOrder, _ignore)
        worker.on(Contested, _ignore)
        with pytest.raises(
            pt.ConfigurationError,
            match=r"worker 'w' routes Contested as 'decl/contested', but 'decl/contested' "
            r"is registered to .*Impostor",
        ):
            app.register_worker(worker)
        # Refused whole: nothing registered, the worker neither registered nor frozen.
        assert app.workers == {}
        assert app.registry.names() == ["decl/contested"]
        worker.on(OrderPlaced, _ignore)

    async def test_a_worker_alone_serves_its_commands(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """No register_command: the worker's routes bring their classes."""
        worker = pt.PatternWorker("orders", state=Orders())

        @worker.on(PlaceOrder)
        async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
            state.placed.append(cmd.order_id)

        app = pt.App()
        app.register_worker(worker)
        async with serving(app):
            await app.execute(PlaceOrder("o1"))
            await app.caught_up()
        assert worker.state.placed == ["o1"]


async def _ignore(ctx: pt.HandlerContext, cmd: Any, state: Any) -> None:
    pass


class TestRoutesNameRegisteredCommands:
    """Serving with a route that names no registered command is refused, naming it."""

    async def test_a_typo(self, tmp_path: Any) -> None:
        database = tmp_path / "typo.db"
        app = pt.App(database=str(database))
        app.register_command(PlaceOrder)
        worker: pt.PatternWorker[None] = pt.PatternWorker("orders")
        worker.on_command("decl/plcae", _ignore)
        app.register_worker(worker)
        with pytest.raises(
            pt.ConfigurationError,
            match=r"worker 'orders' routes 'decl/plcae', but no command of that name is "
            r"registered with this app \(did you mean 'decl/place'\?\)",
        ):
            await pt.serve(app)
        assert not database.exists()  # refused before anything was opened

    async def test_a_command_marked_but_not_registered(self) -> None:
        """Known to the process (decorated, imported) is not enough: execute and emit
        accept the app's registered commands only."""
        app = pt.App()
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")
        worker.on_command(pt.command_name(NeverRegistered), _ignore)
        app.register_worker(worker)
        with pytest.raises(pt.ConfigurationError, match=r"'decl/unregistered'.*register_command"):
            await pt.serve(app)
        app.register_command(NeverRegistered)
        async with serving(app):
            await app.execute(NeverRegistered(1))
            await app.caught_up()


class TestProgrammingErrorsAreNotRetried:
    """Emitting what is not a registered command dead-letters the message at once."""

    @pytest.mark.parametrize(
        "emitted",
        [
            pytest.param(NeverRegistered(), id="unregistered-class"),
            pytest.param("decl/placed", id="a-name"),
            pytest.param(object(), id="an-object"),
        ],
    )
    async def test_dead_lettered_after_one_attempt(
        self, autojump_clock: trio.testing.MockClock, emitted: Any
    ) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("emitter")
        attempts: list[float] = []

        @worker.on(PlaceOrder)
        async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: None) -> None:
            attempts.append(trio.current_time())
            ctx.emit(emitted)

        app = pt.App()
        app.register_worker(worker)
        async with serving(app):
            started = trio.current_time()
            await app.execute(PlaceOrder("o1"))
            await app.caught_up()
            elapsed = trio.current_time() - started
            (letter,) = await app.dead_letters()
        assert attempts == [started]
        assert elapsed == 0  # no backoff: the default policy would wait 91 s in all
        assert letter.attempts == 1
        assert "UnknownCommand" in letter.error
        assert worker.metrics().retried == 0

    def test_the_decision(self) -> None:
        policy = Backoff()
        error = pt.UnknownCommand("command 'x' is not registered with this app")
        assert decide(error, 1, policy) == GiveUp("programming error: not a command")
        grouped = ExceptionGroup("handler", [RuntimeError("also"), error])
        assert decide(grouped, 1, policy) == GiveUp("programming error: not a command")
        assert decide(pt.Permanent("no"), 1, policy) == GiveUp("permanent failure")


class TestLiveOnly:
    """`replay=False` routes run live only: replay skips them."""

    async def test_replay_skips_them(self, autojump_clock: trio.testing.MockClock) -> None:
        charged: list[tuple[str, bool]] = []
        counted: list[tuple[str, bool]] = []
        replayed: list[pt.Event] = []

        def new_worker() -> pt.PatternWorker[Orders]:
            worker = pt.PatternWorker("orders", state=Orders())

            @worker.on(PlaceOrder)
            async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
                state.placed.append(cmd.order_id)
                counted.append((cmd.order_id, ctx.is_replay))
                ctx.emit(OrderPlaced(cmd.order_id))

            @worker.on(OrderPlaced, replay=False)
            async def charge(ctx: pt.HandlerContext, cmd: OrderPlaced, state: Orders) -> None:
                charged.append((cmd.order_id, ctx.is_replay))

            return worker

        with memory_database() as url:
            for orders in (["o1", "o2"], ["o3"]):
                worker = new_worker()
                app = pt.App(database=url, hooks=[replayed.append])
                app.register_worker(worker)
                async with serving(app):
                    for order_id in orders:
                        await app.execute(PlaceOrder(order_id))
                    await app.caught_up()
        # Every order charged once, live; the other route rebuilt its state in replay.
        assert charged == [("o1", False), ("o2", False), ("o3", False)]
        assert counted == [
            ("o1", False),
            ("o2", False),
            ("o1", True),
            ("o2", True),
            ("o3", False),
        ]
        assert worker.state.placed == ["o1", "o2", "o3"]
        names = [e.message.name for e in replayed if isinstance(e, pt.Replayed)]
        assert names == ["decl/place", "decl/place"]

    async def test_a_worker_of_live_only_routes_reads_no_old_page(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """With nothing to replay its feed starts at the saved position, as with
        ``PatternWorker(replay=False)``."""
        charged: list[int] = []

        def new_worker() -> pt.PatternWorker[None]:
            worker: pt.PatternWorker[None] = pt.PatternWorker("charger")

            @worker.on(PlaceOrder, replay=False)
            async def charge(ctx: pt.HandlerContext, cmd: PlaceOrder, state: None) -> None:
                charged.append(ctx.message.id)

            return worker

        with memory_database() as url:
            app = pt.App(database=url)
            app.register_worker(new_worker())
            async with serving(app):
                for n in range(3):
                    await app.execute(PlaceOrder(f"o{n}"))
                await app.caught_up()
            app = pt.App(database=url)
            worker = new_worker()
            app.register_worker(worker)
            async with serving(app):
                assert worker.replay_progress() == (3, 3)
                (run,) = worker._current.runs.values()
                assert not run.replays  # type: ignore[attr-defined]
                assert run.feed.position.value == 3  # type: ignore[attr-defined]
                await app.execute(PlaceOrder("o3"))
                await app.caught_up()
        assert charged == [1, 2, 3, 4]

    async def test_on_command_takes_it_too(self, autojump_clock: trio.testing.MockClock) -> None:
        calls: list[bool] = []
        with memory_database() as url:
            for _ in range(2):
                worker: pt.PatternWorker[None] = pt.PatternWorker("w")

                @worker.on_command("decl/place", replay=False)
                async def handle(ctx: pt.HandlerContext, cmd: PlaceOrder, state: None) -> None:
                    calls.append(ctx.is_replay)

                app = pt.App(database=url)
                app.register_command(PlaceOrder)
                app.register_worker(worker)
                async with serving(app):
                    await app.execute(PlaceOrder("x"))
                    await app.caught_up()
        assert calls == [False, False]
