"""An app's resources and routes: ``App(lifespan=...)`` around the workers, shared with
handlers and periodic work; ``App(routes=...)`` served beside the HTTP API; async
factories for ``petrock-trio serve``. Real SQLite files, a real Hypercorn server and
real httpx clients."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.test_cli import Running


@pt.command("life/ping")
@attrs.frozen
class Ping:
    text: str


@attrs.define
class Resources:
    """What the tests' lifespans yield: a name and what happened to it."""

    name: str
    closed: bool = False


def recording_lifespan(events: list[str]) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: pt.App) -> AsyncIterator[Resources]:
        events.append("enter")
        await trio.sleep(0.5)  # opening takes time: the workers wait for it
        resources = Resources("shared")
        try:
            yield resources
        finally:
            await trio.sleep(0.5)  # closing too, even after a hard stop
            resources.closed = True
            events.append("exit")

    return lifespan


def recording_worker(events: list[str]) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker("pinger")

    @worker.on(Ping)
    async def ping(ctx: pt.HandlerContext, cmd: Ping, state: None) -> None:
        mode = "replay" if ctx.is_replay else "live"
        events.append(f"{mode} {cmd.text} with {ctx.resources.name}")

    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        if ctx.run == 1:
            events.append(f"periodic with {ctx.resources.name}")

    worker.set_periodic_work(tick, interval=100.0)
    return worker


def resources_of(app: pt.App) -> Any:
    return app.resources


class TestLifespan:
    """Entered before the workers start (replay included), left after they stop."""

    async def test_around_the_workers(
        self, tmp_path: Path, autojump_clock: trio.testing.MockClock
    ) -> None:
        database = str(tmp_path / "life.db")
        events: list[str] = []
        for text in ("a", "b"):
            app = pt.App(database=database, lifespan=recording_lifespan(events))
            app.register_worker(recording_worker(events))
            assert resources_of(app) is None
            async with serving(app):
                resources = resources_of(app)
                assert resources == Resources("shared")
                await app.execute(Ping(text))
                await app.caught_up()
            assert resources_of(app) is None
            assert resources.closed
        assert events == [
            "enter",
            "periodic with shared",
            "live a with shared",
            "exit",
            "enter",
            "replay a with shared",
            "periodic with shared",
            "live b with shared",
            "exit",
        ]

    async def test_left_after_a_hard_stop(self, autojump_clock: trio.testing.MockClock) -> None:
        """Cancelling serve cancels the handlers, not the closing of what they shared."""
        events: list[str] = []
        app = pt.App(lifespan=recording_lifespan(events))
        app.register_worker(recording_worker(events))
        async with serving(app, graceful=False):
            await app.execute(Ping("a"))
            await app.caught_up()
        assert events[-1] == "exit"

    async def test_a_failure_entering_fails_serve(self, tmp_path: Path) -> None:
        database = tmp_path / "never.db"
        handled: list[str] = []

        @contextlib.asynccontextmanager
        async def lifespan(app: pt.App) -> AsyncIterator[None]:
            raise OSError("the pool cannot connect")
            yield

        app = pt.App(database=str(database), lifespan=lifespan)
        app.register_worker(recording_worker(handled))
        with pytest.raises(OSError, match="the pool cannot connect"):
            await pt.serve(app)  # the error itself, not wrapped
        assert handled == []
        assert not database.exists()  # entered first: nothing was opened
        assert app.resources is None

    async def test_not_entered_for_an_app_that_cannot_serve(self) -> None:
        """A route naming no registered command is refused before anything is opened."""
        events: list[str] = []
        app = pt.App(lifespan=recording_lifespan(events))
        app.register_command(Ping)
        worker: pt.PatternWorker[None] = pt.PatternWorker("typo")
        worker.on_command("life/pnig", recording_worker(events).route_table["life/ping"].handler)
        app.register_worker(worker)
        with pytest.raises(pt.ConfigurationError, match="did you mean 'life/ping'"):
            await pt.serve(app)
        assert events == []

    async def test_not_an_async_context_manager(self) -> None:
        async def lifespan(app: pt.App) -> None:  # @asynccontextmanager forgotten
            pass

        app = pt.App(lifespan=lifespan)  # type: ignore[arg-type]
        with pytest.raises(pt.ConfigurationError, match=r"@contextlib\.asynccontextmanager"):
            await pt.serve(app)
        with pytest.raises(pt.ConfigurationError, match="lifespan must be a function"):
            pt.App(lifespan="resources")  # type: ignore[arg-type]

    async def test_a_shared_client_calls_the_apps_own_route(self) -> None:
        """One httpx client for every call: opened by the lifespan, used by handlers."""
        calls: list[str] = []

        async def echo(request: Request) -> JSONResponse:
            calls.append(request.query_params["text"])
            return JSONResponse({"echo": request.query_params["text"]})

        @contextlib.asynccontextmanager
        async def lifespan(app: pt.App) -> AsyncIterator[httpx.AsyncClient]:
            async with httpx.AsyncClient(timeout=10) as client:
                yield client

        worker: pt.PatternWorker[list[str]] = pt.PatternWorker("caller", state=[])
        base: list[str] = []

        @worker.on(Ping, replay=False)
        async def call(ctx: pt.HandlerContext, cmd: Ping, state: list[str]) -> None:
            client: httpx.AsyncClient = ctx.resources
            reply = await client.get(f"{base[0]}/echo", params={"text": cmd.text})
            state.append(reply.json()["echo"])

        app = pt.App(lifespan=lifespan, routes=[Route("/echo", echo)], hooks=[])
        app.register_worker(worker)
        async with trio.open_nursery() as nursery:
            base.append(await nursery.start(partial(pt.serve_http, app, port=0)))
            async with serving(app):
                for text in ("one", "two"):
                    await app.execute(Ping(text))
                await app.caught_up()
                client = app.resources
            nursery.cancel_scope.cancel()
        assert worker.state == ["one", "two"]
        assert calls == ["one", "two"]
        assert client.is_closed


class TestRoutes:
    """The app's own routes, served beside the API by http_app and serve_http."""

    @staticmethod
    @contextlib.asynccontextmanager
    async def served(app: pt.App) -> AsyncIterator[httpx.AsyncClient]:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                yield client
            nursery.cancel_scope.cancel()

    async def test_served_beside_the_api(self) -> None:
        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse(f"hello {request.path_params['name']}")

        async def count(request: Request) -> JSONResponse:
            app: pt.App = request.app.state.petrock_app
            return JSONResponse({"head": app.inspect()["head"]})

        app = pt.App(
            hooks=[],
            routes=[
                Route("/hello/{name}", hello),
                Mount("/shop", routes=[Route("/head", count)]),
            ],
        )
        app.register_command(Ping)
        async with self.served(app) as client, serving(app):
            client_app = await client.get("/hello/ada")
            assert (client_app.status_code, client_app.text) == (200, "hello ada")
            await app.execute(Ping("x"))
            assert (await client.get("/shop/head")).json() == {"head": 1}
            # The API is unchanged beside them.
            assert (await client.get("/health")).json()["status"] == "healthy"
            assert (await client.get("/nothing")).status_code == 404
            # Behind the same Host check as the API.
            refused = await client.get("/hello/ada", headers={"Host": "evil.example"})
            assert refused.status_code == 403

    @pytest.mark.parametrize("path", ["/health", "/", "/dead-letters/w/1", "/commands/x"])
    def test_an_api_path_is_refused(self, path: str) -> None:
        app = pt.App(routes=[Route(path, lambda request: PlainTextResponse("mine"))])
        with pytest.raises(pt.ConfigurationError, match=f"route '{path}' is a path of the HTTP"):
            pt.http_app(app)

    def test_only_starlette_routes(self) -> None:
        app = pt.App(routes=["/hello"])  # type: ignore[list-item]
        with pytest.raises(pt.ConfigurationError, match="takes Starlette routes"):
            pt.http_app(app)


FACTORY = """
import contextlib

import attrs
from starlette.responses import JSONResponse
from starlette.routing import Route

import petrock_trio as pt


@pt.command("life/ping")
@attrs.frozen
class Ping:
    text: str


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"opened": "by the lifespan"}


async def status(request):
    app = request.app.state.petrock_app
    return JSONResponse({"resources": app.resources, "commands": app.registry.names()})


async def create_app():
    # Awaited inside Trio: it may open connections, read secrets, check a service.
    await trio_sleep(0)
    worker = pt.PatternWorker("pinger")

    @worker.on(Ping)
    async def ping(ctx, cmd, state):
        pass

    app = pt.App(database="unused.db", lifespan=lifespan, routes=[Route("/status", status)])
    app.register_worker(worker)
    return app


from trio import sleep as trio_sleep
"""


def test_serve_awaits_an_async_factory_and_serves_its_routes(tmp_path: Path) -> None:
    (tmp_path / "lifeapp.py").write_text(textwrap.dedent(FACTORY))
    server = Running(
        "serve", "lifeapp:create_app", "--database", "life.db", "--port", "0", cwd=tmp_path
    )
    try:
        url = server.wait_for(r"HTTP API and dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
        server.wait_for(r"^serving life\.db")
        assert httpx.get(f"{url}/status").json() == {
            "resources": {"opened": "by the lifespan"},
            "commands": ["life/ping"],
        }
        assert httpx.post(f"{url}/commands/life/ping", json={"text": "x"}).status_code == 201
        assert server.stop() == 0
    finally:
        server.kill()
    assert (tmp_path / "life.db").exists()  # --database applied to the awaited app


def test_an_async_factory_that_returns_no_app(tmp_path: Path) -> None:
    (tmp_path / "noapp.py").write_text("async def create_app():\n    return 42\n")
    server = Running("serve", "noapp:create_app", "--port", "0", cwd=tmp_path)
    assert server.finish() == 2
    assert "noapp:create_app is int, not an App" in server.stderr.read_text()
