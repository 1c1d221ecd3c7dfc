"""8. Overhead of the resilience layer on catch-up.

Run it:  python benchmarks/bench_overhead.py [--quick] [--size 100000]

Catch-up of one pattern worker with a trivial handler over a pre-filled SQLite log
(as bench_catchup.py), twice per run:

- as shipped: ``pt.App()`` with its default hooks (the structlog hook) and logging
  configured as a production app does (``configure_logging(level="info")``);
- stripped: ``pt.App(hooks=[])`` and logging filtered at warning.

Timeouts, retries bookkeeping and metrics cannot be switched off without changing
the engine, so both runs pay for them; the profile in docs/performance.md says what
they cost. Target: as shipped costs at most 20% of the stripped throughput.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import _common as c


async def engine_run(database: str, *, shipped: bool) -> float:
    c.reset_positions(database)
    if shipped:
        c.quiet_logging("info")
        app = c.new_app(database)
    else:
        c.quiet_logging("warning")
        app = c.new_app(database, hooks=[])
    app.register_worker(c.routing_worker("overhead", c.NAMES))
    return await c.time_catchup(app)


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--size", type=int, default=None)
    args = p.parse_args()
    size = args.size or (2_000 if args.quick else 100_000)
    c.header(f"resilience layer overhead: catch-up of {size:,} messages, SQLite", args)
    shipped_rates: list[float] = []
    stripped_rates: list[float] = []
    costs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "overhead.db")
        c.fill_log(database, size)
        c.run(functools.partial(engine_run, database, shipped=False))  # warm-up, not counted
        for k in range(c.repeats(args)):
            # Alternate which goes first, so neither always runs on a warmer machine.
            order = (True, False) if k % 2 == 0 else (False, True)
            seconds = {
                s: float(c.run(functools.partial(engine_run, database, shipped=s))) for s in order
            }
            shipped_s, stripped_s = seconds[True], seconds[False]
            shipped_rates.append(size / shipped_s)
            stripped_rates.append(size / stripped_s)
            costs.append(1 - stripped_s / shipped_s)
    shipped, stripped, cost = c.median(shipped_rates), c.median(stripped_rates), c.median(costs)
    print(
        f"as shipped {shipped:,.0f} msg/s; stripped {stripped:,.0f} msg/s; "
        f"ratio shipped / stripped {shipped / stripped:.3f} (cost {cost:.1%})"
    )
    c.target_line("resilience layer cost", f"{cost:.1%}", "<= 20%", cost <= 0.20)
    c.save("overhead", args, {"size": size, "shipped": shipped, "stripped": stripped, "cost": cost})
    return 0


if __name__ == "__main__":
    sys.exit(main())
