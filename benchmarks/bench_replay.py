"""6. Replay at start-up: messages/s to rebuild state, and peak memory.

Run it:  python benchmarks/bench_replay.py [--quick] [--size 1000000]

Over a pre-filled SQLite log, each figure is taken in a fresh child process so that
its peak resident memory (``ru_maxrss``) is its own:

- projection: an app whose state projection applies every message (a counter per
  name), timed from ``serve`` until it reports ready (state rebuilt);
- projection + worker: the same app with one pattern worker routing every name and a
  saved position at the head, so it replays the whole log (``is_replay=True``) too.

Baseline in the same run: the raw loop (page, ``orjson.loads``, dispatch by name) in
its own child process. There is no target figure; the ratio and memory are reported.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as c

import petrock_trio as pt
from petrock_trio.testing import serving

MODES = ("raw", "projection", "projection+worker")


def _count(state: Any, cmd: Any, message: Any) -> None:  # noqa: ARG001 - the apply signature
    state.count += 1


async def engine_replay(database: str, with_worker: bool) -> tuple[float, int]:
    state = SimpleNamespace(count=0)
    app = pt.App(database=database, state=state)
    for cls in c.COMMANDS.values():
        app.register_command(cls, _count)
    head = 0
    if with_worker:
        conn = c.connect(database)
        (head,) = conn.execute("SELECT max(id) FROM messages").fetchone()
        conn.close()
        app.register_worker(c.routing_worker("replay", c.NAMES))
    c.reset_positions(database, {"replay": head} if with_worker else {})
    started = time.perf_counter()
    async with serving(app):
        seconds = time.perf_counter() - started
    return seconds, state.count


def child(mode: str, database: str) -> None:
    c.quiet_logging()
    if mode == "raw":
        count, seconds = c.raw_loop(database)
    else:
        seconds, count = c.run(functools.partial(engine_replay, database, mode != "projection"))
    print(json.dumps({"seconds": seconds, "count": count, "rss": c.max_rss_mib()}))


def measure(mode: str, database: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, database],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--size", type=int, default=None)
    p.add_argument(
        "--child", nargs=2, metavar=("MODE", "DATABASE"), help="internal: one measurement"
    )
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    size = args.size or (2_000 if args.quick else 1_000_000)
    c.header(f"replay at start-up: {size:,} messages, SQLite", args)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "replay.db")
        c.fill_log(database, size)
        for _ in range(c.repeats(args)):
            for mode in MODES:
                runs[mode].append(measure(mode, database))
    results: dict[str, dict[str, float]] = {}
    raw_rate = c.median(size / r["seconds"] for r in runs["raw"])
    for mode in MODES:
        rate = c.median(size / r["seconds"] for r in runs[mode])
        rss = c.median(r["rss"] for r in runs[mode])
        ratio = c.median(
            raw["seconds"] / r["seconds"] for r, raw in zip(runs[mode], runs["raw"], strict=True)
        )
        assert all(r["count"] == size for r in runs[mode]), "not every message was applied"
        results[mode] = {"per_second": rate, "rss_mib": rss, "ratio": ratio}
        print(
            f"{mode:>18}: {rate:>10,.0f} msg/s, peak RSS {rss:6.1f} MiB, "
            f"ratio to raw loop {ratio:.3f}"
        )
    print(f"raw loop baseline: {raw_rate:,.0f} msg/s (no target; ratios above)")
    c.save("replay", args, {"size": size, "modes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
