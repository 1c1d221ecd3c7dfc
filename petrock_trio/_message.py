"""Messages as workers see them, and the immutable pages the log pump fans out."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import attrs
import orjson

if TYPE_CHECKING:
    from ._commands import CommandRegistry

__all__ = ["NO_METADATA", "Message", "Page", "Row", "decode_metadata", "encode_metadata"]

NO_METADATA: Final[Mapping[str, str]] = MappingProxyType({})
"""The metadata of a message that has none: shared, so a message costs no dict."""


class Row(NamedTuple):
    """A message as stored: payload still encoded, timestamp in Unix seconds.

    ``metadata`` is a JSON object's text (W3C trace context: ``traceparent`` and
    ``tracestate``), or ``None``: rows written without tracing, or by older versions.
    """

    id: int
    timestamp: float
    name: str
    payload: bytes
    metadata: str | None = None


def encode_metadata(metadata: Mapping[str, str]) -> str | None:
    """A row's ``metadata`` column for ``metadata``: ``None`` when it is empty."""
    if not metadata:
        return None
    return orjson.dumps(dict(metadata)).decode()


def decode_metadata(text: str | None) -> Mapping[str, str]:
    """The mapping a row's ``metadata`` holds; text that is not a JSON object of strings
    (another program's writing) reads as what strings it has, or none.

    Metadata only links traces: a message must not become undecodable, and be
    dead-lettered, because of it.
    """
    if text is None:
        return NO_METADATA
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return NO_METADATA
    if not isinstance(data, dict):
        return NO_METADATA
    found = {k: v for k, v in data.items() if isinstance(v, str)}
    return MappingProxyType(found) if found else NO_METADATA


@attrs.frozen
class Message:
    """One command in the log: its id (position), when it was appended, and the command.

    ``metadata`` is what the log keeps beside the command: the trace context of the
    span that appended it (``traceparent``, ``tracestate``) when tracing is on, else
    nothing. It is not part of the message's hash.
    """

    id: int
    timestamp: datetime
    name: str
    command: Any
    metadata: Mapping[str, str] = attrs.field(default=NO_METADATA, hash=False)

    @classmethod
    def from_row(cls, row: Row, command: Any) -> Message:
        timestamp = datetime.fromtimestamp(row.timestamp, UTC)
        if row.metadata is None:
            return cls(row.id, timestamp, row.name, command)
        return cls(row.id, timestamp, row.name, command, decode_metadata(row.metadata))


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
