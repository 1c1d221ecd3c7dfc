"""Property test: snapshots over arbitrary sequences, snapshot points and restarts.

For arbitrary commands, snapshot intervals, requests for a snapshot and restarts
(graceful, or cancelled with handlers in flight), on a SQLite file: every start loads
the newest snapshot it can use and replays exactly the messages after it up to the
saved position; the state it rebuilds equals a full replay's; live handling goes on
with nothing handled twice and nothing skipped (each Add's emit lands once). A
changed ``state_version`` and corrupt snapshots both fall back to a full replay. The
state projection, snapshot too, rebuilds the same state.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio._partition import partition_name, stable_hash
from petrock_trio.stores import SnapshotRecord
from petrock_trio.testing import serving
from tests.support import Add, Echoed

keys = st.sampled_from(["a", "b", "c", "d", "e"])
add = st.builds(Add, key=keys, amount=st.integers(1, 9))


@attrs.frozen
class Step:
    cmds: list[Add]
    ending: str  # graceful | hard (cancelled, handlers in flight)
    request_at: int | None  # ask for a snapshot after this many commands
    change: str  # before the start: "" | "version" (a new state_version) | "corrupt"
    behind: bool = False  # commits written behind the loop (commit_behind)


step = st.builds(
    Step,
    cmds=st.lists(add, max_size=12),
    ending=st.sampled_from(["graceful", "hard"]),
    request_at=st.none() | st.integers(0, 12),
    change=st.sampled_from(["", "", "version", "corrupt"]),
    behind=st.booleans(),
)


@attrs.define
class Sums:
    totals: dict[str, int] = attrs.Factory(dict)
    handled: int = 0


@attrs.define
class Seen:
    live: list[int] = attrs.Factory(list)
    replayed: list[int] = attrs.Factory(list)


def build(
    db: str,
    *,
    every: int,
    partitions: int,
    version: str,
    seen: Seen,
    rng: random.Random,
    behind: bool = False,
) -> tuple[pt.App, pt.PatternWorker[Sums], Sums]:
    app = pt.App(db, hooks=[], snapshot_every=every + 1, state_version=version)
    projected = Sums()
    app.register_command(Add, _apply, state=projected)
    app.register_command(Echoed)
    worker: pt.PatternWorker[Sums] = pt.PatternWorker(
        "sums",
        state=Sums(),
        partitions=partitions,
        key=lambda cmd: cmd.key,
        snapshot_every=every,
        state_version=version,
        commit_behind=behind,
    )

    @worker.on_command(Add)
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Sums) -> None:
        if not ctx.is_replay:
            for _ in range(rng.randrange(3)):  # interleave with other partitions
                await trio.lowlevel.checkpoint()
            ctx.emit(Echoed(ctx.message.id, cmd.key))
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        state.handled += 1
        (seen.replayed if ctx.is_replay else seen.live).append(ctx.message.id)

    app.register_worker(worker)
    return app, worker, projected


def _apply(state: Sums, cmd: Add, message: pt.Message) -> None:
    state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
    state.handled += 1


def sums(adds: dict[int, Add], ids: object) -> Sums:
    state = Sums()
    for i in sorted(adds):
        if i in ids:  # type: ignore[operator]
            state.totals[adds[i].key] = state.totals.get(adds[i].key, 0) + adds[i].amount
            state.handled += 1
    return state


def owner(cmd: Add, partitions: int) -> int:
    return stable_hash(cmd.key) % partitions


async def saved(db: str) -> tuple[dict[str, int], dict[str, list[SnapshotRecord]]]:
    async with pt.open_log(db) as log:
        positions = await log.store.positions()
        records: dict[str, list[SnapshotRecord]] = {}
        for record in await log.store.snapshots():
            records.setdefault(record.name, []).append(record)
    return positions, records


async def run_steps(db: str, steps: list[Step], every: int, partitions: int, seed: int) -> None:
    rng = random.Random(seed)
    adds: dict[int, Add] = {}
    version = "1"
    for number, current in enumerate([*steps, Step([], "graceful", None, "")]):
        if current.change == "version":
            version = f"v{number}"
        elif current.change == "corrupt" and number > 0:  # the file exists
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE snapshots SET state = x'00'")
        positions, records = await saved(db)
        seen = Seen()
        app, worker, projected = build(
            db,
            every=every,
            partitions=partitions,
            version=version,
            seen=seen,
            rng=rng,
            behind=current.behind,
        )
        async with serving(app, graceful=current.ending == "graceful"):
            # The state after snapshot + tail replay is the state a full replay builds.
            details = {d["partition"]: d for d in worker.partition_details()}
            for index, state in worker.partition_states().items():
                name = partition_name("sums", index, partitions)
                position = positions.get(name, 0)
                usable = [
                    r.position
                    for r in records.get(name, ())
                    if r.state_version == version
                    and r.state != b"\x00"  # corrupted, not written again since
                    and r.position <= position
                ]
                loaded = max(usable, default=None)
                assert details[index]["snapshot"]["loaded_from"] == loaded
                start = loaded or 0
                mine = {i for i, c in adds.items() if owner(c, partitions) == index}
                # Exactly the tail is replayed; what handled live already is on top.
                replayed = [i for i in seen.replayed if i in mine]
                assert replayed == sorted(i for i in mine if start < i <= position)
                live_now = [i for i in seen.live if i in mine]
                assert state == sums(adds, {i for i in mine if i <= position} | set(live_now))
            assert projected == sums(adds, set(adds))
            for count, cmd in enumerate(current.cmds):
                if count == current.request_at:
                    await worker.snapshot_now()
                adds[(await app.execute(cmd)).id] = cmd
            if current.ending == "hard":
                continue  # cancelled at once: whatever is in flight is cut off
            await app.caught_up()
            merged = Sums()
            for state in worker.partition_states().values():
                for key, total in state.totals.items():
                    merged.totals[key] = merged.totals.get(key, 0) + total
                merged.handled += state.handled
            assert merged == sums(adds, set(adds))
            assert projected == sums(adds, set(adds))

    async with pt.open_log(db, commands=[Add, Echoed]) as log:
        rows = await log.read_after(0, 100_000)
    echoes = Counter(m.command.source_id for m in rows if isinstance(m.command, Echoed))
    # Live handling: every Add exactly once in the log's view, nothing skipped.
    assert echoes == Counter(adds.keys())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=st.lists(step, min_size=1, max_size=4),
    every=st.integers(1, 6),
    partitions=st.sampled_from([1, 1, 3]),
    seed=st.integers(0, 2**32),
)
def test_snapshot_and_tail_replay_equal_a_full_replay(
    steps: list[Step], every: int, partitions: int, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run_steps, str(Path(tmp) / "prop.db"), steps, every, partitions, seed)


def test_the_fallbacks_are_drawn() -> None:
    """The strategy reaches both fallbacks and both endings (no test that cannot fail)."""
    drawn: Counter[Any] = Counter()

    @settings(max_examples=200, database=None)
    @given(step)
    def collect(s: Step) -> None:
        drawn[s.change] += 1
        drawn[s.ending] += 1

    collect()
    assert {"version", "corrupt", "graceful", "hard"} <= set(drawn)
