"""Mistakes the types catch, each kept as an expected error.

Each mistake carries the error each checker must report: ``# type: ignore[code]`` for
mypy (run with ``warn_unused_ignores``) and ``# pyright: ignore[rule]`` for pyright
(which reads only its own comments here, and reports unnecessary ones). If a mistake
stops being caught, its comment is unused and ``tests/test_typing.py`` fails. Never run.
Calls of the overloaded ``on`` carry a bare ``# pyright: ignore``: pyright names the
same mistake ``reportArgumentType`` or ``reportCallIssue`` depending on which overload
it reports, so only "some error" is stable there.

Pyright accepts a command class where an instance is due (``ctx.emit(PlaceOrder)``):
the class has ``__match_args__`` too. Only mypy catches that one; at run time it is an
``UnknownCommand``, dead-lettered at once.
"""

from __future__ import annotations

import attrs

import petrock_trio as pt


@pt.command("orders/place")
@attrs.frozen
class PlaceOrder:
    order_id: str


@pt.command("stock/reserve")
@attrs.frozen
class ReserveStock:
    sku: str


@attrs.define
class Orders:
    placed: list[str] = attrs.field(factory=list[str])


@attrs.define
class Stock:
    reserved: list[str] = attrs.field(factory=list[str])


orders = pt.PatternWorker("orders", state=Orders())


async def for_stock(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Stock) -> None:
    """A handler written for another worker's state."""


async def for_reserve(ctx: pt.HandlerContext, cmd: ReserveStock, state: Orders) -> None:
    """A handler written for another command."""


async def place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
    """A right handler: the mistakes below are in how it is routed."""


orders.on(PlaceOrder, for_stock)  # type: ignore[arg-type]  # pyright: ignore
orders.on(PlaceOrder, for_reserve)  # type: ignore[arg-type]  # pyright: ignore
orders.on(PlaceOrder, place, key=lambda cmd: cmd.sku)  # type: ignore[attr-defined]  # pyright: ignore
orders.on("orders/place", place)  # type: ignore[call-overload]  # pyright: ignore
orders.on(PlaceOrder, place, timeout="5s")  # type: ignore[call-overload]  # pyright: ignore


@orders.on(PlaceOrder)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
async def decorated_for_stock(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Stock) -> None:
    """The decorator form: the same mistake, reported on the decorator's line."""


# A route by name knows no command class, but the worker's state all the same.
orders.on_command("orders/place", for_stock)  # type: ignore[arg-type]  # pyright: ignore


@orders.on_command("orders/place")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
async def by_name_for_stock(ctx: pt.HandlerContext, cmd: object, state: Stock) -> None:
    """The decorator form of a route by name, for another worker's state."""


async def emits(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Orders) -> None:
    ctx.emit("orders/place")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    ctx.emit(object())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    ctx.emit(PlaceOrder)  # type: ignore[arg-type]
    ctx.emit(cmd.order_id)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def periodic(ctx: pt.PeriodicContext, state: Orders) -> None:
    ctx.emit("orders/place")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


pt.App(lifespan=42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
