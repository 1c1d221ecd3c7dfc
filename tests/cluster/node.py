"""One process of the cluster trials: an app on a shared PostgreSQL log.

Run by tests/cluster/trial.py as
``python -m tests.cluster.node URL NODE SEED SECONDS RECORDS``.
It appends ``Add`` commands for SECONDS seconds while its share of the workers handle
them, then keeps serving until SIGTERM. It says one line per fact on stdout, flushed
at once so that a kill -9 loses none that happened:

    ready                         serving
    accepted <id>                 execute() returned for an Add
    done                          appending finished

Every live handling (a side effect outside the log) is recorded in the file RECORDS,
this node's own, as ``<worker> <message id> <node>``: written with one unbuffered
``write`` to a file opened for appending, before the handler goes on, so a kill -9
cannot lose the record of a handling that started. The ``EMITTING`` workers echo
every Add; the ``QUIET`` workers emit nothing, so only their positions tell the store
how far they got. The partitioned worker ``p`` echoes every Add too; each of its
partitions records its handlings under its own name (``p#3/8``).
"""

from __future__ import annotations

import os
import random
import sys

import structlog
import trio

import petrock_trio as pt
from tests.support import Add, Echoed

EMITTING = tuple(f"w{i}" for i in range(6))
QUIET = tuple(f"q{i}" for i in range(3))
WORKERS = EMITTING + QUIET
# A partitioned worker that echoes too: its partitions spread over the nodes and each
# records its handlings under its own name (`p#3/8`).
PARTITIONED = "p"
PARTITIONS = 8
PARTITION_NAMES = tuple(f"{PARTITIONED}#{i}/{PARTITIONS}" for i in range(PARTITIONS))
LEASE_TTL = 2.0


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def build(url: str, node: str, rng: random.Random, records: int) -> pt.App:
    """The app; ``records`` is the descriptor of this node's record file (O_APPEND)."""
    app = pt.App(database=url, lease_ttl=LEASE_TTL, position_flush_interval=0.05, hooks=[])
    app.register_command(Add)
    app.register_command(Echoed)
    for name in WORKERS:
        worker: pt.PatternWorker[None] = pt.PatternWorker(name)

        async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None, name: str = name) -> None:
            if not ctx.is_replay:
                # The kernel has the line once write() returns: a kill -9 cannot lose
                # it. (No fsync: that guards against a machine crash, which the trials
                # do not cause, and at a millisecond a call it would stall the loop.)
                os.write(records, f"{name} {ctx.message.id} {node}\n".encode())
                # Widen the window between the handler and its commit, where a kill
                # hurts most.
                await trio.sleep(rng.random() * 0.004)
            if name in EMITTING:
                ctx.emit(Echoed(ctx.message.id, name))

        worker.on_command("test/add", on_add)
        app.register_worker(worker)
    app.register_worker(_partitioned(node, rng, records))
    return app


def _partitioned(node: str, rng: random.Random, records: int) -> pt.PatternWorker[None]:
    # Its commits are written behind the loop (commit_behind): a failover may find one
    # in flight while the next handler runs.
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        PARTITIONED, partitions=PARTITIONS, key=lambda cmd: cmd.key, commit_behind=True
    )

    @worker.on_command(Add)
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: None) -> None:
        if not ctx.is_replay:
            name = PARTITION_NAMES[ctx.partition]
            os.write(records, f"{name} {ctx.message.id} {node}\n".encode())
            await trio.sleep(rng.random() * 0.004)
        ctx.emit(Echoed(ctx.message.id, PARTITIONED))

    return worker


async def main(url: str, node: str, seed: int, seconds: float, records: str) -> None:
    rng = random.Random(seed)
    fd = os.open(records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    app = build(url, node, rng, fd)
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
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
