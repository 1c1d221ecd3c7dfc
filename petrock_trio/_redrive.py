"""Re-drives: a dead-lettered message handled again, live, on the worker's own task."""

from __future__ import annotations

import trio

from ._errors import NotRunning
from ._message import Page
from ._runstate import RunState
from ._runtime import Stop
from ._settle import settle

__all__ = ["RedriveRequest", "redrive_loop"]


class RedriveRequest:
    def __init__(self, message_id: int) -> None:
        self.message_id = message_id
        self.done = trio.Event()
        self.error: BaseException | None = None


async def redrive_loop(run: RunState, receive: trio.MemoryReceiveChannel[RedriveRequest]) -> None:
    """Serve re-drive requests one at a time until the worker stops."""
    async for request in receive:
        try:
            page = await _dead_letter_page(run, request.message_id)
            async with run.lock:
                await settle(run, page, 0, redrive=True)
        except Stop:
            request.error = NotRunning(f"worker {run.name!r} is stopping")
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            request.error = exc
        finally:
            request.done.set()


async def _dead_letter_page(run: RunState, message_id: int) -> Page:
    rows = await run.rt.log.store.read_after(message_id - 1, 1)
    if not rows or rows[0].id != message_id:
        raise LookupError(f"message {message_id} is not in the log")
    row = rows[0]
    if message_id not in run.rt.dead_letter_ids.get(run.name, ()):
        raise LookupError(f"message {message_id} is not a dead letter of {run.name!r}")
    if row.name not in run.routes:
        raise LookupError(f"worker {run.name!r} does not route {row.name!r}")
    return Page(row.id - 1, row.id, [row])
