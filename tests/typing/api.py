"""The public API as an application uses it: type-checked (mypy and pyright, strict),
never run. ``tests/test_typing.py`` checks it; ``mistakes.py`` beside it holds the
mistakes the types must catch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import assert_type

import attrs
import httpx
import trio
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import petrock_trio as pt


@pt.command("orders/place")
@attrs.frozen
class PlaceOrder:
    order_id: str
    amount: int


@pt.command("orders/placed")
@attrs.frozen
class OrderPlaced:
    order_id: str


@pt.command("orders/charge")
@attrs.frozen
class ChargeOrder:
    order_id: str


@attrs.define
class Orders:
    open: dict[str, int] = attrs.field(factory=dict[str, int])


worker = pt.PatternWorker("orders", "Places and charges orders", state=Orders(), partitions=4)
assert_type(worker, pt.PatternWorker[Orders])
assert_type(worker.state, Orders)


@worker.on(PlaceOrder, key=lambda cmd: cmd.order_id, timeout=2.0)
async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
    state.open[cmd.order_id] = cmd.amount
    ctx.emit(OrderPlaced(cmd.order_id))
    ctx.emit(ChargeOrder(cmd.order_id))


assert_type(place, Callable[[pt.HandlerContext, PlaceOrder, Orders], Awaitable[None]])


async def charge(ctx: pt.HandlerContext, cmd: ChargeOrder, state: Orders) -> None:
    client: httpx.AsyncClient = ctx.resources
    await client.post("https://payments.invalid/charge", json={"id": ctx.idempotency_key})


# The call form returns the handler; a live-only route (replay skips it).
assert_type(
    worker.on(ChargeOrder, charge, key=lambda cmd: cmd.order_id, replay=False),
    Callable[[pt.HandlerContext, ChargeOrder, Orders], Awaitable[None]],
)


# A handler may take a wider command type than the route's, and state as declared.
async def audit(ctx: pt.HandlerContext, cmd: object, state: Orders) -> None:
    ctx.log.info("seen", command=repr(cmd))


worker.on(OrderPlaced, audit, key=lambda cmd: cmd.order_id)


# String routes stay for commands defined elsewhere (registered by their feature).
@worker.on_command("payments/refunded", key=lambda cmd: cmd.order_id, replay=False)
async def refunded(ctx: pt.HandlerContext, cmd: object, state: Orders) -> None:
    pass


async def report(ctx: pt.PeriodicContext, state: Orders) -> None:
    for order_id in state.open:
        ctx.emit(ChargeOrder(order_id))


worker.set_periodic_work(report, interval=60.0)


@contextlib.asynccontextmanager
async def lifespan(app: pt.App) -> AsyncGenerator[httpx.AsyncClient, None]:
    async with httpx.AsyncClient() as client:
        yield client


async def status(request: Request) -> PlainTextResponse:
    app: pt.App = request.app.state.petrock_app
    return PlainTextResponse(str(app.inspect()["head"]))


async def create_app() -> pt.App:
    app = pt.App(database="orders.db", lifespan=lifespan, routes=[Route("/status", status)])
    app.register_worker(worker)  # registers PlaceOrder, OrderPlaced and ChargeOrder
    return app


async def main() -> None:
    app = await create_app()
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        url: str = await nursery.start(pt.serve_http, app)
        message = await app.execute(PlaceOrder("o-1", 30))
        assert_type(message, pt.Message)
        await app.caught_up()
        print(url, pt.http_app(app))
        app.stop()
