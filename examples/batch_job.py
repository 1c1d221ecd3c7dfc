"""A batch job: periodic aggregation over a worker's state.

Run it:  python examples/batch_job.py   (takes about two seconds)

Shops record sales as they happen; the ``sales-batcher`` worker adds each one to its
open totals. Its periodic work runs every half second and, when sales are open, asks
for a batch to be closed by emitting ``sales/close-requested``. The worker routes that
command too: its handler takes the open totals, emits ``sales/batch-closed`` with them
and starts a new batch. Periodic work decides *when*; a handler decides *what*. So the
state changes only in handlers, in log order, and a restart rebuilds it exactly;
and the closed batch is committed in the same transaction as the worker's position.
"""

# ruff: noqa: ARG001, ARG002 - handlers and apply functions keep their (ctx, cmd, state) and
# (state, cmd, message) shapes whether they use every part or not.

from __future__ import annotations

import attrs
import trio

import petrock_trio as pt

INTERVAL = 0.5


@pt.command("sales/record")
@attrs.frozen
class RecordSale:
    shop: str
    cents: int


@pt.command("sales/close-requested")
@attrs.frozen
class CloseRequested:
    pass


@pt.command("sales/batch-closed")
@attrs.frozen
class BatchClosed:
    batch: int
    totals: dict[str, int]


@attrs.define
class Reports:
    """The application's view: every closed batch, in order."""

    batches: list[BatchClosed] = attrs.Factory(list)

    def apply_closed(self, cmd: BatchClosed, message: pt.Message) -> None:
        self.batches.append(cmd)


@attrs.define
class Batcher:
    open: dict[str, int] = attrs.Factory(dict)
    closed: int = 0


async def on_sale(ctx: pt.HandlerContext, cmd: RecordSale, state: Batcher) -> None:
    state.open[cmd.shop] = state.open.get(cmd.shop, 0) + cmd.cents


async def on_close_requested(ctx: pt.HandlerContext, cmd: CloseRequested, state: Batcher) -> None:
    if not state.open:
        return  # a second request before the first was handled: nothing left to close
    state.closed += 1
    ctx.emit(BatchClosed(state.closed, state.open))
    state.open = {}


async def request_close(ctx: pt.PeriodicContext, state: Batcher) -> None:
    # Read-only: a periodic run's changes to state would not be rebuilt by replay.
    if state.open:
        ctx.emit(CloseRequested())


def batcher_worker() -> pt.PatternWorker[Batcher]:
    worker = pt.PatternWorker("sales-batcher", "Closes sales batches", Batcher())
    worker.on_command(pt.command_name(RecordSale), on_sale)
    worker.on_command(pt.command_name(CloseRequested), on_close_requested)
    # A run only looks at memory: a tight bound says so (the default is 30 s).
    worker.set_periodic_work(request_close, interval=INTERVAL, timeout=1.0)
    return worker


async def main() -> None:
    pt.configure_logging(level="warning")
    app = pt.App()
    reports = Reports()
    app.register_command(RecordSale)
    app.register_command(CloseRequested)
    app.register_command(BatchClosed, Reports.apply_closed, state=reports)
    worker = batcher_worker()
    app.register_worker(worker)
    waves = [
        [RecordSale("north", 1250), RecordSale("south", 990), RecordSale("north", 400)],
        [RecordSale("south", 2000)],
        [RecordSale("east", 75), RecordSale("north", 100)],
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        for wave in waves:
            for sale in wave:
                await app.execute(sale)
            await trio.sleep(INTERVAL * 1.5)  # a periodic run closes what the wave recorded
        await app.caught_up()
        batched: dict[str, int] = {}
        for batch in reports.batches:
            line = ", ".join(f"{shop} {cents / 100:.2f}" for shop, cents in batch.totals.items())
            print(f"batch {batch.batch}: {line}")
            for shop, cents in batch.totals.items():
                batched[shop] = batched.get(shop, 0) + cents
        recorded: dict[str, int] = {}
        for sale in (s for wave in waves for s in wave):
            recorded[sale.shop] = recorded.get(sale.shop, 0) + sale.cents
        metrics = worker.metrics()
        print(f"every sale in exactly one batch: {batched == recorded}")
        print(f"still open: {worker.state.open}")
        print(f"periodic runs: {metrics.periodic_runs}, failures: {metrics.periodic_failures}")
        app.stop()


if __name__ == "__main__":
    trio.run(main)
