"""Event processing: workers react to commands and emit follow-up commands.

Run it:  python examples/event_processing.py   (takes about a second)

Orders are placed against stock. The ``fulfilment`` worker keeps stock levels in its
state and answers each placed order with a follow-up command, ``orders/reserve`` or
``orders/reject``; the ``notifier`` worker reacts to those and sends a notification
(here: appends a line to an outbox). The program then serves the same SQLite file a
second time: both workers replay the log, the fulfilment worker's stock levels come
back exactly, and nothing is emitted or sent twice.
"""

# ruff: noqa: ARG001, ARG002 - handlers and apply functions keep their (ctx, cmd, state) and
# (state, cmd, message) shapes whether they use every part or not.

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import attrs
import trio

import petrock_trio as pt

# --- commands ---------------------------------------------------------------------------


@pt.command("stock/restock")
@attrs.frozen
class Restock:
    sku: str
    quantity: int


@pt.command("orders/place")
@attrs.frozen
class PlaceOrder:
    order_id: str
    sku: str
    quantity: int

    def validate(self, state: Orders) -> None:
        if self.quantity < 1:
            raise pt.ValidationError("quantity must be at least 1", command_name="orders/place")
        if self.order_id in state.status:
            raise pt.ValidationError(f"order {self.order_id} exists", command_name="orders/place")


@pt.command("orders/reserve")
@attrs.frozen
class ReserveOrder:
    order_id: str
    sku: str
    quantity: int


@pt.command("orders/reject")
@attrs.frozen
class RejectOrder:
    order_id: str
    reason: str


# --- application state (the projection) -------------------------------------------------


@attrs.define
class Orders:
    status: dict[str, str] = attrs.Factory(dict)

    def apply_place(self, cmd: PlaceOrder, message: pt.Message) -> None:
        self.status[cmd.order_id] = "placed"

    def apply_reserve(self, cmd: ReserveOrder, message: pt.Message) -> None:
        self.status[cmd.order_id] = f"reserved {cmd.quantity} x {cmd.sku}"

    def apply_reject(self, cmd: RejectOrder, message: pt.Message) -> None:
        self.status[cmd.order_id] = f"rejected: {cmd.reason}"


# --- the fulfilment worker: decides, and says so with a command --------------------------


@attrs.define
class Stock:
    available: dict[str, int] = attrs.Factory(dict)


async def on_restock(ctx: pt.HandlerContext, cmd: Restock, state: Stock) -> None:
    state.available[cmd.sku] = state.available.get(cmd.sku, 0) + cmd.quantity


async def on_place(ctx: pt.HandlerContext, cmd: PlaceOrder, state: Stock) -> None:
    # The decision depends only on earlier messages, so replay makes it again, the same
    # way, and rebuilds the same stock levels; emit() does nothing during replay.
    have = state.available.get(cmd.sku, 0)
    if have >= cmd.quantity:
        state.available[cmd.sku] = have - cmd.quantity
        ctx.emit(ReserveOrder(cmd.order_id, cmd.sku, cmd.quantity))
    else:
        ctx.emit(RejectOrder(cmd.order_id, f"only {have} {cmd.sku} in stock"))


def fulfilment_worker() -> pt.PatternWorker[Stock]:
    worker = pt.PatternWorker("fulfilment", "Reserves stock for placed orders", Stock())
    worker.on_command(pt.command_name(Restock), on_restock)
    worker.on_command(pt.command_name(PlaceOrder), on_place)
    return worker


# --- the notifier: a side effect per follow-up command -----------------------------------


async def notify(outbox: list[str], ctx: pt.HandlerContext, cmd: object, state: None) -> None:
    if ctx.is_replay:
        return  # sent when this message was live
    # A real notifier passes ctx.idempotency_key to the mail service, so that a retry
    # after a crash does not send a second mail.
    outbox.append(f"{ctx.idempotency_key}: {cmd}")


def notifier_worker(outbox: list[str]) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker("notifier", "Tells customers")
    worker.on_command(pt.command_name(ReserveOrder), partial(notify, outbox))
    worker.on_command(pt.command_name(RejectOrder), partial(notify, outbox))
    return worker


# --- wiring and a run --------------------------------------------------------------------


def build_app(database: str, outbox: list[str]) -> tuple[pt.App, Orders, pt.PatternWorker[Stock]]:
    app = pt.App(database=database)
    orders = Orders()
    app.register_command(Restock)
    app.register_command(PlaceOrder, Orders.apply_place, state=orders)
    app.register_command(ReserveOrder, Orders.apply_reserve, state=orders)
    app.register_command(RejectOrder, Orders.apply_reject, state=orders)
    fulfilment = fulfilment_worker()
    app.register_worker(fulfilment)
    app.register_worker(notifier_worker(outbox))
    return app, orders, fulfilment


async def run(database: str, commands: list[object]) -> None:
    outbox: list[str] = []
    app, orders, fulfilment = build_app(database, outbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        replayed = fulfilment.metrics().replayed
        print(f"serving: fulfilment replayed {replayed} messages, stock {fulfilment.state}")
        for cmd in commands:
            await app.execute(cmd)
        await app.caught_up()
        for order_id, status in sorted(orders.status.items()):
            print(f"  {order_id}: {status}")
        print(f"  notifications sent: {len(outbox)}")
        print(f"  log head: {app.inspect()['head']}")
        app.stop()


async def main() -> None:
    pt.configure_logging(level="warning")
    with tempfile.TemporaryDirectory() as directory:
        database = str(Path(directory) / "orders.db")
        await run(
            database,
            [
                Restock("widget", 2),
                PlaceOrder("o-1", "widget", 1),
                PlaceOrder("o-2", "widget", 2),
                Restock("gadget", 5),
                PlaceOrder("o-3", "gadget", 5),
            ],
        )
        # Same file, new app: the workers replay; o-4 sees the stock the log implies.
        await run(database, [PlaceOrder("o-4", "gadget", 1)])


if __name__ == "__main__":
    trio.run(main)
