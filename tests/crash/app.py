"""The program the crash trials kill: a real app on a SQLite file, appending as it works.

Run by tests/crash/trials.py as ``python -m tests.crash.app DATABASE SEED``. It prints
one line per fact the parent checks, flushed at once so that a kill -9 loses none
that happened:

    ready <head> <state-json>     serving; the state after replay
    snapshot <position>           where the echo worker's replay started (0: from the start)
    accepted <id> <key>           execute() returned for Add(key)
    idle <head>                   everything appended so far has been handled
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import attrs
import structlog
import trio

import petrock_trio as pt
from tests.support import Add, Echoed, Note

QUIET = structlog.make_filtering_bound_logger(50)


@attrs.define
class Totals:
    totals: dict[str, int] = attrs.Factory(dict)


def build(database: str, rng: random.Random) -> pt.App:
    app = pt.App(database=database, position_flush_interval=0.05, shutdown_grace=1.0)
    app.register_command(Add)
    app.register_command(Echoed)
    app.register_command(Note)

    # Snapshots every few messages: most restarts after a kill load one and replay the tail.
    # Half the trials write each commit while the next handler runs (a kill then finds
    # one in flight behind the loop as often as not).
    echo: pt.PatternWorker[Totals] = pt.PatternWorker(
        "echo",
        state=Totals(),
        snapshot_every=rng.randrange(2, 10),
        commit_behind=rng.random() < 0.5,
    )

    @echo.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Totals) -> None:
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        if not ctx.is_replay:
            # Widen the window between the handler and its commit, where a kill hurts most.
            await trio.sleep(rng.random() * 0.004)
        ctx.emit(Echoed(ctx.message.id, cmd.key))

    notes: pt.PatternWorker[Totals] = pt.PatternWorker(
        "notes", state=Totals(), snapshot_every=rng.randrange(2, 10)
    )

    @notes.on_command("test/echoed")
    async def on_echoed(ctx: pt.HandlerContext, cmd: Echoed, state: Totals) -> None:
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + 1

    async def summarise(ctx: pt.PeriodicContext, state: Totals) -> None:
        ctx.emit(Note(f"seen {sum(state.totals.values())}"))

    notes.set_periodic_work(summarise, interval=0.05)
    app.register_worker(echo)
    app.register_worker(notes)
    return app


def say(*parts: Any) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


async def main(database: str, seed: int) -> None:
    rng = random.Random(seed)
    app = build(database, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(pt.serve, app)
        echo = app.workers["echo"]
        assert isinstance(echo, pt.PatternWorker)
        say("ready", app.inspect()["head"], json.dumps(echo.state.totals, sort_keys=True))
        say("snapshot", app.inspect()["workers"]["echo"]["snapshot"]["loaded_from"] or 0)
        for i in range(rng.randrange(50, 400)):
            key = f"k{rng.randrange(5)}"
            message = await app.execute(Add(key, 1))
            say("accepted", message.id, key)
            if i % 25 == 0:
                await trio.sleep(rng.random() * 0.01)
        await app.caught_up()
        say("idle", app.inspect()["head"])
        # serve keeps the nursery open until SIGTERM or SIGINT.


if __name__ == "__main__":
    structlog.configure(wrapper_class=QUIET)
    trio.run(main, sys.argv[1], int(sys.argv[2]))
