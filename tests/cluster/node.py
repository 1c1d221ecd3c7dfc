"""One process of the cluster trials: an app on a shared PostgreSQL log.

Run by tests/cluster/trial.py as ``python -m tests.cluster.node URL NODE SEED SECONDS``.
It appends ``Add`` commands for SECONDS seconds while its share of the workers handle
them, then keeps serving until SIGTERM. One line per fact, flushed at once so that a
kill -9 loses none that happened:

    ready                         serving
    accepted <id>                 execute() returned for an Add
    handled <worker> <id>         a live handler ran (a side effect outside the log)
    done                          appending finished
"""

from __future__ import annotations

import random
import sys

import structlog
import trio

import petrock_trio as pt
from tests.support import Add, Echoed

WORKERS = tuple(f"w{i}" for i in range(6))
LEASE_TTL = 2.0


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def build(url: str, rng: random.Random) -> pt.App:
    app = pt.App(database=url, lease_ttl=LEASE_TTL, position_flush_interval=0.05, hooks=[])
    app.register_command(Add)
    app.register_command(Echoed)
    for name in WORKERS:
        worker: pt.PatternWorker[None] = pt.PatternWorker(name)

        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None, name: str = name) -> None:
            if not ctx.is_replay:
                say("handled", name, ctx.message.id)
                # Widen the window between the handler and its commit, where a kill
                # hurts most.
                await trio.sleep(rng.random() * 0.004)
            ctx.emit(Echoed(ctx.message.id, name))

        worker.on_command("test/add", on_add)
        app.register_worker(worker)
    return app


async def main(url: str, node: str, seed: int, seconds: float) -> None:
    rng = random.Random(seed)
    app = build(url, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        say("ready")
        deadline = trio.current_time() + seconds
        i = 0
        while trio.current_time() < deadline:
            message = await app.execute(Add(f"{node}-{i}"))
            say("accepted", message.id)
            i += 1
            await trio.sleep(rng.random() * 0.01)
        say("done")
        # serve keeps the nursery open until SIGTERM.


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
