"""Three processes share one PostgreSQL log; one of them is killed with kill -9 mid-stream.

Run it:  python -m tests.cluster.trial [TRIALS] [SEED]   (or `just cluster`)

It starts a throwaway PostgreSQL server (initdb/pg_ctl) unless ``PETROCK_TEST_PG``
names one. Each trial starts three tests/cluster/node.py processes on a fresh log;
every node appends and serves six workers, each worker running in whichever node
holds its lease. After a random time the node holding the most leases is killed
with SIGKILL (every third trial it is frozen with SIGSTOP instead, and resumed once
the others have taken over: a holder that stalled or was cut off); the others carry
on, finish appending and are stopped with SIGTERM. Then the log alone is checked:

- every Add in the log has exactly one Echoed from every worker: handled live and
  committed once per worker across the cluster, emits exactly once, none skipped;
- every command a node saw accepted is in the log;
- a handler ran twice (a side effect outside the log) only for a message the struck
  node was handling when it died or froze, at most one per worker it held.

Failover time is the time from the kill (or freeze) until every lease of the struck
node belongs to another.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import attrs
import psycopg

from tests.cluster.node import WORKERS
from tests.postgres_server import find_binaries, running_server

ROOT = Path(__file__).resolve().parents[2]
NODES = 3


@attrs.define
class Report:
    trials: int = 0
    commands: int = 0
    echoes: int = 0
    rehandled: int = 0
    failovers: list[float] = attrs.Factory(list)
    freeze_failovers: list[float] = attrs.Factory(list)
    failures: list[str] = attrs.Factory(list)

    def __str__(self) -> str:
        verdict = "all invariants held" if not self.failures else f"{len(self.failures)} FAILED"
        return (
            f"{self.trials} trials of {NODES} processes x {len(WORKERS)} workers: "
            f"{self.commands} commands, {self.echoes} emits, {self.rehandled} handler runs "
            f"repeated after a kill or freeze; failover after kill -9 "
            f"{_spread(self.failovers)}, after a freeze {_spread(self.freeze_failovers)}: "
            f"{verdict}"
        )


def _spread(times: list[float]) -> str:
    if not times:
        return "not measured"
    return f"median {statistics.median(times):.3f} s, max {max(times):.3f} s"


@attrs.define
class _Node:
    name: str
    process: subprocess.Popen[str]
    lines: list[str] = attrs.Factory(list)
    reader: threading.Thread | None = None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def said(self, word: str) -> bool:
        return any(line.split()[0] == word for line in list(self.lines) if line.strip())


def _start(url: str, name: str, seed: int, seconds: float) -> _Node:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.node", url, name, str(seed), str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    node = _Node(name, process)

    def collect() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            node.lines.append(line)

    node.reader = threading.Thread(target=collect, daemon=True)
    node.reader.start()
    return node


def _wait(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _leases(conn: psycopg.Connection) -> dict[str, tuple[str, int]]:
    rows = conn.execute("SELECT worker, holder, epoch FROM leases").fetchall()
    return {worker: (holder, epoch) for worker, holder, epoch in rows}


def _pid(holder: str) -> int:
    return int(holder.split(":")[1])


def _log(conn: psycopg.Connection) -> list[tuple[int, str, dict[str, object]]]:
    rows = conn.execute("SELECT id, name, payload FROM messages ORDER BY id").fetchall()
    return [(i, name, json.loads(payload)) for i, name, payload in rows]


def _all_echoed(conn: psycopg.Connection) -> bool:
    log = _log(conn)
    adds = {i for i, name, _ in log if name == "test/add"}
    echoed = Counter(p["source_id"] for _, name, p in log if name == "test/echoed")
    return all(echoed[i] >= len(WORKERS) for i in adds)


def run_trial(url: str, rng: random.Random, report: Report, *, freeze: bool = False) -> None:
    """One trial; ``freeze`` stops the victim (SIGSTOP) and resumes it after the
    takeover instead of killing it: a frozen or cut-off holder."""
    seconds = rng.uniform(2.0, 3.0)
    nodes = [_start(url, f"n{i}", rng.randrange(1 << 30), seconds) for i in range(NODES)]
    try:
        _wait(lambda: all(n.said("ready") for n in nodes), 60, "the nodes to start")
        time.sleep(rng.uniform(0.5, 1.5))
        with psycopg.connect(url, autocommit=True) as conn:
            leases = _leases(conn)
            by_pid = Counter(_pid(holder) for holder, _ in leases.values())
            victim = max(nodes, key=lambda n: by_pid.get(n.process.pid, 0))
            held = {w for w, (holder, _) in leases.items() if _pid(holder) == victim.process.pid}
            victim.process.send_signal(signal.SIGSTOP if freeze else signal.SIGKILL)
            struck_at = time.monotonic()

            def taken_over() -> bool:
                now = _leases(conn)
                return all(_pid(now[w][0]) != victim.process.pid for w in held)

            _wait(taken_over, 30, "the others to take the leases over")
            (report.freeze_failovers if freeze else report.failovers).append(
                time.monotonic() - struck_at
            )
            if freeze:
                # The old holder wakes up in the middle of its work, leases long gone.
                time.sleep(0.3)
                victim.process.send_signal(signal.SIGCONT)
            else:
                victim.process.wait()
            alive = nodes if freeze else [n for n in nodes if n is not victim]
            _wait(lambda: all(n.said("done") for n in alive), 60, "appending to end")
            _wait(lambda: _all_echoed(conn), 60, "every Add to be echoed by every worker")
            for node in alive:
                node.process.send_signal(signal.SIGTERM)
            for node in alive:
                node.process.wait(timeout=30)
            _check(report, _log(conn), nodes, victim, held)
    finally:
        for node in nodes:
            node.close()
    report.trials += 1


def _check(
    report: Report,
    log: list[tuple[int, str, dict[str, object]]],
    nodes: list[_Node],
    victim: _Node,
    held: set[str],
) -> None:
    adds = {i for i, name, _ in log if name == "test/add"}
    echoes = Counter((p["key"], p["source_id"]) for _, name, p in log if name == "test/echoed")
    report.commands += len(adds)
    report.echoes += sum(echoes.values())
    for worker in WORKERS:
        for i in adds:
            if echoes[worker, i] != 1:
                report.failures.append(f"Add {i} echoed {echoes[worker, i]} times by {worker}")
    strays = {key for key in echoes if key[1] not in adds}
    if strays:
        report.failures.append(f"echoes of messages that are not Adds: {sorted(strays)[:5]}")
    for node in nodes:
        for line in list(node.lines):
            word, *rest = line.split()
            if word == "accepted" and int(rest[0]) not in adds:
                report.failures.append(f"{node.name} saw {rest[0]} accepted; not in the log")
    _check_side_effects(report, nodes, victim, held)


def _check_side_effects(report: Report, nodes: list[_Node], victim: _Node, held: set[str]) -> None:
    runs: Counter[tuple[str, int]] = Counter()
    victim_runs: set[tuple[str, int]] = set()
    for node in nodes:
        for line in list(node.lines):
            word, *rest = line.split()
            if word == "handled":
                runs[rest[0], int(rest[1])] += 1
                if node is victim:
                    victim_runs.add((rest[0], int(rest[1])))
    repeated = {key for key, count in runs.items() if count > 1}
    report.rehandled += len(repeated)
    if not repeated <= victim_runs:
        report.failures.append(f"handlers ran twice away from the kill: {sorted(repeated)[:5]}")
    per_worker = Counter(worker for worker, _ in repeated)
    if any(count > 1 for count in per_worker.values()) or not {w for w, _ in repeated} <= held:
        report.failures.append(
            f"more repeated runs than the kill explains: {sorted(repeated)[:10]}"
        )


@contextmanager
def _database() -> Iterator[str]:
    """A PostgreSQL URL: PETROCK_TEST_PG, or a throwaway server started here."""
    given = os.environ.get("PETROCK_TEST_PG")
    if given:
        yield given
        return
    bindir = find_binaries()
    if bindir is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed")
    with running_server(bindir) as server:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE petrock")
        yield server.url("petrock")


def fresh_log(url: str) -> str:
    """A new, empty log in its own schema of the database at ``url``."""
    schema = f"cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=" + quote(f"-c search_path={schema}")


def run_trials(url: str, trials: int, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report()
    for i in range(trials):
        run_trial(fresh_log(url), rng, report, freeze=i % 3 == 2)
    return report


def main() -> int:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
    print(f"seed {seed}")
    with _database() as url:
        report = run_trials(url, trials, seed)
    print(report)
    for failure in report.failures:
        print("FAILED:", failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
