"""The statements of one SQLite group commit, each kind run once with all its rows.

A transaction of a group commit holds many commits; a worker's live message is one
commit of a position (and the delete of its retry record up to it). Run commit by
commit, that is two ``executemany`` calls of one row each per message, 58 calls for
a transaction of 29 messages, each paying SQLite's statement round trip with the
GIL held. Folded, the transaction runs each kind of statement once per run of it.

Order is kept where it matters: per table. Statements on different tables do not
read each other (no triggers, no foreign keys, no subqueries across tables), so each
table's statements run in the order the commits gave them, and consecutive ones of
the same statement are joined into one ``executemany``, which runs its rows in
order: the same writes as one commit after the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

__all__ = ["Writes"]


class Writes:
    """Statements by table, in order; consecutive same statements share one call."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[str, list[tuple[str, list[Any]]]] = {}

    def add(self, table: str, statement: str, rows: Iterable[Any]) -> None:
        """``statement`` for each of ``rows``, after what ``table`` was given before."""
        ops = self._tables.setdefault(table, [])
        if ops and ops[-1][0] == statement:
            ops[-1][1].extend(rows)
        else:
            ops.append((statement, list(rows)))

    def run(self, conn: sqlite3.Connection) -> None:
        for ops in self._tables.values():
            for statement, rows in ops:
                if rows:
                    conn.executemany(statement, rows)
