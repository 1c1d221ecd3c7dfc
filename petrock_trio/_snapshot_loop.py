"""A run's snapshots that no commit carried: when due, and at graceful shutdown."""

from __future__ import annotations

import trio

from ._errors import LeaseLost, PetrockError
from ._logging import get_logger
from ._runstate import RunState
from ._runtime import Stop
from ._snapshots import SnapshotKeeper

__all__ = ["snapshot_loop", "take_snapshot"]

_log = get_logger("petrock_trio.worker")


async def snapshot_loop(run: RunState, keeper: SnapshotKeeper) -> None:
    """Snapshots that no commit carried: when the position moved ``snapshot_every``
    messages in memory (messages this run does not route, batched positions,
    replay), or ``snapshot_interval`` came round; taken between messages. At
    graceful shutdown, once the message in hand is done, one more if anything moved
    since the last: a graceful restart then replays nothing."""
    while True:
        try:
            await run.interruptible(_until_due, run, keeper)
        except Stop:
            break
        async with run.lock:
            await take_snapshot(run, keeper, quiet=True)
    async with run.lock:
        keeper.requested = keeper.requested or run.state_position() > keeper.tried
        await take_snapshot(run, keeper, quiet=True)


async def _until_due(run: RunState, keeper: SnapshotKeeper) -> None:
    every = keeper.policy.every
    with trio.move_on_at(keeper.next_due()):
        if every is None:
            await trio.sleep_forever()
        else:
            await run.feed.position.wait_value(lambda p: p - keeper.tried >= every)


async def take_snapshot(run: RunState, keeper: SnapshotKeeper, *, quiet: bool) -> None:
    """Commit a snapshot at the position in memory, if one is due (under the lock:
    ``state`` reflects every message up to that position). ``quiet``: a failed
    write is logged, not raised (the next one is due all the same)."""
    position = run.state_position()
    record = None
    if run.retrying is not None:
        # Half changed, maybe: the retried message's commit takes it.
        keeper.requested = True
        keeper.tried = position
    else:
        record = run.snapshot_at(position)
    if record is None:
        keeper.since = trio.current_time()  # the interval starts again
        await trio.lowlevel.checkpoint()
        return
    try:
        await run.rt.commit(run.key, positions={run.key: position}, snapshots=[record])
    except LeaseLost:
        raise
    except PetrockError as exc:
        if not quiet:
            raise
        _log.warning(
            "petrock.snapshot_not_saved",
            worker_name=run.name,
            snapshot=run.key,
            position=position,
            error_details=repr(exc),
            exc_info=exc,
        )
        return
    run.rt.flusher.committed(run.key, position)
    keeper.committed(record)
