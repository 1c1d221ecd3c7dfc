"""Randomised kill -9 trials against a real app on a real SQLite file.

Run it:  python -m tests.crash.trials [TRIALS] [SEED]   (or `just crash`)

Each trial starts tests/crash/app.py on the same database, lets it append and work
for a random time, then kills it with SIGKILL (sometimes after a SIGTERM, to land
inside a graceful shutdown). After every trial the log alone is checked:

- every command execute() accepted is in the log, unchanged;
- no Add has more than one Echoed (emits and positions commit together);
- committed positions never go back;
- at the end, after a last clean run: every Add has exactly one Echoed, and the
  state the app reports equals the state rebuilt from the log.

The workers take snapshots every few messages, so most starts after a kill load one
and replay only the tail: the final state check is snapshot + tail against the log.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

import petrock_trio as pt
from tests.support import Add, Echoed, Note

ROOT = Path(__file__).resolve().parents[2]


@attrs.define
class Report:
    trials: int = 0
    kills: int = 0
    kills_in_shutdown: int = 0
    accepted: int = 0
    messages: int = 0
    checks: int = 0
    from_snapshot: int = 0  # starts whose replay began at a snapshot
    failures: list[str] = attrs.Factory(list)

    def __str__(self) -> str:
        verdict = "all invariants held" if not self.failures else f"{len(self.failures)} FAILED"
        return (
            f"{self.trials} trials, {self.kills} kill -9 ({self.kills_in_shutdown} during "
            f"shutdown), {self.accepted} commands accepted, {self.messages} messages in the "
            f"log, {self.from_snapshot} starts from a snapshot, {self.checks} invariant "
            f"checks: {verdict}"
        )


def _start(database: str, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.app", database, str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _read_log(database: str) -> tuple[list[pt.Message], dict[str, int]]:
    async def read() -> tuple[list[pt.Message], dict[str, int]]:
        async with pt.open_log(database, commands=[Add, Echoed, Note]) as log:
            messages = await log.read_after(0, 10_000_000)
            positions = await log.store.positions()
        return messages, positions

    return trio.run(read)


def _check(
    report: Report, database: str, accepted: dict[int, str], previous: dict[str, int]
) -> dict[str, int]:
    messages, positions = _read_log(database)
    by_id = {m.id: m for m in messages}
    report.messages = len(messages)
    for message_id, key in accepted.items():
        report.checks += 1
        message = by_id.get(message_id)
        if message is None or message.command != Add(key, 1):
            report.failures.append(f"accepted command {message_id} ({key}) is not in the log")
    echoes = Counter(m.command.source_id for m in messages if isinstance(m.command, Echoed))
    for source, count in echoes.items():
        report.checks += 1
        if count > 1:
            report.failures.append(f"Add {source} was echoed {count} times")
    for worker, position in previous.items():
        report.checks += 1
        if positions.get(worker, 0) < position:
            report.failures.append(
                f"position of {worker} went back: {position} -> {positions[worker]}"
            )
    return positions


def _collect(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    lines.extend(process.stdout)


def run_trials(trials: int, seed: int, directory: str) -> Report:
    rng = random.Random(seed)
    database = str(Path(directory) / "crash.db")
    report = Report()
    accepted: dict[int, str] = {}
    positions: dict[str, int] = {}
    for trial in range(trials):
        lines: list[str] = []
        with _start(database, rng.randrange(1 << 30)) as process:
            reader = threading.Thread(target=_collect, args=(process, lines), daemon=True)
            reader.start()
            time.sleep(rng.uniform(0.3, 0.9))  # start-up takes about 0.3 s; the kill lands after
            if rng.random() < 0.2:
                process.send_signal(signal.SIGTERM)
                time.sleep(rng.uniform(0.0, 0.05))
                report.kills_in_shutdown += 1
            process.kill()
            process.wait()
            reader.join()
        report.kills += 1
        for line in lines:
            parts = line.split()
            if parts and parts[0] == "accepted":
                accepted[int(parts[1])] = parts[2]
            if parts and parts[0] == "snapshot" and int(parts[1]) > 0:
                report.from_snapshot += 1
        positions = _check(report, database, accepted, positions)
        report.trials = trial + 1
    report.accepted = len(accepted)
    _final_run(report, database, accepted, positions)
    return report


def _final_run(
    report: Report, database: str, accepted: dict[int, str], positions: dict[str, int]
) -> None:
    """Let the app finish cleanly once; then everything must be exactly once."""
    with _start(database, 0) as process:
        assert process.stdout is not None
        for line in process.stdout:
            parts = line.split(maxsplit=2)
            if parts[0] == "accepted":
                accepted[int(parts[1])] = parts[2].strip()
            if parts[0] == "idle":
                break
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    positions = _check(report, database, accepted, positions)
    messages, _ = _read_log(database)
    adds = [m for m in messages if isinstance(m.command, Add)]
    echoes = Counter(m.command.source_id for m in messages if isinstance(m.command, Echoed))
    report.checks += 1
    missing = [m.id for m in adds if echoes[m.id] != 1]
    if missing:
        report.failures.append(f"Adds not echoed exactly once: {missing[:10]}")
    totals = Counter[str]()
    for m in adds:
        totals[m.command.key] += m.command.amount
    state, loaded = _reported_state(database)
    if loaded > 0:
        report.from_snapshot += 1
    report.checks += 1
    if state != dict(totals):
        report.failures.append(f"reported state {state} != state from the log {dict(totals)}")
    report.accepted = len(accepted)


def _reported_state(database: str) -> tuple[dict[str, Any], int]:
    """Start the app once more: the state it reports after replay, and where its replay
    started (the snapshot it loaded; 0 for none)."""
    reported: dict[str, Any] = {}
    loaded = 0
    with _start(database, 1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            parts = line.split(maxsplit=2)
            if parts[0] == "ready":
                reported = json.loads(parts[2])
            if parts[0] == "snapshot":
                loaded = int(parts[1])
                break
        process.kill()
        process.wait()
    # That run may have appended before it was killed; its adds are replayed next time.
    return reported, loaded


def main() -> int:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory() as directory:
        report = run_trials(trials, seed, directory)
    print(f"seed {seed}: {report}")
    for failure in report.failures:
        print(f"  FAILED: {failure}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
