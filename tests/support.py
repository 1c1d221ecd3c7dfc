"""Commands and workers shared by the engine's tests."""

from __future__ import annotations

from typing import Any

import attrs

import petrock_trio as pt
from petrock_trio._worker import PeriodicWork


@pt.command("test/add")
@attrs.frozen
class Add:
    key: str
    amount: int = 1


@pt.command("test/note")
@attrs.frozen
class Note:
    text: str


@pt.command("test/echoed")
@attrs.frozen
class Echoed:
    source_id: int
    key: str


@pt.command("test/unrouted")
@attrs.frozen
class Unrouted:
    value: int = 0


@pt.command("test/named")
@attrs.frozen
class Named:
    name: str

    def validate(self, state: Any) -> None:
        if not self.name.strip():
            raise pt.ValidationError("name must not be empty", command_name="test/named")
        if self.name in state.names:
            raise pt.ValidationError(f"name {self.name!r} is taken", command_name="test/named")


def apply_named(state: Any, cmd: Named, message: pt.Message) -> None:
    state.names.add(cmd.name)


def apply_add(state: Any, cmd: Add, message: pt.Message) -> None:
    state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount


@attrs.define
class Tally:
    """Worker state: per-key totals, rebuilt by replay."""

    totals: dict[str, int] = attrs.Factory(dict)


@attrs.define
class Calls:
    """What handlers saw, recorded outside worker state so replay does not reset it."""

    live: list[tuple[str, int]] = attrs.Factory(list)
    replayed: list[tuple[str, int]] = attrs.Factory(list)


def make_app(
    database: str = ":memory:",
    calls: Calls | None = None,
    *,
    periodic: tuple[PeriodicWork, float] | None = None,
    **kw: Any,
) -> tuple[pt.App, pt.PatternWorker[Tally], Calls]:
    """An app with the test commands and a `tally` worker that echoes each Add
    (and runs ``periodic``, a (work, interval) pair, if given)."""
    calls = calls if calls is not None else Calls()
    app = pt.App(database=database, **kw)
    app.state.names = set()
    app.state.totals = {}
    app.register_command(Add, apply=apply_add)
    app.register_command(Note)
    app.register_command(Echoed)
    app.register_command(Unrouted)
    app.register_command(Named, apply=apply_named)
    worker: pt.PatternWorker[Tally] = pt.PatternWorker("tally", "counts adds", state=Tally())

    @worker.on_command("test/add")
    async def on_add(ctx: pt.HandlerContext, cmd: Add, state: Tally) -> None:
        state.totals[cmd.key] = state.totals.get(cmd.key, 0) + cmd.amount
        (calls.replayed if ctx.is_replay else calls.live).append((cmd.key, ctx.message.id))
        ctx.emit(Echoed(source_id=ctx.message.id, key=cmd.key))

    @worker.on_command("test/note")
    async def on_note(ctx: pt.HandlerContext, cmd: Note, state: Tally) -> None:
        (calls.replayed if ctx.is_replay else calls.live).append((cmd.text, ctx.message.id))

    if periodic is not None:
        worker.set_periodic_work(*periodic)
    app.register_worker(worker)
    return app, worker, calls
