"""What one refresh of the dashboard shows, taken at one moment: ``GET /dashboard.json``.

The page used to read ``/inspect``, ``/dead-letters`` and ``/messages`` one after the
other, so its header, worker table and message table could each show another moment
(a head of 5 over a message table reaching 7). Here:

- the report (workers, partitions, circuits, health) and the log's head are taken in
  one step of the Trio loop, with no checkpoint between them;
- the newest messages are read up to that head only: rows at or below it never
  change, so reading them afterwards still shows the log as it was then;
- the dead letters are read just before, and read again when this process's
  outstanding dead letters changed during the read (a worker dead-lettered or a
  re-drive resolved one), so that the count each worker shows is the number listed,
  as the report saw them.

Dead letters of workers served by another process (leases) change without this
process knowing; those are as the store had them just before the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import trio

from ._app import App, DeadLetter
from ._errors import NotRunning
from ._http_rows import Listing, describe_letter, letter_rows

__all__ = [
    "DASHBOARD_LETTERS",
    "DASHBOARD_MESSAGES",
    "MAX_DASHBOARD_MESSAGES",
    "dashboard_snapshot",
]

DASHBOARD_MESSAGES: Final = 25
"""The newest messages a snapshot holds unless asked for fewer (at most 100)."""

DASHBOARD_LETTERS: Final = 50
"""The dead letters a snapshot lists (oldest failures first); all of them are counted."""

MAX_DASHBOARD_MESSAGES: Final = 100
"""The most messages a snapshot holds, whatever it asks for."""

# Listed dead letters show the start of their payload; the whole one, and the
# traceback, come from GET /dead-letters/{worker}/{id} when the page opens one.
_LETTER_PAYLOAD_BYTES: Final = 512
_READ_BATCH: Final = 50
# Dead letters read again at most this often while the workers keep changing them;
# after that the last read is listed, and still counted as listed.
_LETTER_READS: Final = 3


def _outstanding(app: App) -> dict[str, frozenset[int]]:
    return {name: frozenset(ids) for name, ids in list(app.totals.dead_letter_ids.items())}


def _listed(letter: DeadLetter, described: Mapping[str, Any]) -> dict[str, Any]:
    shown = dict(described)
    # The traceback can be long and fifty of them come every second: the detail has it.
    shown.pop("traceback", None)
    shown["has_traceback"] = letter.traceback is not None
    return shown


async def _newest_messages(app: App, head: int, limit: int, budget: int) -> bytes:
    """The newest ``limit`` messages at or below ``head``, within ``budget`` bytes."""
    store = app.log.store
    page = Listing(budget, whole_payloads=False, newest=True)
    cursor = max(0, head - limit)
    while cursor < head:
        rows = await store.read_after(cursor, min(head - cursor, _READ_BATCH), upto=head)
        if not rows:
            break
        for row in rows:
            page.add(row)
        cursor = rows[-1].id
    return page.render(head)


async def dashboard_snapshot(app: App, *, messages: int, max_bytes: int) -> bytes:
    """The dashboard's data as JSON: ``{"taken_at", "clock", "inspect", "dead_letters",
    "dead_letter_counts", "dead_letters_total", "messages"}``.

    ``inspect`` is ``app.inspect()``; ``clock`` is Trio's clock then (for the page's
    charts, which space their samples by it). ``dead_letters`` lists the oldest
    :data:`DASHBOARD_LETTERS` with the start of their payloads, ``dead_letter_counts``
    counts all of them by worker. ``messages`` is a ``GET /messages`` page of the newest
    ``messages`` rows up to the report's head, within ``max_bytes``. While the app is
    not serving, those three are null.
    """
    letters: list[DeadLetter] | None = None
    for _ in range(_LETTER_READS):
        before = _outstanding(app)
        try:
            letters = await app.dead_letters()
        except NotRunning:
            letters = None
        # No checkpoint from here to the end of the report: one moment of the loop.
        if letters is None or _outstanding(app) == before:
            break
    report = app.inspect()
    clock = trio.current_time()
    taken_at = datetime.fromtimestamp(app.clock(), UTC).isoformat()
    head: int | None = report["head"]
    if letters is None or head is None or not report["running"]:
        # Refused at once, maybe without awaiting anything: still a checkpoint.
        await trio.lowlevel.checkpoint()
        body: dict[str, Any] = {
            "taken_at": taken_at,
            "clock": clock,
            "inspect": report,
            "dead_letters": None,
            "dead_letter_counts": None,
            "dead_letters_total": None,
            "messages": None,
        }
        return orjson.dumps(body)
    counts = Counter(d.worker for d in letters)
    listed = letters[:DASHBOARD_LETTERS]
    rows = await letter_rows(app.log.store, listed)
    shown = [
        _listed(d, describe_letter(d, rows.get(d.message_id), _LETTER_PAYLOAD_BYTES))
        for d in listed
    ]
    page = await _newest_messages(app, head, min(messages, MAX_DASHBOARD_MESSAGES), max_bytes)
    parts = {
        "taken_at": taken_at,
        "clock": clock,
        "inspect": report,
        "dead_letters": shown,
        "dead_letter_counts": dict(counts),
        "dead_letters_total": len(letters),
    }
    # The page is already JSON text: spliced in rather than parsed and dumped again.
    return orjson.dumps(parts)[:-1] + b',"messages":' + page + b"}"
