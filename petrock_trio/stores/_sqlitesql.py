"""The SQLite store's schema and statements, and the migration of older databases."""

from __future__ import annotations

import sqlite3
from typing import Final

from ._base import DeadLetterRecord

__all__ = [
    "DEAD_LETTERS",
    "DELETE_DEAD_LETTER",
    "DELETE_RETRIES_UPTO",
    "FORGET_SNAPSHOTS",
    "HAS_SNAPSHOTS",
    "HEAD",
    "INSERT_MESSAGE",
    "MESSAGE_COLUMNS",
    "PRUNE_SNAPSHOTS",
    "SCHEMA",
    "SNAPSHOTS",
    "TAKE_LEASE",
    "UPSERT_DEAD_LETTER",
    "UPSERT_POSITION",
    "UPSERT_RETRY",
    "UPSERT_SNAPSHOT",
    "dead_letter_records",
    "message_columns",
    "migrate",
]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    timestamp REAL    NOT NULL,
    name      TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    metadata  TEXT
);
CREATE TABLE IF NOT EXISTS positions (
    worker     TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    worker          TEXT    NOT NULL,
    message_id      INTEGER NOT NULL,
    command_name    TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at REAL    NOT NULL,
    last_failed_at  REAL    NOT NULL,
    traceback       TEXT,
    PRIMARY KEY (worker, message_id)
);
CREATE TABLE IF NOT EXISTS retries (
    worker          TEXT    PRIMARY KEY,
    message_id      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at REAL    NOT NULL,
    first_failed_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    worker     TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    name          TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    state_version TEXT    NOT NULL,
    shape         TEXT    NOT NULL,
    state         BLOB    NOT NULL,
    taken_at      REAL    NOT NULL,
    PRIMARY KEY (name, position)
);
"""

UPSERT_POSITION: Final = """
INSERT INTO positions (worker, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (worker) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
WHERE excluded.position > positions.position
"""

UPSERT_DEAD_LETTER: Final = """
INSERT INTO dead_letters (
    worker, message_id, command_name, error, attempts, first_failed_at, last_failed_at, traceback
) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (worker, message_id) DO UPDATE SET
    error = excluded.error, attempts = dead_letters.attempts + excluded.attempts,
    last_failed_at = excluded.last_failed_at, traceback = excluded.traceback
"""

# Every column, read by name: a database opened read-only may be older than a column
# (such as traceback) and cannot be given it.
DEAD_LETTERS: Final = "SELECT * FROM dead_letters"


def dead_letter_records(cursor: sqlite3.Cursor) -> list[DeadLetterRecord]:
    """The records of a ``DEAD_LETTERS`` query; ``traceback`` is None where the table
    has no such column yet."""
    columns = [c[0] for c in cursor.description]
    rows = [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]
    return [
        DeadLetterRecord(
            worker=r["worker"],
            message_id=r["message_id"],
            command_name=r["command_name"],
            error=r["error"],
            attempts=r["attempts"],
            first_failed_at=r["first_failed_at"],
            last_failed_at=r["last_failed_at"],
            traceback=r.get("traceback"),
        )
        for r in rows
    ]


# Columns added since the first schema: (table, column, its definition). A database
# made before one was added gets it when opened; rows already there hold NULL.
_ADDED_COLUMNS: Final = (
    ("dead_letters", "traceback", "TEXT"),
    ("messages", "metadata", "TEXT"),
)


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older database lacks, in one write transaction.

    Looked for first without a transaction: a database that is up to date is only
    read, so a read-only file opens. Looked for again under the write lock, since
    another process may be migrating the same file at the same time.
    """

    def missing() -> list[tuple[str, str, str]]:
        return [
            added
            for added in _ADDED_COLUMNS
            if added[1] not in {row[1] for row in conn.execute(f"PRAGMA table_info({added[0]})")}
        ]

    if not missing():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, definition in missing():
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


HEAD: Final = "SELECT coalesce(max(id), 0) FROM messages"

INSERT_MESSAGE: Final = (
    "INSERT INTO messages (id, timestamp, name, payload, metadata) VALUES (?, ?, ?, ?, ?)"
)

# What a read selects, in Row's order.
MESSAGE_COLUMNS: Final = "id, timestamp, name, payload, metadata"


def message_columns(conn: sqlite3.Connection) -> str:
    """``MESSAGE_COLUMNS`` for this database: a file opened read-only may be older than
    the metadata column, and its rows then read with none."""
    found = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    return MESSAGE_COLUMNS if "metadata" in found else "id, timestamp, name, payload, NULL"


UPSERT_RETRY: Final = """
INSERT INTO retries VALUES (?, ?, ?, ?, ?)
ON CONFLICT (worker) DO UPDATE SET
    message_id = excluded.message_id, attempts = excluded.attempts,
    next_attempt_at = excluded.next_attempt_at, first_failed_at = excluded.first_failed_at
"""

UPSERT_SNAPSHOT: Final = "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?)"

FORGET_SNAPSHOTS: Final = "DELETE FROM snapshots WHERE name = ?"

DELETE_RETRIES_UPTO: Final = "DELETE FROM retries WHERE worker = ? AND message_id <= ?"

DELETE_DEAD_LETTER: Final = "DELETE FROM dead_letters WHERE worker = ? AND message_id = ?"

# Of one name, every snapshot but the newest SNAPSHOTS_KEPT.
PRUNE_SNAPSHOTS: Final = """
DELETE FROM snapshots WHERE name = ? AND position NOT IN (
    SELECT position FROM snapshots WHERE name = ? ORDER BY position DESC LIMIT ?
)
"""

SNAPSHOTS: Final = "SELECT * FROM snapshots"

HAS_SNAPSHOTS: Final = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'"

TAKE_LEASE: Final = """
INSERT INTO leases VALUES (?, ?, 1, ?)
ON CONFLICT (worker) DO UPDATE SET
    holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at
WHERE leases.expires_at < ?
"""
