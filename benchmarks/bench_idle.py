"""4. Idle cost: CPU used by an app with 100 idle workers.

Run it:  python benchmarks/bench_idle.py [--quick] [--duration 30] [--workers 100]

An app on a SQLite file serves 100 pattern workers (each routing one name) and no
messages arrive. After start-up settles, the CPU time of the whole process (every
thread: ``time.process_time``) is read across ``--duration`` seconds of wall time.

Baseline in the same run: the same process idling in a bare ``trio.sleep`` for the
same time. Target: under 0.1% of one core (CPU seconds / wall seconds < 0.001).
"""

from __future__ import annotations

import functools
import resource
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import trio

from petrock_trio.testing import serving


def cpu() -> float:
    return time.process_time()


async def idle_app(database: str, workers: int, duration: float) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, voluntary context switches) across ``duration``."""
    app = c.new_app(database)
    for k in range(workers):
        app.register_worker(c.routing_worker(f"idle-{k:03d}", [c.NAMES[k % len(c.NAMES)]]))
    async with serving(app):
        await trio.sleep(0.5)  # start-up done, the first position flush has come and gone
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        cpu0, wall0 = cpu(), time.perf_counter()
        await trio.sleep(duration)
        used, wall = cpu() - cpu0, time.perf_counter() - wall0
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches
    return used, wall, switches


async def bare(duration: float) -> tuple[float, float]:
    cpu0, wall0 = cpu(), time.perf_counter()
    await trio.sleep(duration)
    return cpu() - cpu0, time.perf_counter() - wall0


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--duration", type=float, default=None, help="seconds (default 30)")
    p.add_argument("--workers", type=int, default=100)
    args = p.parse_args()
    duration = args.duration or (1.0 if args.quick else 30.0)
    c.header(f"idle cost: {args.workers} idle workers over {duration:g} s, SQLite", args)
    c.quiet_logging()
    fractions: list[float] = []
    baselines: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "idle.db")
        c.fill_log(database, 0)
        for k in range(c.repeats(args)):
            used, wall, switches = c.run(
                functools.partial(idle_app, database, args.workers, duration)
            )
            base_used, base_wall = c.run(functools.partial(bare, duration))
            fractions.append(used / wall)
            baselines.append(base_used / base_wall)
            print(
                f"run {k + 1}: app {used:.4f} CPU s in {wall:.2f} s ({used / wall:.4%} of a core, "
                f"{switches} context switches); bare trio.sleep {base_used:.4f} CPU s "
                f"({base_used / base_wall:.4%})"
            )
    fraction, baseline = c.median(fractions), c.median(baselines)
    excess = fraction - baseline
    print(
        f"idle app: {fraction:.4%} of a core; bare trio.sleep baseline {baseline:.4%}; "
        f"difference {excess:.4%} (ratio app / 0.1% budget {fraction / 0.001:.2f})"
    )
    c.target_line(
        f"{args.workers} idle workers, CPU", f"{fraction:.4%} of a core", "< 0.1%", fraction < 0.001
    )
    c.save(
        "idle",
        args,
        {"duration": duration, "workers": args.workers, "fraction": fraction, "bare": baseline},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
