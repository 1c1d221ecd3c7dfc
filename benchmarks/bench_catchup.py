"""1. Catch-up: one pattern worker with a trivial handler over a pre-filled log.

Run it:  python benchmarks/bench_catchup.py [--quick] [--sizes 100000 1000000]
                                            [--postgres auto|URL]

SQLite: a log file filled beforehand. Baseline in the same run: the raw loop (page
``SELECT … WHERE id > ? ORDER BY id LIMIT 1000`` over the same file, ``orjson.loads``
each payload, dispatch by name through a dict). Target: the worker routing every name
reaches at least 50% of the raw loop.

The worker is measured twice: with ``batch_positions=True`` (positions of messages
that emitted nothing written in groups: the opt-in for idempotent effects) at every
size, and as declared by default, where each live message's position is durable
before the next one starts (one transaction per message), on a smaller log
(``--exact-size``): what exactness costs a single busy worker.

PostgreSQL (``--postgres``): the same log in a schema of its own on the server
(``auto`` starts a throwaway one), and the same raw loop with psycopg against it
(``SELECT id, name, payload FROM messages WHERE id > %s ORDER BY id LIMIT 1000``,
prepared, binary results).
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import _common as c


async def engine_run(database: str, *, batch: bool) -> float:
    if database.startswith("postgresql://"):
        c.pg_reset_positions(database)
    else:
        c.reset_positions(database)
    app = c.new_app(database)
    app.register_worker(c.routing_worker("catchup", c.NAMES, batch_positions=batch))
    return await c.time_catchup(app)


def measure(
    database: str, size: int, repeat: int, label: str, *, batch: bool = True
) -> dict[str, float]:
    """Raw loop then engine, ``repeat`` times on one filled log; the medians."""
    raw_loop = c.pg_raw_loop if database.startswith("postgresql://") else c.raw_loop
    raws: list[float] = []
    engines: list[float] = []
    ratios: list[float] = []
    for _ in range(repeat):
        seen, raw_s = raw_loop(database)
        assert seen == size, (seen, size)
        engine_s = float(c.run(functools.partial(engine_run, database, batch=batch)))
        raws.append(size / raw_s)
        engines.append(size / engine_s)
        ratios.append(raw_s / engine_s)
    raw, engine, ratio = c.median(raws), c.median(engines), c.median(ratios)
    mode = "batched" if batch else "exact"
    print(
        f"{size:>9,} messages, {label:<10} {mode:<7}: engine {engine:>10,.0f} msg/s, "
        f"raw loop {raw:>10,.0f} msg/s, ratio {ratio:.3f}"
    )
    return {"engine": engine, "raw": raw, "ratio": ratio}


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--exact-size", type=int, default=None)
    c.add_postgres_options(p)
    args = p.parse_args()
    sizes = args.sizes or ([2_000] if args.quick else [100_000, 1_000_000])
    on_pg = args.postgres is not None and not args.no_postgres
    c.header(f"catch-up: one worker, trivial handler, SQLite{' and PostgreSQL' * on_pg}", args)
    c.quiet_logging()
    results: dict[str, dict[str, float]] = {}
    pg_results: dict[str, dict[str, float]] = {}
    exact: dict[str, dict[str, float]] = {}
    data: dict[str, object] = {"sizes": results, "exact": exact}
    with c.postgres(args) as pg, tempfile.TemporaryDirectory() as tmp:
        if pg is not None:
            data["postgres"] = {"settings": pg.describe(), "sizes": pg_results}
        for size in sizes:
            database = str(Path(tmp) / f"catchup-{size}.db")
            c.fill_log(database, size)
            results[str(size)] = sqlite = measure(database, size, c.repeats(args), "sqlite")
            if pg is not None:
                with pg.schema() as url:
                    c.pg_fill_log(url, size)
                    pg_results[str(size)] = measure(url, size, c.repeats(args), "postgresql")
            ratio = sqlite["ratio"]
            c.target_line(
                f"catch-up at {size:,} vs raw loop (SQLite)",
                f"ratio {ratio:.2f}",
                ">= 0.50",
                ratio >= 0.5,
            )
        exact_size = args.exact_size or (1_000 if args.quick else 20_000)
        database = str(Path(tmp) / "catchup-exact.db")
        c.fill_log(database, exact_size)
        exact[str(exact_size)] = measure(
            database, exact_size, c.repeats(args), "sqlite", batch=False
        )
        if pg is not None:
            with pg.schema() as url:
                c.pg_fill_log(url, exact_size)
                pg_exact = measure(url, exact_size, c.repeats(args), "postgresql", batch=False)
                data["postgres_exact"] = {str(exact_size): pg_exact}
    c.save("catchup", args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
