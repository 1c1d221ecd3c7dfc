"""Where catch-up time goes: per-message cost of the steps of the worker's hot path.

Run it:  python benchmarks/profile_catchup.py [--size 100000] [--cprofile] [--exact]

The catch-up runs with the command codecs the registry chooses (msgspec's where it
holds) and, interleaved in the same run, with the cattrs codec alone; the steps time
both codecs' decode and encode of the benchmark's own command class.

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
import contextlib
import cProfile
import functools
import math
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _common as c
import trio

import petrock_trio as pt
from petrock_trio import _commands
from petrock_trio._codec import CattrsCodec, converter
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
    # The two codecs of the same class, side by side: what the registry chose (msgspec's
    # Struct mirror, then the class's __init__) and the cattrs codec it falls back to.
    cls = registry.lookup(row.name)
    chosen = registry.codec(cls)
    reference = CattrsCodec(cls, converter())
    cmd = registry.decode(row.name, row.payload)
    out["decode: orjson.loads + cattrs structure"] = per_call(
        lambda: reference.decode(row.name, row.payload), n
    )
    out[f"decode: {type(chosen).__name__} (the registry's)"] = per_call(
        lambda: chosen.decode(row.name, row.payload), n
    )
    out["encode: cattrs + orjson, structure check"] = per_call(
        lambda: reference.encode(row.name, cmd), n
    )
    out[f"encode: {type(chosen).__name__}, decode-again check"] = per_call(
        lambda: chosen.encode(row.name, cmd), n
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


@contextlib.contextmanager
def cattrs_only() -> Iterator[None]:
    """Registries built inside give every class the cattrs codec: the path before msgspec."""
    chosen = _commands.codec_for
    _commands.codec_for = CattrsCodec
    try:
        yield
    finally:
        _commands.codec_for = chosen


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
        engine, before = [], []
        for _ in range(3):  # interleaved, so both see the same machine
            engine.append(float(c.run(run)))
            with cattrs_only():
                before.append(float(c.run(run)))
        engine_s, before_s = min(engine), min(before)
        print(f"catch-up, whole path: {engine_s / args.size * 1e6:6.2f} us per message")
        print(f"  with the cattrs codec only: {before_s / args.size * 1e6:6.2f} us per message")
        print(
            f"  msg/s: {args.size / engine_s:,.0f} vs {args.size / before_s:,.0f} with cattrs"
            f" (ratio {before_s / engine_s:.2f})"
        )
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
