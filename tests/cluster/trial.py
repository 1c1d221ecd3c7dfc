"""Three processes share one PostgreSQL log; one of them is killed with kill -9 mid-stream.

Run it:  python -m tests.cluster.trial [TRIALS] [SEED]   (or `just cluster`)

It starts a throwaway PostgreSQL server (initdb/pg_ctl) unless ``PETROCK_TEST_PG``
names one. Each trial starts three tests/cluster/node.py processes on a fresh log;
every node appends and serves nine workers (six that echo every Add, three that emit
nothing), each worker running in whichever node holds its lease. After a random time
the node holding the most leases is killed with SIGKILL (every third trial it is
frozen with SIGSTOP instead, and resumed once the others have taken over: a holder
that stalled or was cut off); the others carry on, finish appending and are stopped
with SIGTERM. The strike waits up to half a second for a bad moment: one of the
victim's quiet workers has handled messages live that the store has no position for
yet (a random moment right after the positions were written would hide their
re-handling). Then the log and the nodes' records of live handlings are checked:

- every Add in the log has exactly one Echoed from every emitting worker: handled
  live and committed once per worker across the cluster, emits exactly once, none
  skipped;
- every command a node saw accepted is in the log;
- every worker, emitting or not, handled every Add live at least once: none skipped;
- a handler ran twice (a side effect outside the log) only for a message the struck
  node had handled, of a worker it held, or for a worker whose lease changed holder
  otherwise (a partition handed over to a node that joined, a lease that expired on a
  node too busy to renew it); for the emitting workers at most one such message per
  worker per change of holder;
- the promise of docs/scaling.md for every worker: no more messages handled live
  twice than the failovers the worker went through (at most one per worker per
  failover). Its breaches are kept apart from the other failures
  (``Report.rehandling``): while the engine writes the positions of workers that emit
  nothing in groups, the quiet workers breach it by far.

The partitioned worker ``p`` (8 partitions spread over the nodes, its commits written
behind the loop: ``commit_behind``) is checked the same way, partition by partition:
each Add echoed once by ``p``, handled live by the partition its key hashes to, again
only by a partition the struck node held, and no more than ``DEPTH + 1`` messages a
failover (the commits in flight and the message in hand).

Failover time is the time from the kill (or freeze) until every lease of the struck
node belongs to another; it is also measured for each partition of ``p``.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import attrs
import psycopg

from petrock_trio._behind import DEPTH
from petrock_trio._partition import stable_hash
from tests.cluster.node import (
    EMITTING,
    PARTITION_NAMES,
    PARTITIONED,
    PARTITIONS,
    QUIET,
    WORKERS,
)
from tests.postgres_server import fresh_schema, trial_database

ROOT = Path(__file__).resolve().parents[2]
NODES = 3
# The strike aims at a moment some quiet worker of the victim has LAG messages handled
# live and no position for them, for at most AIM seconds (see _strike).
LAG = 2
AIM = 0.5
SETTLE = 0.03


@attrs.define
class Figures:
    """Live handlings of one worker, summed over trials."""

    handled: int = 0  # messages handled live at least once
    rehandled: int = 0  # live runs after the first of a message
    failovers: int = 0  # times its holder was killed or frozen while holding it


KINDS = ("kill -9", "freeze")
# What the nodes record handlings under: the workers, and each partition of ``p``.
RECORDED = WORKERS + PARTITION_NAMES
# Everything that echoes each Add once.
ECHOING = (*EMITTING, PARTITIONED)


@attrs.define
class Report:
    trials: int = 0
    commands: int = 0
    echoes: int = 0
    rehandled: int = 0
    handovers: int = 0  # changes of holder besides the strikes' (partitions as nodes join)
    failovers: list[float] = attrs.Factory(list)
    freeze_failovers: list[float] = attrs.Factory(list)
    # Per strike, the most messages a quiet worker of the victim had handled live
    # without a position in the store (at least LAG: the strike hit a bad moment).
    lags: list[int] = attrs.Factory(list)
    failures: list[str] = attrs.Factory(list)
    # Failover time of each partition of the partitioned worker the struck node held.
    partition_failovers: dict[str, list[float]] = attrs.Factory(dict)
    # Breaches of "at most one message re-handled per worker per failover".
    rehandling: list[str] = attrs.Factory(list)
    figures: dict[str, dict[str, Figures]] = attrs.Factory(
        lambda: {kind: {w: Figures() for w in RECORDED} for kind in KINDS}
    )

    def __str__(self) -> str:
        verdict = "all invariants held" if not self.failures else f"{len(self.failures)} FAILED"
        bound = (
            "at most one message re-handled per worker per failover"
            " (three per partition: commits behind)"
            if not self.rehandling
            else f"{len(self.rehandling)} times a worker re-handled more than one message "
            "a failover"
        )
        return (
            f"{self.trials} trials of {NODES} processes x {len(WORKERS)} workers "
            f"({len(EMITTING)} emitting, {len(QUIET)} quiet): "
            f"{self.commands} commands, {self.echoes} emits, {self.rehandled} messages "
            f"handled live more than once after a kill, a freeze or one of {self.handovers} "
            f"hand-overs; failover after kill -9 "
            f"{_spread(self.failovers)}, after a freeze {_spread(self.freeze_failovers)}; "
            f"{sum(lag >= LAG for lag in self.lags)} of {len(self.lags)} strikes hit a "
            f"quiet worker with {LAG} or more messages handled and not yet positioned "
            f"(most {max(self.lags, default=0)}): {verdict}; {bound}\n{self.table()}"
            f"\n{self.partition_table()}"
        )

    def partition_table(self) -> str:
        """Failover time of each partition of ``p``, over the strikes that moved it."""
        lines = ["partition  failovers  failover time"]
        for name in PARTITION_NAMES:
            times = self.partition_failovers.get(name, [])
            lines.append(f"{name:<10} {len(times):9}  {_spread(times)}")
        return "\n".join(lines)

    def table(self) -> str:
        """Per worker and kind of strike: messages handled live, re-handled, failovers."""
        kinds = [k for k in KINDS if any(f.failovers for f in self.figures[k].values())]
        head = "".join(f"  {k + ':':<8} handled re-handled failovers" for k in kinds)
        lines = [f"worker{head}"]
        for worker in RECORDED:
            cells = "".join(
                f"  {'':<8} {f.handled:7} {f.rehandled:10} {f.failovers:9}"
                for f in (self.figures[k][worker] for k in kinds)
            )
            lines.append(f"{worker:<6}{cells}")
        return "\n".join(lines)


def _spread(times: list[float]) -> str:
    if not times:
        return "not measured"
    return f"median {statistics.median(times):.3f} s, max {max(times):.3f} s"


@attrs.define
class _Node:
    name: str
    process: subprocess.Popen[str]
    records: Path
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

    def handled(self) -> list[tuple[str, int]]:
        """The live handlings it recorded, (worker, message id), in order."""
        try:
            text = self.records.read_text()
        except FileNotFoundError:
            return []
        # A line being written as we read has no newline yet: the next read has it.
        complete = text[: text.rfind("\n") + 1]
        runs = []
        for line in complete.splitlines():
            worker, message_id, node = line.split()
            assert node == self.name, line
            runs.append((worker, int(message_id)))
        return runs


def _start(url: str, name: str, seed: int, seconds: float, records: Path) -> _Node:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.cluster.node",
            url,
            name,
            str(seed),
            str(seconds),
            str(records),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    node = _Node(name, process, records)

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


def _all_handled(conn: psycopg.Connection, nodes: list[_Node]) -> bool:
    """Every Add echoed by every emitting worker and handled live by every quiet one."""
    log = _log(conn)
    adds = {i for i, name, _ in log if name == "test/add"}
    echoed = Counter(p["source_id"] for _, name, p in log if name == "test/echoed")
    if not all(echoed[i] >= len(ECHOING) for i in adds):
        return False
    handled = {run for node in nodes for run in node.handled()}
    return all((w, i) in handled for w in QUIET for i in adds)


def _lag(conn: psycopg.Connection, victim: _Node, workers: Iterable[str]) -> int:
    """The most messages one of ``workers`` handled live in ``victim`` beyond the
    position the store has for it: those its next holder handles again."""
    # Records first: positions read later can only be further on, so a running victim's
    # lag is never overstated.
    handled = victim.handled()
    rows = conn.execute("SELECT worker, position FROM positions").fetchall()
    positions: dict[str, int] = dict(rows)
    beyond = Counter(w for w, i in handled if i > positions.get(w, 0))
    return max((beyond[w] for w in workers), default=0)


def _strike(
    conn: psycopg.Connection, victim: _Node, *, freeze: bool
) -> tuple[set[str], int, float]:
    """Stop ``victim`` at a bad moment, then kill it (or leave it frozen).

    A bad moment: a quiet worker of the victim has handled at least ``LAG`` messages
    live that the store has no position for (a promise of at most one message again
    per failover is broken whenever the victim dies then). Looked for during ``AIM``
    seconds, then the victim is struck wherever it is. The victim is stopped first
    and looked at ``SETTLE`` seconds later, once commits it had already sent have
    landed: the lag then is the one its death leaves. Returns the workers it held, that
    lag, and the time of the kill (of the freeze).
    """
    deadline = time.monotonic() + AIM
    while True:
        last = time.monotonic() >= deadline
        if last or _lag(conn, victim, QUIET) > LAG:
            victim.process.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            time.sleep(SETTLE)
            leases = _leases(conn)
            held = {
                w
                for w, (holder, _) in leases.items()
                if _pid(holder) == victim.process.pid and w in RECORDED
            }
            lag = _lag(conn, victim, held & set(QUIET))
            if last or lag >= LAG:
                break
            victim.process.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    if freeze:
        return held, lag, stopped_at
    victim.process.send_signal(signal.SIGKILL)
    return held, lag, time.monotonic()


def run_trial(url: str, rng: random.Random, report: Report, *, freeze: bool = False) -> None:
    """One trial; ``freeze`` stops the victim (SIGSTOP) and resumes it after the
    takeover instead of killing it: a frozen or cut-off holder."""
    with tempfile.TemporaryDirectory(prefix="petrock-cluster-") as records:
        _run_trial(url, rng, report, Path(records), freeze=freeze)


def _run_trial(
    url: str, rng: random.Random, report: Report, records: Path, *, freeze: bool
) -> None:
    seconds = rng.uniform(2.0, 3.0)
    nodes = [
        _start(url, f"n{i}", rng.randrange(1 << 30), seconds, records / f"n{i}")
        for i in range(NODES)
    ]
    try:
        _wait(lambda: all(n.said("ready") for n in nodes), 60, "the nodes to start")
        time.sleep(rng.uniform(0.5, 1.5))
        with psycopg.connect(url, autocommit=True) as conn:
            by_pid = Counter(_pid(holder) for holder, _ in _leases(conn).values())
            victim = max(nodes, key=lambda n: by_pid.get(n.process.pid, 0))
            held, lag, struck_at = _strike(conn, victim, freeze=freeze)
            report.lags.append(lag)

            moved: dict[str, float] = {}

            def taken_over() -> bool:
                now = _leases(conn)
                for w in held:
                    if w not in moved and _pid(now[w][0]) != victim.process.pid:
                        moved[w] = time.monotonic() - struck_at
                return len(moved) == len(held)

            _wait(taken_over, 30, "the others to take the leases over")
            for w in held & set(PARTITION_NAMES):
                report.partition_failovers.setdefault(w, []).append(moved[w])
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
            _wait(lambda: _all_handled(conn, nodes), 60, "every Add to be handled by every worker")
            for node in alive:
                node.process.send_signal(signal.SIGTERM)
            for node in alive:
                node.process.wait(timeout=30)
            # Every change of holder bumps a lease's epoch: the strike's takeovers, and
            # the hand-overs of partitions as nodes join (a node that started first holds
            # every partition until the others are members).
            transfers = {w: epoch - 1 for w, (_, epoch) in _leases(conn).items()}
            strike = _Strike(victim, frozenset(held), "freeze" if freeze else "kill -9", transfers)
            _check(report, _log(conn), nodes, strike)
    finally:
        for node in nodes:
            node.close()
    report.trials += 1


@attrs.frozen
class _Strike:
    """The node killed or frozen, the workers it held then, and which of the two."""

    victim: _Node
    held: frozenset[str]
    kind: str
    # Changes of holder of each lease over the trial (the strike's included).
    transfers: dict[str, int] = attrs.Factory(dict)

    def handovers(self, worker: str) -> int:
        """Changes of holder of ``worker`` other than the strike's takeover."""
        return max(0, self.transfers.get(worker, 0) - (worker in self.held))


def _check(
    report: Report,
    log: list[tuple[int, str, dict[str, object]]],
    nodes: list[_Node],
    strike: _Strike,
) -> None:
    adds = {i: str(p["key"]) for i, name, p in log if name == "test/add"}
    echoes = Counter((p["key"], p["source_id"]) for _, name, p in log if name == "test/echoed")
    report.commands += len(adds)
    report.echoes += sum(echoes.values())
    for worker in ECHOING:
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
    _check_side_effects(report, adds, nodes, strike)


def _check_side_effects(
    report: Report, adds: dict[int, str], nodes: list[_Node], strike: _Strike
) -> None:
    """Live handlings, from the nodes' records: none skipped, repeats only where the
    strike explains them."""
    runs: Counter[tuple[str, int]] = Counter()
    victim_runs: set[tuple[str, int]] = set()
    for node in nodes:
        for run in node.handled():
            runs[run] += 1
            if node is strike.victim:
                victim_runs.add(run)
    repeated = {key for key, count in runs.items() if count > 1}
    report.rehandled += len(repeated)
    report.handovers += sum(strike.handovers(w) for w in RECORDED)
    # A repeat is the strike's (a message the struck node had handled, of a worker it
    # held) or a hand-over's (a lease that changed holder otherwise: a partition handed
    # to a node that joined). Anything else is a failure.
    unexplained = sorted(
        (w, i)
        for w, i in repeated
        if not ((w, i) in victim_runs and w in strike.held) and not strike.handovers(w)
    )
    if unexplained:
        report.failures.append(
            f"handlers ran twice with no {strike.kind} or hand-over to explain it: "
            f"{unexplained[:5]}"
        )
    strays = {key for key in runs if key[1] not in adds}
    if strays:
        report.failures.append(f"handlings of messages that are not Adds: {sorted(strays)[:5]}")
    owners = {i: PARTITION_NAMES[stable_hash(key) % PARTITIONS] for i, key in adds.items()}
    wrong = sorted((w, i) for w, i in runs if w in PARTITION_NAMES and owners.get(i) != w)
    if wrong:
        report.failures.append(f"Adds handled by a partition their key is not in: {wrong[:5]}")
    for worker in RECORDED:
        handled = {i for w, i in runs if w == worker}
        mine = {i for i, owner in owners.items() if owner == worker}
        skipped = sorted((mine if worker in PARTITION_NAMES else set(adds)) - handled)
        if skipped:
            report.failures.append(
                f"{worker} never handled {len(skipped)} Adds live: {skipped[:5]}"
            )
        again = {i: runs[worker, i] - 1 for i in handled if runs[worker, i] > 1}
        _check_rehandling(report, worker, handled, again, strike)


def _check_rehandling(
    report: Report, worker: str, handled: set[int], again: dict[int, int], strike: _Strike
) -> None:
    """At most one message handled live again per worker per failover (DEPTH + 1 for
    the partitions, whose commits are written behind the loop); ``again`` maps each
    message handled more than once to its runs after the first."""
    failovers = (1 if worker in strike.held else 0) + strike.handovers(worker)
    extra = sum(again.values())
    figures = report.figures[strike.kind][worker]
    figures.handled += len(handled)
    figures.rehandled += extra
    figures.failovers += failovers
    if extra <= failovers * (DEPTH + 1 if worker in PARTITION_NAMES else 1):
        return
    ids = sorted(again)
    breach = (
        f"trial {report.trials + 1} ({strike.kind}): {worker} handled {len(ids)} "
        f"messages live again ({extra} runs) in {failovers} failover(s), "
        f"ids {ids[0]}..{ids[-1]}"
    )
    report.rehandling.append(breach)
    if worker in EMITTING or worker in PARTITION_NAMES:
        # Promised and kept by the workers that emit: their position lands with their
        # emits in one commit.
        report.failures.append(breach)


def fresh_log(url: str) -> str:
    """A new, empty log in its own schema of the database at ``url``."""
    return fresh_schema(url, "cluster")


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
    with trial_database() as url:
        report = run_trials(url, trials, seed)
    print(report)
    for failure in report.failures:
        print("FAILED:", failure)
    for breach in report.rehandling:
        print("RE-HANDLED:", breach)
    return 1 if report.failures or report.rehandling else 0


if __name__ == "__main__":
    sys.exit(main())
