"""Where catch-up time goes: per-message cost of the steps of the worker's hot path.

Run it:  python benchmarks/profile_catchup.py [--size 100000] [--cprofile] [--exact]

Times, per message and in isolation, each step that ``PatternWorker._handle_page`` /
``_handle_live`` / ``_attempt`` takes for a message that emits nothing, next to the
whole catch-up per message and the raw loop per message. The worker batches its
positions, as ``bench_catchup.py``'s headline figure does; ``--exact`` profiles it as
declared by default instead (a transaction per message). With ``--cprofile`` it also
prints the top of a cProfile of the catch-up (cProfile slows everything ~2-3x, so use
it for shares, not for absolute figures).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import math
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common as c
import trio

import petrock_trio as pt
from petrock_trio._message import Message, Row


def per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


async def steps(n: int) -> dict[str, float]:
    registry = pt.CommandRegistry()
    for cls in c.COMMANDS.values():
        registry.register(cls)
    row = Row(1, time.time(), c.NAMES[1], c.payload(1))
    message = Message.from_row(row, registry.decode(row.name, row.payload))
    hook = pt.StructlogHook()
    out: dict[str, float] = {}
    with trio.CancelScope() as scope:  # noqa: ASYNC100 - only its deadline is timed

        def move_deadline() -> None:
            scope.deadline = trio.current_time() + 5.0
            scope.deadline = math.inf

        out["cancel scope: set and clear the deadline"] = per_call(move_deadline, n)
    out["trio.current_time() x4"] = per_call(
        lambda: (
            trio.current_time(),
            trio.current_time(),
            trio.current_time(),
            trio.current_time(),
        ),
        n,
    )
    out["decode: orjson.loads + cattrs structure"] = per_call(
        lambda: registry.decode(row.name, row.payload), n
    )
    out["Message.from_row (datetime.fromtimestamp)"] = per_call(
        lambda: Message.from_row(row, None), n
    )
    out["HandlerCompleted + StructlogHook at info"] = per_call(
        lambda: hook(pt.HandlerCompleted("w", message, 1, 0.001, ())), n
    )

    async def checkpoint() -> None:
        await trio.lowlevel.checkpoint()

    started = time.perf_counter()
    for _ in range(n):
        await checkpoint()
    out["one Trio checkpoint (a schedule point)"] = (time.perf_counter() - started) / n
    return out


async def catchup(database: str, *, batch: bool) -> float:
    c.reset_positions(database)
    app = c.new_app(database)
    app.register_worker(c.routing_worker("profile", c.NAMES, batch_positions=batch))
    return await c.time_catchup(app)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--exact", action="store_true", help="a durable position per message")
    args = p.parse_args()
    c.quiet_logging()
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "profile.db")
        c.fill_log(database, args.size)
        _, raw_s = c.raw_loop(database)
        run = functools.partial(catchup, database, batch=not args.exact)
        engine_s = min(float(c.run(run)) for _ in range(3))
        print(f"catch-up, whole path: {engine_s / args.size * 1e6:6.2f} us per message")
        print(f"raw loop:             {raw_s / args.size * 1e6:6.2f} us per message")
        for name, seconds in c.run(functools.partial(steps, 200_000)).items():
            print(f"  {name:<45} {seconds * 1e6:6.2f} us")
        if args.cprofile:
            profile = cProfile.Profile()
            profile.enable()
            c.run(run)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
