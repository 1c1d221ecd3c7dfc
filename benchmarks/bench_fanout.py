"""2. Fan-out: 1, 10 and 100 pattern workers splitting the command names of one log.

Run it:  python benchmarks/bench_fanout.py [--quick] [--size 100000]

The log cycles through 100 command names. One worker routes all of them; 10 workers
route 10 distinct names each; 100 workers route one distinct name (1%) each. For each
set-up: time until every worker has caught up, and rows read from the database
(``store.statistics().rows_read``), which must equal the number of messages: each
message is read once, not once per worker.

Baseline in the same run: one worker routing every name. Targets: rows read per
message is 1.0 in every set-up; 100 workers take at most 1.5x the time of one.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import _common as c

from petrock_trio.stores import SQLiteStore

WORKERS = (1, 10, 100)


async def engine_run(database: str, workers: int) -> tuple[float, int, int]:
    """(seconds, rows read, feed detaches) for ``workers`` workers splitting the names."""
    c.reset_positions(database)
    store = SQLiteStore(database)
    app = c.new_app(database, store=store)
    share = len(c.NAMES) // workers
    built = []
    for k in range(workers):
        worker = c.routing_worker(f"fanout-{k:03d}", c.NAMES[k * share : (k + 1) * share])
        app.register_worker(worker)
        built.append(worker)
    seconds = await c.time_catchup(app)
    detaches = sum(w.statistics().detaches for w in built)
    return seconds, store.statistics().rows_read, detaches


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--size", type=int, default=None)
    args = p.parse_args()
    size = args.size or (2_000 if args.quick else 100_000)
    c.header(f"fan-out: workers splitting 100 names over {size:,} messages, SQLite", args)
    c.quiet_logging()
    times: dict[int, list[float]] = {n: [] for n in WORKERS}
    reads: dict[int, list[int]] = {n: [] for n in WORKERS}
    detaches: dict[int, list[int]] = {n: [] for n in WORKERS}
    ratios: dict[int, list[float]] = {n: [] for n in WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "fanout.db")
        c.fill_log(database, size)
        for _ in range(c.repeats(args)):
            for n in WORKERS:
                seconds, rows, detached = c.run(functools.partial(engine_run, database, n))
                times[n].append(seconds)
                reads[n].append(rows)
                detaches[n].append(detached)
            for n in WORKERS:
                ratios[n].append(times[n][-1] / times[1][-1])
    results: dict[str, dict[str, float]] = {}
    for n in WORKERS:
        seconds = c.median(times[n])
        per_message = max(reads[n]) / size
        print(
            f"{n:>3} worker(s): {seconds:7.3f} s, {size / seconds:>9,.0f} msg/s, "
            f"rows read {max(reads[n]):,} ({per_message:.2f} per message), "
            f"feed detaches {max(detaches[n])} (shutdown included), "
            f"time ratio to 1 worker {c.median(ratios[n]):.2f}"
        )
        results[str(n)] = {
            "seconds": seconds,
            "per_second": size / seconds,
            "rows_read": max(reads[n]),
            "rows_per_message": per_message,
            "time_ratio": c.median(ratios[n]),
        }
    once = all(r["rows_per_message"] <= 1.0 for r in results.values())
    c.target_line(
        "rows read per message, every set-up",
        ", ".join(f"{r['rows_per_message']:.2f}" for r in results.values()),
        "1.00",
        once,
    )
    ratio = results["100"]["time_ratio"]
    c.target_line("100 workers vs 1 worker, time", f"ratio {ratio:.2f}", "<= 1.50", ratio <= 1.5)
    c.save("fanout", args, {"size": size, "workers": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
