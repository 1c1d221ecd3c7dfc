"""7. Peer: the ``eventsourcing`` library's follower against our pattern worker.

Run it:  python benchmarks/bench_peer.py [--quick] [--sqlite-size 10000] [--memory-size 100000]
(needs the ``bench`` extra: ``pip install -e '.[bench]'``)

What is measured on their side: an upstream ``Application`` is filled with N events
(aggregates of 100 events each); then a ``ProcessApplication`` whose ``policy`` does
nothing follows the upstream's notification log and is timed through one
``pull_and_process`` call, which catches it up to the end: it reads the notifications,
rebuilds each domain event and records its tracking position, one transaction per
event, as the library does to process each event exactly once. Both section sizes
(``log_section_size``, ``pull_section_size``) are raised from 10 to 1000, the page
size we use; the defaults are slower. Persistence: ``eventsourcing.sqlite`` (one file
per application, WAL, SQLite's default ``synchronous``) and ``eventsourcing.popo``
(in memory).

Our side: one pattern worker with a trivial handler catching up over N messages, on a
SQLite file (``synchronous=FULL``) and on an in-memory SQLite database, timed from
``serve`` to caught up (as in bench_catchup.py), twice: with ``batch_positions=True``
(positions written in groups, the opt-in for idempotent effects: what the targets were
set against), and as declared by default, each message's position durable before the
next one starts (one transaction per message, as their follower's tracking record).
The sizes differ per backend because their SQLite follower commits once per event.
Targets: at least 50x their follower on SQLite and 4x in memory.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path

import _common as c

from petrock_trio.testing import memory_database

try:
    from _peer import Counter, Downstream, Upstream
except ImportError:  # the `bench` extra is not installed
    Counter = Downstream = Upstream = None  # type: ignore[assignment,misc]

PER_AGGREGATE = 100


async def ours(database: str, *, batch: bool) -> float:
    c.reset_positions(database)
    app = c.new_app(database)
    app.register_worker(c.routing_worker("peer", c.NAMES, batch_positions=batch))
    return await c.time_catchup(app)


def theirs(count: int, env_up: dict[str, str], env_down: dict[str, str]) -> float:
    """Seconds for their follower to process ``count`` upstream events."""

    up = Upstream(env=env_up)
    made = 0
    while made < count:
        counter = Counter()  # the creation event counts as one
        for i in range(min(PER_AGGREGATE, count - made) - 1):
            counter.bump(i)
        made += min(PER_AGGREGATE, count - made)
        up.save(counter)
    down = Downstream(env=env_down)
    down.follow(up.name, up.notification_log)
    started = time.perf_counter()
    down.pull_and_process(up.name)
    seconds = time.perf_counter() - started
    processed = down.recorder.max_tracking_id(up.name)
    assert processed == count, f"their follower reached {processed} of {count}"
    return seconds


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--sqlite-size", type=int, default=None)
    p.add_argument("--memory-size", type=int, default=None)
    args = p.parse_args()
    if Upstream is None:
        print("eventsourcing is not installed: pip install -e '.[bench]' (ratio: skipped)")
        return 0
    sqlite_size = args.sqlite_size or (200 if args.quick else 10_000)
    memory_size = args.memory_size or (1_000 if args.quick else 100_000)
    c.header("peer: eventsourcing ProcessApplication follower vs our pattern worker", args)
    c.quiet_logging()
    results: dict[str, dict[str, float]] = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for backend, size, target in (("sqlite", sqlite_size, 50.0), ("memory", memory_size, 4.0)):
            ours_rates: list[float] = []
            exact_rates: list[float] = []
            theirs_rates: list[float] = []
            ratios: list[float] = []
            exact_ratios: list[float] = []
            for k in range(c.repeats(args)):
                if backend == "sqlite":
                    database = str(Path(tmp) / f"ours-{k}.db")
                    c.fill_log(database, size)
                    our_s = float(c.run(functools.partial(ours, database, batch=True)))
                    exact_s = float(c.run(functools.partial(ours, database, batch=False)))
                    env_up = {
                        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                        "SQLITE_DBNAME": str(Path(tmp) / f"up-{k}.db"),
                    }
                    env_down = {**env_up, "SQLITE_DBNAME": str(Path(tmp) / f"down-{k}.db")}
                else:
                    with memory_database() as url:
                        c.fill_log(url, size)
                        our_s = float(c.run(functools.partial(ours, url, batch=True)))
                        exact_s = float(c.run(functools.partial(ours, url, batch=False)))
                    env_up = env_down = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
                their_s = theirs(size, env_up, env_down)
                ours_rates.append(size / our_s)
                exact_rates.append(size / exact_s)
                theirs_rates.append(size / their_s)
                ratios.append(their_s / our_s)
                exact_ratios.append(their_s / exact_s)
            mine, peer, ratio = c.median(ours_rates), c.median(theirs_rates), c.median(ratios)
            exact, exact_ratio = c.median(exact_rates), c.median(exact_ratios)
            print(
                f"{backend:>6}, {size:,} events: ours {mine:>9,.0f} msg/s batched, "
                f"{exact:>7,.0f} msg/s exact; eventsourcing follower {peer:>9,.0f} events/s; "
                f"ratio {ratio:.1f}x batched, {exact_ratio:.2f}x exact"
            )
            results[backend] = {
                "size": size,
                "ours": mine,
                "ours_exact": exact,
                "theirs": peer,
                "ratio": ratio,
                "ratio_exact": exact_ratio,
            }
            ok &= ratio >= target
            c.target_line(
                f"ours (batched positions) vs eventsourcing follower, {backend}",
                f"ratio {ratio:.1f}x",
                f">= {target:g}x",
                ratio >= target,
            )
    c.save("peer", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
