"""Property test: partitioned workers over arbitrary sequences, restarts and changes of N.

For every key, live handling follows log order; every message is handled live
exactly once in the log's view (its emit lands once); nothing is skipped; state
rebuilt by replay equals state built without a restart.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, Echoed, Note

keys = st.sampled_from(["a", "b", "c", "d", "e", "f"])
add = st.builds(Add, key=keys, amount=st.integers(1, 5))
step = st.tuples(
    st.sampled_from([1, 2, 3, 5]),  # partitions of this run
    st.lists(add, max_size=10),
    st.sampled_from(["graceful", "hard"]),  # hard: cancelled with handlers in flight
    st.booleans(),  # commits written behind the loop (commit_behind)
)


def worker_for(
    partitions: int, rng: random.Random, failing: set[int], *, behind: bool = False
) -> pt.PatternWorker[Any]:
    worker: pt.PatternWorker[dict[str, int]] = pt.PatternWorker(
        "totals",
        state={},
        partitions=partitions,
        key=lambda cmd: cmd.key,
        retry=pt.Backoff(initial=0.001, max_delay=0.002, max_attempts=50),
        commit_behind=behind,
    )

    @worker.on_command(Add)
    async def handle(ctx: pt.HandlerContext, cmd: Add, state: dict[str, int]) -> None:
        if not ctx.is_replay:
            for _ in range(rng.randrange(4)):  # a random interleaving with other partitions
                await trio.lowlevel.checkpoint()
            if ctx.message.id in failing and ctx.attempt == 1:
                raise RuntimeError("injected")
            ctx.emit(Echoed(ctx.message.id, cmd.key))
        state[cmd.key] = state.get(cmd.key, 0) + cmd.amount

    return worker


async def run_steps(db: str, steps: list[tuple[int, list[Add], str, bool]], seed: int) -> None:
    rng = random.Random(seed)
    appended: dict[int, Add] = {}
    for partitions, cmds, ending, behind in [*steps, (rng.choice([1, 4]), [], "graceful", False)]:
        failing = {i for i in range(1, 200) if rng.random() < 0.2}
        worker = worker_for(partitions, rng, failing, behind=behind)
        app = pt.App(db, hooks=[])
        for cls in (Add, Echoed, Note):
            app.register_command(cls)
        app.register_worker(worker)
        async with serving(app, graceful=ending == "graceful"):
            for cmd in cmds:
                appended[(await app.execute(cmd)).id] = cmd
            if ending == "hard":
                continue  # cancelled at once: whatever is in flight is cut off
            await app.caught_up()
            totals: Counter[str] = Counter()
            for state in worker.partition_states().values():
                totals.update(state)
            # Replay (from whatever partitioning came before) rebuilt the same state.
            expected: Counter[str] = Counter()
            for cmd in appended.values():
                expected[cmd.key] += cmd.amount
            assert totals == expected

    async with pt.open_log(db, commands=[Add, Echoed, Note]) as log:
        rows = await log.read_after(0, 100_000)
    echoes = [m.command for m in rows if m.name == "test/echoed"]
    # Exactly once, nothing skipped.
    assert Counter(e.source_id for e in echoes) == Counter(appended.keys())
    # Per key, in log order.
    by_key: dict[str, list[int]] = defaultdict(list)
    for echo in echoes:
        by_key[echo.key].append(echo.source_id)
    for key, ids in by_key.items():
        assert ids == sorted(i for i, c in appended.items() if c.key == key)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=4), seed=st.integers(0, 2**32))
def test_partitions_restarts_and_repartitioning(
    steps: list[tuple[int, list[Add], str, bool]], seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run_steps, str(Path(tmp) / "prop.db"), steps, seed)
