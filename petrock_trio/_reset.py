"""Resetting a worker's position: what it will replay and handle live again, and the
restart of its runs that serve without leases.

A reset (``App.reset_position``, only while the worker is paused) writes the new
position for every partition of the worker at once. Its runs then start again from
the store: they replay every message up to the new position to rebuild their state
(the dead-lettered and discarded ones excepted, as always) and handle live whatever
comes after it. Messages after it that were handled before are handled live again;
messages up to it that were not handled yet are only replayed: their effects never
happen. :class:`ResetPlan` says which, from the positions stored now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from ._errors import PetrockError
from ._logging import get_logger
from ._message import Page
from ._partition import Coverage, split_name, stable_hash
from ._runtime import Run, Runtime
from ._worker import PatternWorker

__all__ = ["MessageRange", "ResetPlan", "plan_reset", "run_resettable"]

_log = get_logger("petrock_trio")

# Rows read at a time where whether a message is done depends on its key.
_BAND_PAGE: Final = 1000


@attrs.frozen
class MessageRange:
    """``count`` messages a worker routes, the first and last of them by id."""

    count: int = 0
    first: int | None = None
    last: int | None = None

    def __add__(self, other: MessageRange) -> MessageRange:
        firsts = [i for i in (self.first, other.first) if i is not None]
        lasts = [i for i in (self.last, other.last) if i is not None]
        return MessageRange(
            self.count + other.count, min(firsts, default=None), max(lasts, default=None)
        )

    def describe(self) -> str:
        if self.count == 0:
            return "no messages"
        noun = "message" if self.count == 1 else "messages"
        span = f"{self.first}" if self.first == self.last else f"{self.first} to {self.last}"
        return f"{self.count} {noun} (ids {span})"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class ResetPlan:
    """What a reset of ``worker``'s position to ``to`` means, from the positions stored
    (``positions``, under each name they are stored under) when it was made.

    ``replayed``: the messages up to ``to`` that its runs replay to rebuild their state
    (none for a worker that does not replay). ``again``: messages after ``to`` it has
    handled, which it handles live again. ``skipped``: messages up to ``to`` it has not
    handled yet, which it will not handle live now (only replay them). ``pending``:
    messages after ``to`` it has not handled yet, handled live as they would have been.
    ``dead_letters``: its dead letters after ``to``, removed since their messages are
    handled live again.
    """

    worker: str
    to: int
    head: int
    positions: dict[str, int]
    replayed: MessageRange
    again: MessageRange
    skipped: MessageRange
    pending: MessageRange
    dead_letters: int

    def describe(self) -> list[str]:
        """The plan in a few sentences, for people."""
        where = ", ".join(f"{n} at {p}" for n, p in sorted(self.positions.items())) or "none"
        lines = [
            f"reset {self.worker!r} to position {self.to} (head {self.head}; positions {where})",
            f"replayed to rebuild its state: {self.replayed.describe()}",
            f"handled live again: {self.again.describe()}",
        ]
        if self.skipped.count:
            lines.append(f"never handled live (only replayed): {self.skipped.describe()}")
        lines.append(f"handled live for the first time, as before: {self.pending.describe()}")
        if self.dead_letters:
            lines.append(f"dead letters removed, their messages handled again: {self.dead_letters}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "to": self.to,
            "head": self.head,
            "positions": dict(self.positions),
            "replayed": self.replayed.to_dict(),
            "again": self.again.to_dict(),
            "skipped": self.skipped.to_dict(),
            "pending": self.pending.to_dict(),
            "dead_letters": self.dead_letters,
            "summary": self.describe(),
        }


async def plan_reset(rt: Runtime, decl: PatternWorker[Any], to: int) -> ResetPlan:
    """The plan of resetting ``decl``'s position to ``to``, from what the store holds."""
    store = rt.log.store
    head = await store.head()
    positions = {
        n: p for n, p in (await store.positions()).items() if split_name(n)[0] == decl.name
    }
    # The runs of this process may be further on in memory (see PositionFlusher).
    for name, moved in rt.flusher.feeds.items():
        if split_name(name)[0] == decl.name and moved.value > positions.get(name, 0):
            positions[name] = moved.value
    count = decl.partitions
    coverages = [Coverage.of(decl.name, i, count, positions) for i in range(count)]
    low = min(c.low for c in coverages)
    high = max(c.high for c in coverages)
    names = sorted(decl.routes)
    replaying = [r.name for r in decl.route_table.values() if getattr(r, "replay", True)]

    async def counted(after: int, upto: int, which: Sequence[str] = names) -> MessageRange:
        return MessageRange(*await store.count_messages(after, upto, which))

    # Up to ``low`` every partition is done, after ``high`` none is; in between, a
    # message's key decides (after a change of partitions, or between partitions).
    done_band, open_band = await _band(rt, decl, coverages, max(low, to), high, names)
    again = (await counted(to, low) if to < low else MessageRange()) + done_band
    skipped_band, _ = await _band(rt, decl, coverages, low, min(high, to), names, done=False)
    skipped = skipped_band + (await counted(high, to) if to > high else MessageRange())
    pending = open_band + await counted(max(high, to), head)
    letters = [d for d in await store.dead_letters(decl.name) if d.message_id > to]
    return ResetPlan(
        worker=decl.name,
        to=to,
        head=head,
        positions=positions,
        replayed=await counted(0, to, replaying) if decl.replay else MessageRange(),
        again=again,
        skipped=skipped,
        pending=pending,
        dead_letters=len(letters),
    )


async def _band(  # noqa: PLR0917 - a private helper of plan_reset
    rt: Runtime,
    decl: PatternWorker[Any],
    coverages: Sequence[Coverage],
    after: int,
    upto: int,
    names: Sequence[str],
    *,
    done: bool = True,
) -> tuple[MessageRange, MessageRange]:
    """(the messages in ``(after, upto]`` whose done-ness is ``done``, the others),
    judged message by message by the partition its key belongs to."""
    chosen, others = MessageRange(), MessageRange()
    while after < upto:
        rows = await rt.log.store.read_after(after, _BAND_PAGE, upto=upto, names=names)
        if not rows:
            break
        page = Page(after, rows[-1].id, rows)
        for index, row in enumerate(rows):
            key_hash = _key_hash(rt, decl, page, index)
            coverage = coverages[key_hash % len(coverages)]
            one = MessageRange(1, row.id, row.id)
            if coverage.done(row.id, key_hash) == done:
                chosen += one
            else:
                others += one
        after = rows[-1].id
    return chosen, others


def _key_hash(rt: Runtime, decl: PatternWorker[Any], page: Page, index: int) -> int:
    try:
        message = page.message(index, rt.registry)
        key_fn = decl.key_of(message.name)
        return 0 if key_fn is None else stable_hash(key_fn(message.command))
    except Exception:  # noqa: BLE001 - a bad row or key: partition 0 dead-letters those
        return 0


async def run_resettable(
    open_run: Callable[[str, Runtime], Run],
    rt: Runtime,
    stored: str,
    worker: str,
    runs: dict[str, Run],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``stored`` (serving without leases) and, whenever a reset of ``worker``
    cancels it, start it again from what the store holds; never returns unless
    cancelled or stopped. ``started()`` once the first run has replayed."""
    while True:
        with rt.controls.activity(stored) as scope:
            async with trio.open_nursery() as running:
                await running.start(runs[stored].run)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
        if not scope.cancelled_caught or rt.stopping.is_set():
            return
        # What the cancelled run had in memory is not to be written any more.
        rt.flusher.feeds.pop(stored, None)
        while True:
            try:
                await rt.reload(stored, worker)
                break
            except PetrockError as exc:
                _log.warning(
                    "petrock.restart_failed",
                    worker_name=worker,
                    error_details=repr(exc),
                    exc_info=exc,
                )
                await trio.sleep(1.0)
        runs[stored] = open_run(stored, rt)
