"""Property tests: arbitrary command sequences interleaved with restarts."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio.stores import Commit, SQLiteStore
from petrock_trio.testing import serving
from tests.support import Add, Calls, Echoed, Note, Unrouted, make_app

keys = st.sampled_from(["a", "b", "c"])
command = st.one_of(
    st.builds(Add, key=keys, amount=st.integers(-5, 5)),
    st.builds(Note, text=st.text(max_size=5)),
    st.builds(Unrouted, value=st.integers(0, 9)),
    st.just("unknown"),  # a row whose name no class is registered under
)
segment = st.lists(command, max_size=8)
step = st.tuples(
    st.sampled_from(["live", "offline"]),  # executed by the app, or appended while it is down
    segment,
    st.sampled_from(["graceful", "hard"]),  # how that run ends
)


async def run_sequence(db: str, steps: list[tuple[str, list[Any], str]]) -> None:  # noqa: C901, PLR0912 - one scenario, read top to bottom
    appended: list[Any] = []  # what the log holds, in id order (None for unknown rows)
    all_live: list[int] = []
    positions: list[int] = []
    for mode, cmds, ending in steps:
        if mode == "offline":
            async with pt.open_log(db, commands=[Add, Note, Unrouted]) as log:
                for cmd in cmds:
                    if cmd == "unknown":
                        await log.commit(Commit(appends=[("test/ghost", b"{}")], timestamp=0.0))
                    else:
                        await log.append(cmd)
        calls = Calls()
        app, worker, _ = make_app(db, calls=calls)
        saved = await saved_position(db)
        async with serving(app, graceful=ending == "graceful"):
            if mode == "offline":
                appended.extend(None if c == "unknown" else c for c in cmds)
            else:
                for cmd in cmds:
                    if cmd == "unknown":
                        continue  # execute refuses it; covered by the bad-input tests
                    message = await app.execute(cmd)
                    while len(appended) < message.id - 1:
                        appended.append("echo")
                    appended.append(cmd)
            await app.caught_up()
            head = app.inspect()["head"]
            while len(appended) < head:
                appended.append("echo")
            expected_totals = Counter[str]()
            for cmd in appended:
                if isinstance(cmd, Add):
                    expected_totals[cmd.key] += cmd.amount
            # State after any number of restarts equals state built without one.
            assert worker.state.totals == dict(expected_totals)
            assert worker.position == head
        routed = [i for i, c in enumerate(appended, 1) if isinstance(c, Add | Note)]
        # Replay covered exactly the routed messages up to the saved position, in order.
        assert [i for _, i in calls.replayed] == [i for i in routed if i <= saved]
        all_live.extend(i for _, i in calls.live)
        positions.append(await saved_position(db))
    routed = [i for i, c in enumerate(appended, 1) if isinstance(c, Add | Note)]
    # Each routed command reached its handler exactly once live, in id order.
    assert all_live == routed
    # Positions never go back.
    assert positions == sorted(positions)
    # Emits landed exactly once per Add.
    async with pt.open_log(db, commands=[Echoed]) as log:
        rows = await log.store.read_after(0, 100_000, names=["test/echoed"])
        echoed = Counter(log.registry.decode(r.name, r.payload).source_id for r in rows)
    assert echoed == Counter(i for i, c in enumerate(appended, 1) if isinstance(c, Add))


async def saved_position(db: str) -> int:
    store = SQLiteStore(db)
    await store.open()
    try:
        return (await store.positions()).get("tally", 0)
    finally:
        await store.aclose()


@given(steps=st.lists(step, min_size=1, max_size=4))
def test_arbitrary_sequences_with_restarts(steps: list[tuple[str, list[Any], str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run_sequence, str(Path(tmp) / "prop.db"), steps)
