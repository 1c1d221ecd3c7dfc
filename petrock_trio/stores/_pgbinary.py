"""PostgreSQL's binary format: statement parameters out, result values in.

Parameters travel in binary, so nothing is quoted or parsed as text: a batch of
rows is a handful of one-dimensional arrays, expanded with ``unnest`` on the
server.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from psycopg import pq

__all__ = [
    "ARRAY_OF",
    "BYTEA",
    "FLOAT8",
    "INT8",
    "INT8_MAX",
    "TEXT",
    "Param",
    "Statement",
    "byteas",
    "float8",
    "float8s",
    "get_bytes",
    "get_float",
    "get_int",
    "get_optional_text",
    "get_text",
    "int8",
    "int8s",
    "optional_texts",
    "read_rows",
    "text",
    "texts",
]

INT8: Final = 20
FLOAT8: Final = 701
TEXT: Final = 25
BYTEA: Final = 17
ARRAY_OF: Final = {INT8: 1016, FLOAT8: 1022, TEXT: 1009, BYTEA: 1001}
INT8_MAX: Final = (1 << 63) - 1

_q = struct.Struct(">q")
_d = struct.Struct(">d")
_i = struct.Struct(">i")
_NULL_ELEMENT: Final = _i.pack(-1)

# A parameter: its type's oid and its value in PostgreSQL's binary format (None is NULL).
Param = tuple[int, bytes | None]
Statement = tuple[bytes, Sequence[Param]]


def int8(value: int) -> Param:
    return INT8, _q.pack(value)


def float8(value: float) -> Param:
    return FLOAT8, _d.pack(value)


def text(value: str) -> Param:
    return TEXT, value.encode()


def _array(oid: int, values: Iterable[bytes | None]) -> Param:
    """A one-dimensional array in binary format (``array_send``)."""
    items = list(values)
    if not items:
        return ARRAY_OF[oid], struct.pack(">iii", 0, 0, oid)
    has_null = any(item is None for item in items)
    parts = [struct.pack(">iiiii", 1, has_null, oid, len(items), 1)]
    parts.extend(_NULL_ELEMENT if item is None else _i.pack(len(item)) + item for item in items)
    return ARRAY_OF[oid], b"".join(parts)


def texts(values: Iterable[str]) -> Param:
    return _array(TEXT, (v.encode() for v in values))


def optional_texts(values: Iterable[str | None]) -> Param:
    return _array(TEXT, (None if v is None else v.encode() for v in values))


def int8s(values: Iterable[int]) -> Param:
    return _array(INT8, map(_q.pack, values))


def float8s(values: Iterable[float]) -> Param:
    return _array(FLOAT8, map(_d.pack, values))


def byteas(values: Iterable[bytes | None]) -> Param:
    # None is kept (NULL) so that the NOT NULL constraint refuses it inside the
    # transaction, as SQLite does, instead of failing earlier here.
    return _array(BYTEA, (None if v is None else bytes(v) for v in values))


def get_int(res: pq.abc.PGresult, row: int, col: int) -> int:
    value = res.get_value(row, col)
    assert value is not None
    return int(_q.unpack(value)[0])


def get_float(res: pq.abc.PGresult, row: int, col: int) -> float:
    value = res.get_value(row, col)
    assert value is not None
    return float(_d.unpack(value)[0])


def get_text(res: pq.abc.PGresult, row: int, col: int) -> str:
    value = res.get_value(row, col)
    assert value is not None
    return value.decode()


def get_optional_text(res: pq.abc.PGresult, row: int, col: int) -> str | None:
    value = res.get_value(row, col)
    return None if value is None else value.decode()


def get_bytes(res: pq.abc.PGresult, row: int, col: int) -> bytes:
    value = res.get_value(row, col)
    assert value is not None
    return value


def read_rows(
    res: pq.abc.PGresult, columns: Sequence[Callable[[pq.abc.PGresult, int, int], Any]]
) -> list[tuple[Any, ...]]:
    """Every row of ``res``, each column read by its getter."""
    return [tuple(get(res, r, c) for c, get in enumerate(columns)) for r in range(res.ntuples)]
