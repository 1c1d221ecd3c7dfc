"""Messages as workers see them, and the immutable pages the log pump fans out."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

if TYPE_CHECKING:
    from ._commands import CommandRegistry

__all__ = ["Message", "Page", "Row"]


class Row(NamedTuple):
    """A message as stored: payload still encoded, timestamp in Unix seconds."""

    id: int
    timestamp: float
    name: str
    payload: bytes


@attrs.frozen
class Message:
    """One command in the log: its id (position), when it was appended, and the command."""

    id: int
    timestamp: datetime
    name: str
    command: Any

    @classmethod
    def from_row(cls, row: Row, command: Any) -> Message:
        return cls(row.id, datetime.fromtimestamp(row.timestamp, UTC), row.name, command)


class Page:
    """Consecutive rows ``after < id <= last``, indexed by command name.

    Pages are shared by every subscriber that routes something in them, so they are
    never mutated after construction except for the decode cache: a payload is decoded
    at most once, and only when some subscriber routes it (likewise ``memo``).
    """

    __slots__ = ("_decoded", "after", "by_name", "last", "memo", "rows")

    def __init__(self, after: int, last: int, rows: list[Row]) -> None:
        self.after = after
        self.last = last
        self.rows = rows
        by_name: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            by_name.setdefault(row.name, []).append(index)
        self.by_name = by_name
        self._decoded: dict[int, Message | Exception] = {}
        # What subscribers compute once per row for all of them (partition key hashes).
        self.memo: dict[object, Any] = {}

    def __repr__(self) -> str:
        return f"<Page ({self.after}, {self.last}] {len(self.rows)} rows {len(self.by_name)} names>"

    def routes_any(self, names: Collection[str] | None) -> bool:
        if names is None:
            return bool(self.rows)
        return not self.by_name.keys().isdisjoint(names)

    def routed(self, names: Collection[str] | None, after: int = 0) -> Iterator[int]:
        """Indexes of rows whose name is in ``names`` (all rows for ``None``), in id order."""
        rows = self.rows
        if names is None:
            indexes: Collection[int] = range(len(rows))
        else:
            hits = [self.by_name[n] for n in names if n in self.by_name]
            if not hits:
                return
            indexes = hits[0] if len(hits) == 1 else sorted(i for h in hits for i in h)
        for index in indexes:
            if rows[index].id > after:
                yield index

    def message(self, index: int, registry: CommandRegistry) -> Message:
        """The decoded message at ``index``; raises the decode error for a bad row."""
        cached = self._decoded.get(index)
        if cached is None:
            row = self.rows[index]
            try:
                cached = Message.from_row(row, registry.decode(row.name, row.payload))
            except Exception as exc:  # noqa: BLE001 - cached and re-raised to each subscriber
                cached = exc
            self._decoded[index] = cached
        if isinstance(cached, Exception):
            # Each subscriber gets the same error without the tracebacks of the others.
            raise cached.with_traceback(None)
        return cached
