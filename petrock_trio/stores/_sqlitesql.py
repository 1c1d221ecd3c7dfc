"""The SQLite store's schema and statements."""

from __future__ import annotations

from typing import Final

__all__ = ["HEAD", "SCHEMA", "TAKE_LEASE", "UPSERT_DEAD_LETTER", "UPSERT_POSITION", "UPSERT_RETRY"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    timestamp REAL    NOT NULL,
    name      TEXT    NOT NULL,
    payload   BLOB    NOT NULL
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
"""

UPSERT_POSITION: Final = """
INSERT INTO positions (worker, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (worker) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
WHERE excluded.position > positions.position
"""

UPSERT_DEAD_LETTER: Final = """
INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (worker, message_id) DO UPDATE SET
    error = excluded.error, attempts = dead_letters.attempts + excluded.attempts,
    last_failed_at = excluded.last_failed_at
"""


HEAD: Final = "SELECT coalesce(max(id), 0) FROM messages"

UPSERT_RETRY: Final = """
INSERT INTO retries VALUES (?, ?, ?, ?, ?)
ON CONFLICT (worker) DO UPDATE SET
    message_id = excluded.message_id, attempts = excluded.attempts,
    next_attempt_at = excluded.next_attempt_at, first_failed_at = excluded.first_failed_at
"""

TAKE_LEASE: Final = """
INSERT INTO leases VALUES (?, ?, 1, ?)
ON CONFLICT (worker) DO UPDATE SET
    holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at
WHERE leases.expires_at < ?
"""
