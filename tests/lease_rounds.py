"""Lease rounds of several processes at once on one PostgreSQL log: no deadlock.

Run it:  python -m tests.lease_rounds [ROUNDS [PROCESSES...]]   (or `just lease-rounds`)

ROUNDS (default 3000) per process, with 2 and then 5 processes unless PROCESSES say.

It starts a throwaway PostgreSQL server (initdb/pg_ctl) unless ``PETROCK_TEST_PG``
names one. Every process is a real OS process with its own PostgresStore; all of
them want the same workers, renew what they hold and take over what expired, with
a lease so short that leases change hands all the time. They start together (a
barrier, met again every 16 rounds) and run their rounds back to back, so that
rounds coincide; after each round a process commits a position for every worker it
holds, fenced by the leases, so fenced commits race with the others' rounds too.

A deadlock is PostgreSQL's ``deadlock detected`` error (SQLSTATE 40P01), raised to
the caller as a StoreError. The server's ``deadlock_timeout`` is lowered for these
connections so that a deadlock costs 20 ms instead of a second.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import sys
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Barrier
from typing import Any
from urllib.parse import quote

import attrs
import trio

from tests.postgres_server import fresh_schema, trial_database

WORKERS: tuple[str, ...] = tuple(f"w{i:02}" for i in range(12))

# 40P01: deadlock_detected.
_DEADLOCK = "40P01"
_DEADLOCK_TIMEOUT = "20ms"


@attrs.define
class Tally:
    """What one process saw (and, summed, all of them)."""

    rounds: int = 0
    deadlocks: int = 0
    takeovers: int = 0
    commits: int = 0
    fenced_out: int = 0  # commits refused with LeaseLost: expected, leases move
    errors: list[str] = attrs.Factory(list)
    reported: set[str] = attrs.Factory(set)  # the processes counted in

    def add(self, other: Tally) -> None:
        self.rounds += other.rounds
        self.deadlocks += other.deadlocks
        self.takeovers += other.takeovers
        self.commits += other.commits
        self.fenced_out += other.fenced_out
        self.errors.extend(other.errors)


@attrs.define
class Report:
    processes: int
    seconds: float
    tally: Tally

    def __str__(self) -> str:
        t = self.tally
        return (
            f"{self.processes} processes x {len(WORKERS)} workers: {t.rounds} lease rounds,"
            f" {t.takeovers} takeovers, {t.commits} fenced commits ({t.fenced_out} refused"
            f" with LeaseLost) in {self.seconds:.1f} s: {t.deadlocks} deadlocks,"
            f" {len(t.errors) - t.deadlocks} other errors"
        )


def with_short_deadlock_timeout(url: str) -> str:
    """``url`` with ``deadlock_timeout`` lowered (a superuser setting, as in the tests)."""
    option = quote(f"-c deadlock_timeout={_DEADLOCK_TIMEOUT}")
    if "options=" in url:
        return url.replace("options=", f"options={option}%20", 1)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={option}"


@attrs.frozen
class Plan:
    """What every process does (sent to each one, so it pickles)."""

    url: str
    rounds: int
    ttl: float
    commits: bool
    # Rounds between two meetings at the barrier, where they start off together again.
    meet_every: int = 16
    # The share of rounds before which a process stalls for two lease times, so that
    # the others take its leases over. Running free, the processes can settle into a
    # rhythm where each renews its own leases in time and none move.
    stalls: float = 0.1


async def _rounds(plan: Plan, name: str, barrier: Barrier) -> Tally:
    # Imported here: the parent process needs neither psycopg nor the store.
    from petrock_trio import LeaseLost, StoreError  # noqa: PLC0415
    from petrock_trio.stores import Commit  # noqa: PLC0415
    from petrock_trio.stores._postgres import PostgresStore  # noqa: PLC0415

    tally = Tally()
    store = PostgresStore(plan.url)
    await store.open()
    holder = f"{name}:{os.getpid()}"
    rng = random.Random(name)
    held: dict[str, int] = {}
    try:
        for n in range(plan.rounds):
            if n % plan.meet_every == 0:
                await trio.to_thread.run_sync(barrier.wait)
            if rng.random() < plan.stalls:
                await trio.sleep(2 * plan.ttl)
            wanted = [w for w in WORKERS if w not in held]
            try:
                now_held = await store.leases(holder, held, wanted, ttl=plan.ttl, now=time.time())
            except StoreError as exc:
                tally.errors.append(f"round: {exc}")
                tally.deadlocks += getattr(exc.__cause__, "sqlstate", None) == _DEADLOCK
                continue
            finally:
                tally.rounds += 1
            tally.takeovers += sum(held.get(w) != e for w, e in now_held.items())
            held = now_held
            if not (plan.commits and held):
                continue
            try:
                await store.commit_many([Commit(positions=dict.fromkeys(held, n), leases=held)])
                tally.commits += 1
            except LeaseLost:
                tally.fenced_out += 1
            except StoreError as exc:
                tally.errors.append(f"commit: {exc}")
                tally.deadlocks += getattr(exc.__cause__, "sqlstate", None) == _DEADLOCK
    finally:
        await store.aclose()
    return tally


def _process(plan: Plan, name: str, barrier: Barrier, results: Any) -> None:
    try:
        tally = trio.run(_rounds, plan, name, barrier)
    except BaseException as exc:
        barrier.abort()  # the others must not wait for this one
        results.put((name, Tally(errors=[f"process failed: {exc!r}"])))
        raise
    results.put((name, tally))


def run(
    url: str,
    processes: int,
    rounds: int,
    *,
    ttl: float = 0.002,
    commits: bool = True,
    meet_every: int = 16,
) -> Report:
    """``processes`` OS processes, each running ``rounds`` lease rounds at once on ``url``."""
    plan = Plan(with_short_deadlock_timeout(url), rounds, ttl, commits, meet_every)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    started = time.monotonic()
    children = {
        name: context.Process(target=_process, args=(plan, name, barrier, results), daemon=True)
        for name in (f"p{i}" for i in range(processes))
    }
    for child in children.values():
        child.start()
    tally = Tally()
    deadline = time.monotonic() + 300
    try:
        while children.keys() - tally.reported:
            try:
                name, one = results.get(timeout=1)
            except queue.Empty:
                # A process that died without a word (killed, or failed to start).
                silent = {
                    name: child.exitcode
                    for name, child in children.items()
                    if name not in tally.reported and child.exitcode is not None
                }
                if silent or time.monotonic() > deadline:
                    barrier.abort()
                    tally.errors.append(f"processes ended without a report: {silent}")
                    break
                continue
            tally.add(one)
            tally.reported.add(name)
    finally:
        for child in children.values():
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    return Report(processes, time.monotonic() - started, tally)


def _fresh_log(url: str) -> str:
    return fresh_schema(url, "rounds")


def main(argv: Sequence[str]) -> int:
    rounds = int(argv[0]) if argv else 3000
    counts = [int(a) for a in argv[1:]] or [2, 5]
    failed = False
    with trial_database() as url:
        for processes in counts:
            report = run(_fresh_log(url), processes, rounds)
            print(report)
            for error in sorted(set(report.tally.errors))[:10]:
                print("  ", error)
            failed = failed or bool(report.tally.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
