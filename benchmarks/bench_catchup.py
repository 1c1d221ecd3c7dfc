"""1. Catch-up: one pattern worker with a trivial handler over a pre-filled SQLite log.

Run it:  python benchmarks/bench_catchup.py [--quick] [--sizes 100000 1000000]

Baseline in the same run: the raw loop (page ``SELECT … WHERE id > ? ORDER BY id LIMIT
1000`` over the same file, ``orjson.loads`` each payload, dispatch by name through a
dict). Target: the worker routing every name reaches at least 50% of the raw loop.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import _common as c


async def engine_run(database: str) -> float:
    c.reset_positions(database)
    app = c.new_app(database)
    app.register_worker(c.routing_worker("catchup", c.NAMES))
    return await c.time_catchup(app)


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    args = p.parse_args()
    sizes = args.sizes or ([2_000] if args.quick else [100_000, 1_000_000])
    c.header("catch-up: one worker, trivial handler, SQLite", args)
    c.quiet_logging()
    results: dict[str, dict[str, float]] = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            database = str(Path(tmp) / f"catchup-{size}.db")
            c.fill_log(database, size)
            raws: list[float] = []
            engines: list[float] = []
            ratios: list[float] = []
            for _ in range(c.repeats(args)):
                _, raw_s = c.raw_loop(database)
                engine_s = float(c.run(functools.partial(engine_run, database)))
                raws.append(size / raw_s)
                engines.append(size / engine_s)
                ratios.append(raw_s / engine_s)
            raw, engine, ratio = c.median(raws), c.median(engines), c.median(ratios)
            print(
                f"{size:>9,} messages: engine {engine:>10,.0f} msg/s, "
                f"raw loop {raw:>10,.0f} msg/s, ratio {ratio:.2f}"
            )
            results[str(size)] = {"engine": engine, "raw": raw, "ratio": ratio}
            ok &= ratio >= 0.5
            c.target_line(
                f"catch-up at {size:,} vs raw loop", f"ratio {ratio:.2f}", ">= 0.50", ratio >= 0.5
            )
    c.save("catchup", args, {"sizes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
