"""Stored rows as ``GET /messages`` and ``petrock-trio log tail`` show them, and pages of them;
dead letters with their messages' payloads, as ``GET /dead-letters`` and
``petrock-trio dead-letters show`` show them.

A row may have been written by another program: a timestamp that is not a time, a
payload that is not JSON, a name that is not text. Such a row is shown, marked
``"undecodable"`` with the reason, rather than failing the page it is on. Listings
are bounded: a payload over the listing's limit is cut (``"truncated": true`` with
its ``"payload_bytes"``), and a page stops at its byte budget.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ._app import DeadLetter
from ._message import Row
from .stores import Store

__all__ = [
    "LISTED_PAYLOAD_BYTES",
    "MAX_PAGE_BYTES",
    "Listing",
    "describe",
    "describe_letter",
    "letter_rows",
    "payload_text",
]

MAX_PAGE_BYTES: Final = 1 << 20
"""The most bytes of messages one ``GET /messages`` page holds, by default."""

LISTED_PAYLOAD_BYTES: Final = 4096
"""The most bytes of a payload a listing shows unless asked for whole payloads."""

# Room for the fields around a payload, so that a whole payload still fits a page.
_ENVELOPE: Final = 512

# Rows read at a time for a list of dead letters.
_LETTER_BATCH: Final = 64


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."  # noqa: PLR2004 - enough to recognise


def _timestamp(value: Any, problems: list[str]) -> str | None:
    if value is None:
        problems.append("timestamp is missing")
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        problems.append(f"timestamp {_shown(value)} is not a number")
        return None
    try:
        if not math.isfinite(value):
            raise ValueError(value)  # noqa: TRY301 - one message for every out-of-range time
        return datetime.fromtimestamp(value, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        problems.append(f"timestamp {_shown(value)} is out of range")
        return None


def _name(value: Any, problems: list[str]) -> str | None:
    if isinstance(value, str):
        return value
    problems.append(f"name {_shown(value)} is not text")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value is None else str(value)


def _raw(value: Any, problems: list[str]) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):  # stored as TEXT by another program: still JSON text
        return value.encode("utf-8", errors="surrogatepass")
    problems.append(f"payload is {type(value).__name__}, not bytes")
    return None


def _preview(raw: bytes, limit: int) -> str:
    """The start of ``raw`` as text whose JSON string is at most about ``limit`` bytes."""
    text = raw[:limit].decode("utf-8", errors="replace")
    while len(text) > 0 and (size := len(orjson.dumps(text)) - 2) > limit:
        # Escapes (quotes, control characters) made it longer: cut in proportion.
        text = text[: max(0, len(text) * limit // size - 1)]
    return text


def describe(row: Row, payload_limit: int | None = None) -> dict[str, Any]:
    """``{"id", "timestamp", "name", "payload"}``, plus ``undecodable`` / ``truncated``.

    ``payload`` is the decoded JSON; a payload that is not JSON is shown as text and
    the row marked undecodable. One over ``payload_limit`` bytes is shown as the start
    of its text, with ``"truncated": true`` and ``"payload_bytes"``.
    """
    problems: list[str] = []
    shown: dict[str, Any] = {
        "id": row.id,
        "timestamp": _timestamp(row.timestamp, problems),
        "name": _name(row.name, problems),
    }
    raw = _raw(row.payload, problems)
    payload: Any = None
    if raw is not None and payload_limit is not None and len(raw) > payload_limit:
        payload = _preview(raw, payload_limit)
        shown["truncated"] = True
        shown["payload_bytes"] = len(raw)
    elif raw is not None:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            payload = raw.decode("utf-8", errors="replace")
            problems.append(f"payload is not JSON ({exc})")
    shown["payload"] = payload
    if problems:
        shown["undecodable"] = "; ".join(problems)
    return shown


def payload_text(value: Any) -> str:
    """A stored payload as one line of text, whatever it is."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else repr(value)


class Listing:
    """One page of messages, built row by row within ``budget`` bytes.

    Forward (``newest=False``) the page stops at the first row that does not fit;
    ``newest=True`` keeps the newest rows that fit, dropping older ones. A page holds
    at least one row whatever its size, and each row's payload is cut to fit.
    """

    def __init__(self, budget: int, *, whole_payloads: bool, newest: bool) -> None:
        self.budget = budget
        room = max(1, budget - _ENVELOPE)
        self.payload_limit = room if whole_payloads else min(LISTED_PAYLOAD_BYTES, room)
        self.newest = newest
        self.full = False
        self._parts: deque[tuple[int, bytes]] = deque()
        self._size = 0

    def add(self, row: Row) -> bool:
        """Take ``row``; False when it did not fit (forward: the page is complete)."""
        part = orjson.dumps(describe(row, self.payload_limit))
        cost = len(part) + 1
        if not self.newest and self._parts and self._size + cost > self.budget:
            self.full = True
            return False
        self._parts.append((row.id, part))
        self._size += cost
        while self.newest and self._size > self.budget and len(self._parts) > 1:
            self._size -= len(self._parts.popleft()[1]) + 1
        return True

    def render(self, head: int) -> bytes:
        """The page as JSON: ``{"head", "next_after", "messages"}``.

        ``next_after`` is the ``after`` of the next page: the last id here when more
        messages follow it, else null.
        """
        last = self._parts[-1][0] if self._parts else None
        more = last is not None and (self.full or last < head)
        messages = b",".join(part for _, part in self._parts)
        return b'{"head":%d,"next_after":%s,"messages":[%s]}' % (
            head,
            b"%d" % last if more and last is not None else b"null",
            messages,
        )


def describe_letter(
    letter: DeadLetter, row: Row | None, payload_limit: int | None
) -> dict[str, Any]:
    """``letter`` as JSON data, with its traceback and its message's ``payload``.

    The payload is cut as :func:`describe` cuts it (``"payload_truncated": true`` and
    ``"payload_bytes"``); ``"payload_error"`` says why there is none to show (the
    message is not in the log) or why it does not decode.
    """
    shown = letter.to_dict()
    if row is None:
        shown["payload"] = None
        shown["payload_error"] = f"message {letter.message_id} is not in the log"
        return shown
    message = describe(row, payload_limit)
    shown["payload"] = message["payload"]
    if message.get("truncated"):
        shown["payload_truncated"] = True
        shown["payload_bytes"] = message["payload_bytes"]
    if "undecodable" in message:
        shown["payload_error"] = message["undecodable"]
    return shown


async def letter_rows(store: Store, letters: Sequence[DeadLetter]) -> dict[int, Row]:
    """The log rows of ``letters``' messages, by id (a message missing from the log has none).

    Read a batch at a time, and only rows of the letters' command names: the dead
    letters of a failing dependency are mostly a run of messages, one read per batch.
    """
    ids = {letter.message_id for letter in letters}
    wanted = sorted(ids)
    names = sorted({letter.command_name for letter in letters})
    found: dict[int, Row] = {}
    index = 0
    while index < len(wanted):
        last = wanted[min(index + _LETTER_BATCH, len(wanted)) - 1]
        rows = await store.read_after(wanted[index] - 1, _LETTER_BATCH, upto=last, names=names)
        found.update((row.id, row) for row in rows if row.id in ids)
        # A full batch may stop short of ``last``: go on after its last row.
        covered = rows[-1].id if len(rows) == _LETTER_BATCH else last
        while index < len(wanted) and wanted[index] <= covered:
            index += 1
    return found
