"""9. Partitions: one worker's messages in flight at once, in one process and over two.

Run it:  python benchmarks/bench_partitions.py [--quick] [--io-per-partition 400]
                                               [--postgres auto|URL] [--cpu-size 30000]

I/O-bound, one process, SQLite (``_io_partitions.py``): a worker whose handler awaits
10 ms of I/O (``trio.sleep(0.01)``, real time) with ``partitions`` 1, 8 and 64, keyed
by the command's ``n`` (a key per message), over a log filled beforehand with
``--io-per-partition`` messages per partition; timed from ``serve`` until
``app.caught_up()``. Figures: messages/s and the ratio to 1 partition in the same
mode, same run, as declared by default, with ``commit_behind`` and with
``batch_positions``, beside the floor of each shape without the engine. Target: at
least 50x at 64 partitions.

CPU-bound, PostgreSQL (``--postgres``; ``auto`` starts a throwaway server): 64
partitions, a handler that spends about 200 us (``--burn-us``) of Python per message
(a loop calibrated here once, the same number of iterations in every process), and
``replay=False`` (it keeps no state). One process, then two processes sharing the log:
this program starts them (itself with ``--member``), each serving the same app with
leases (on by default for PostgreSQL), and sends them ``go`` at once once they are
ready. Timed from ``go`` until every message is handled, which this process reads in
the store: every partition's committed position has reached its last message. Spread
(reported separately, and inside the time) is from ``go`` until the partitions' leases
are held as fair shares (each process ``ceil(64 / processes)``). CPU time of the
processes, of the PostgreSQL server and of the rest of the machine over the run is read
from /proc. The two set-ups alternate in order from one repeat to the next. Target:
two processes reach at least 1.4x the rate of one.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c
import _cpu
import trio
from _io_partitions import io_part, key

import petrock_trio as pt
from petrock_trio._partition import partition_name, stable_hash
from petrock_trio.testing import serving

CPU_WORKER = "cpu"
PROGRAM = str(Path(__file__).resolve())  # members run this file with --member
MEMBER_DATABASE = "PETROCK_BENCH_MEMBER_DATABASE"  # not argv: a URL may hold a password
POLL = 0.02  # seconds between two looks at the store while members work


# --- CPU-bound: one process, then two, on PostgreSQL ------------------------------------


def burn(iterations: int) -> int:
    """Pure Python work, no I/O: what a CPU-bound handler does."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def calibrate(micros: float) -> tuple[int, float]:
    """(iterations of :func:`burn` that take ``micros`` us here, us they took)."""
    probe = 20_000
    best = math.inf
    for _ in range(20):
        started = time.perf_counter()
        burn(probe)
        best = min(best, time.perf_counter() - started)
    iterations = max(1, round(probe * micros * 1e-6 / best))
    return iterations, iterations * best / probe * 1e6


async def member(url: str, partitions: int, iterations: int, ttl: float) -> dict[str, Any]:
    """One process sharing the log: serve the CPU-bound worker until told to stop."""
    handled = [0]
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        CPU_WORKER, partitions=partitions, key=key, replay=False
    )

    async def compute(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:  # noqa: ARG001
        burn(iterations)
        handled[0] += 1

    for name in c.NAMES:
        worker.on_command(name, compute)
    app = pt.App(database=url, lease_ttl=ttl)
    for cls in c.COMMANDS.values():
        app.register_command(cls)
    app.register_worker(worker)
    async with serving(app):
        await trio.to_thread.run_sync(sys.stdin.readline)  # "stop"
        report = app.inspect()
        leases = report["leases"]
    return {
        "handled": handled[0],
        # Each message read once per process is what the pump promises (see fan-out).
        "rows_read": report["store"]["rows_read"],
        "held": len(leases["held"]),
        "takeovers": leases["takeovers"],
        "handoffs": leases["handoffs"],
    }


def member_main(args: argparse.Namespace) -> int:
    c.quiet_logging()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    if args.raw:
        # The baseline: the same work with no engine, one message after another.
        for _ in range(args.count):
            burn(args.burn)
        print(json.dumps({"handled": args.count}), flush=True)
        return 0
    run = functools.partial(
        member, os.environ[MEMBER_DATABASE], args.partitions, args.burn, args.lease_ttl
    )
    print(json.dumps(c.run(run)), flush=True)
    return 0


def line_of(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    text = proc.stdout.readline()
    if not text:
        raise SystemExit(f"{what}: a member process ended (its error is above)")
    return text.strip()


def tell(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


@contextmanager
def members(count: int, argv: list[str], url: str) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` processes of this program with ``argv``, each ready for ``go``; killed
    on the way out if still running."""
    env = {**os.environ, MEMBER_DATABASE: url}
    command = [sys.executable, PROGRAM, "--member", *argv]
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(count)
    ]
    try:
        for proc in procs:
            if line_of(proc, "start") != "ready":
                raise SystemExit("a member process did not say it was ready")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.wait(timeout=60) != 0:
            raise SystemExit(f"a member process exited with {proc.returncode}")


def raw_run(url: str, count: int, iterations: int, size: int) -> dict[str, Any]:
    """The baseline: ``count`` processes burning through ``size`` messages' work alone."""
    share = size // count
    with members(count, ["--raw", "--burn", str(iterations), "--count", str(share)], url) as procs:
        before = _cpu.sample([p.pid for p in procs], None)
        started = time.monotonic()
        for proc in procs:
            tell(proc, "go")
        handled = sum(json.loads(line_of(proc, "report"))["handled"] for proc in procs)
        seconds = time.monotonic() - started
        after = _cpu.sample([p.pid for p in procs], None)
        wait(procs)
    return {"seconds": seconds, "per_second": handled / seconds, "cpu": _cpu.delta(before, after)}


def spread(records: list[tuple[str, int]], count: int, partitions: int) -> bool:
    """Whether the live partition leases are held as fair shares by ``count`` processes."""
    share = math.ceil(partitions / count)
    counts = [n for _, n in records]
    return len(counts) == count and sum(counts) == partitions and max(counts) <= share


def cpu_run(
    url: str, count: int, args: argparse.Namespace, iterations: int, last: list[int]
) -> dict[str, Any]:
    """One measurement: ``count`` processes, from ``go`` until every message is handled."""
    c.pg_reset_positions(url)
    partitions = len(last)
    names = [partition_name(CPU_WORKER, i, partitions) for i in range(partitions)]
    argv = ["--burn", str(iterations), "--partitions", str(partitions)]
    argv += ["--lease-ttl", str(args.lease_ttl)]
    server = _cpu.server_pids(url)
    with members(count, argv, url) as procs, c.pg_connect(url) as conn:
        before = _cpu.sample([p.pid for p in procs], server)
        started = time.monotonic()
        for proc in procs:
            tell(proc, "go")
        spread_at: float | None = None
        while True:
            time.sleep(POLL)
            now = time.monotonic() - started
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a member process ended before the log was handled")
            if now > args.cpu_timeout:
                raise SystemExit(f"{count} process(es): not done in {args.cpu_timeout} s")
            if spread_at is None:
                records = conn.execute(
                    "SELECT holder, count(*) FROM leases WHERE worker = ANY(%s)"
                    " AND expires_at > %s GROUP BY holder",
                    (names, time.time()),
                ).fetchall()
                if spread(records, count, partitions):
                    spread_at = now
            positions = dict(
                conn.execute(
                    "SELECT worker, position FROM positions WHERE worker = ANY(%s)", (names,)
                ).fetchall()
            )
            if all(positions.get(n, 0) >= last[i] for i, n in enumerate(names)):
                break
        after = _cpu.sample([p.pid for p in procs], server)
        for proc in procs:
            tell(proc, "stop")
        reports = [json.loads(line_of(proc, "report")) for proc in procs]
        wait(procs)
    return {
        "seconds": now,
        "spread": spread_at,
        "handled": [r["handled"] for r in reports],
        "handoffs": sum(r["handoffs"] for r in reports),
        "rows_read": [r["rows_read"] for r in reports],
        "cpu": _cpu.delta(before, after),
    }


def cpu_text(cpu: dict[str, float | None] | None) -> str:
    if cpu is None:
        return "—"
    return f"{_cpu.text(cpu['members'])} / {_cpu.text(cpu['server'])} / {_cpu.text(cpu['rest'])}"


def cpu_part(args: argparse.Namespace, pg: c.Postgres) -> dict[str, Any]:
    size = args.cpu_size or (1_000 if args.quick else 30_000)
    partitions = args.cpu_partitions
    iterations, micros = calibrate(args.burn_us)
    # The last message of each partition: it is done when its position reaches it.
    last = [0] * partitions
    for i in range(1, size + 1):
        last[stable_hash(i) % partitions] = i
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    raws: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    ratios: list[float] = []
    raw_ratios: list[float] = []
    with pg.schema() as url:
        c.pg_fill_log(url, size)
        for k in range(c.repeats(args)):
            # Alternate which goes first, so neither always runs on a warmer machine.
            for count in (1, 2) if k % 2 == 0 else (2, 1):
                raws[count].append(raw_run(url, count, iterations, size))
                runs[count].append(cpu_run(url, count, args, iterations, last))
            ratios.append(runs[1][-1]["seconds"] / runs[2][-1]["seconds"])
            raw_ratios.append(raws[1][-1]["seconds"] / raws[2][-1]["seconds"])
    print()
    print(
        f"CPU-bound handler ({iterations:,} iterations, {micros:.0f} us here), {partitions} "
        f"partitions, {size:,} messages, PostgreSQL, lease ttl {args.lease_ttl:g} s:"
    )
    print(
        "| Processes | Seconds | Messages/s | Ratio to 1 | Spread | Handled per process "
        "| CPU s: processes / PostgreSQL / rest of machine | Bare loop msg/s | Bare ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows: dict[str, dict[str, Any]] = {}
    for count, measured in runs.items():
        seconds = c.median(r["seconds"] for r in measured)
        spreads = [r["spread"] for r in measured if r["spread"] is not None]
        spread_s = c.median(spreads) if spreads else None
        ratio = 1.0 if count == 1 else c.median(ratios)
        raw_rate = c.median(r["per_second"] for r in raws[count])
        raw_ratio = 1.0 if count == 1 else c.median(raw_ratios)
        middle = sorted(measured, key=lambda r: r["seconds"])[len(measured) // 2]
        print(
            f"| {count} | {seconds:.2f} | {size / seconds:,.0f} | {ratio:.2f}x | "
            f"{'—' if spread_s is None else f'{spread_s:.2f} s'} | "
            f"{' + '.join(f'{h:,}' for h in middle['handled'])} | {cpu_text(middle['cpu'])} | "
            f"{raw_rate:,.0f} | {raw_ratio:.2f}x |"
        )
        rows[str(count)] = {
            "seconds": seconds,
            "per_second": size / seconds,
            "ratio": ratio,
            "spread": spread_s,
            "bare_per_second": raw_rate,
            "bare_ratio": raw_ratio,
            "runs": measured,
            "bare_runs": raws[count],
        }
    for count, measured in runs.items():
        reads = [max(r["rows_read"][i] for r in measured) / size for i in range(count)]
        print(
            f"{count} process(es): rows read from the store per message, per process: "
            + ", ".join(f"{x:.2f}" for x in reads)
        )
    ratio = rows["2"]["ratio"]
    c.target_line(
        "CPU-bound, 64 partitions, two processes vs one, messages/s",
        f"ratio {ratio:.2f}",
        ">= 1.40",
        ratio >= 1.4,
    )
    return {
        "settings": pg.settings(),
        "messages": size,
        "partitions": partitions,
        "burn_iterations": iterations,
        "burn_us": micros,
        "lease_ttl": args.lease_ttl,
        "processes": rows,
    }


def main() -> int:
    p = c.parser(__doc__ or "")
    p.add_argument("--io-per-partition", type=int, default=None)
    p.add_argument("--cpu-size", type=int, default=None)
    p.add_argument("--cpu-partitions", type=int, default=64)
    p.add_argument("--burn-us", type=float, default=200.0)
    p.add_argument("--lease-ttl", type=float, default=5.0, help="App(lease_ttl=), seconds")
    p.add_argument("--cpu-timeout", type=float, default=600.0)
    p.add_argument("--member", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--burn", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--partitions", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    c.add_postgres_options(p)
    args = p.parse_args()
    if args.member:
        return member_main(args)
    c.header("partitions: one worker's messages in flight at once", args)
    c.quiet_logging()
    data: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data["io"] = io_part(args, tmp)
    with c.postgres(args) as pg:
        if pg is None:
            print("CPU-bound part skipped: it needs PostgreSQL (processes share the log)")
        else:
            pg.describe()
            data["cpu"] = cpu_part(args, pg)
    c.save("partitions", args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
