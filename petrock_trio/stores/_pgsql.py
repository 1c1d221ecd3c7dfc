"""The PostgreSQL store's schema and statements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

SCHEMA: Final[Sequence[bytes]] = (
    b"""CREATE TABLE IF NOT EXISTS messages (
        id        BIGINT           PRIMARY KEY,
        timestamp DOUBLE PRECISION NOT NULL,
        name      TEXT             NOT NULL,
        payload   BYTEA            NOT NULL,
        metadata  TEXT
    )""",
    # A log made before messages kept metadata (trace context) gets the column, as
    # dead_letters gets traceback below.
    b"""DO $$ BEGIN
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'messages'::regclass AND attname = 'metadata'
              AND NOT attisdropped
        ) THEN
            ALTER TABLE messages ADD COLUMN metadata TEXT;
        END IF;
    END $$""",
    b"CREATE SEQUENCE IF NOT EXISTS messages_id_seq AS BIGINT OWNED BY messages.id",
    b"""CREATE TABLE IF NOT EXISTS positions (
        worker     TEXT             PRIMARY KEY,
        position   BIGINT           NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    b"""CREATE TABLE IF NOT EXISTS dead_letters (
        worker          TEXT             NOT NULL,
        message_id      BIGINT           NOT NULL,
        command_name    TEXT             NOT NULL,
        error           TEXT             NOT NULL,
        attempts        BIGINT           NOT NULL,
        first_failed_at DOUBLE PRECISION NOT NULL,
        last_failed_at  DOUBLE PRECISION NOT NULL,
        traceback       TEXT,
        PRIMARY KEY (worker, message_id)
    )""",
    # A database made before dead letters kept tracebacks gets the column (NULL in the
    # rows already there). The catalog is looked at first: ALTER TABLE would lock the
    # table against every reader even when the column is there.
    b"""DO $$ BEGIN
        IF NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'dead_letters'::regclass AND attname = 'traceback'
              AND NOT attisdropped
        ) THEN
            ALTER TABLE dead_letters ADD COLUMN traceback TEXT;
        END IF;
    END $$""",
    b"""CREATE TABLE IF NOT EXISTS retries (
        worker          TEXT             PRIMARY KEY,
        message_id      BIGINT           NOT NULL,
        attempts        BIGINT           NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        first_failed_at DOUBLE PRECISION NOT NULL
    )""",
    # backend_pid and backend_start name the holder's connection: when it is gone from
    # pg_stat_activity (the holder was killed) the lease is free before it expires.
    b"""CREATE TABLE IF NOT EXISTS leases (
        worker        TEXT             PRIMARY KEY,
        holder        TEXT             NOT NULL,
        epoch         BIGINT           NOT NULL,
        expires_at    DOUBLE PRECISION NOT NULL,
        backend_pid   INTEGER          NOT NULL,
        backend_start TIMESTAMPTZ
    )""",
    b"""CREATE TABLE IF NOT EXISTS snapshots (
        name          TEXT             NOT NULL,
        position      BIGINT           NOT NULL,
        state_version TEXT             NOT NULL,
        shape         TEXT             NOT NULL,
        state         BYTEA            NOT NULL,
        taken_at      DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, position)
    )""",
    # Fencing: share-locks the commit's lease rows (a takeover waits for the commit, or
    # the commit sees the new epoch) and raises if any epoch moved on.
    b"""CREATE OR REPLACE FUNCTION petrock_trio_fence(workers TEXT[], epochs BIGINT[])
    RETURNS void LANGUAGE plpgsql AS $$
    DECLARE lost TEXT;
    BEGIN
        PERFORM 1 FROM leases l
        JOIN unnest(workers, epochs) AS h(worker, epoch)
            ON l.worker = h.worker AND l.epoch = h.epoch
        ORDER BY l.worker FOR SHARE OF l;
        SELECT json_agg(h.worker ORDER BY h.worker)::text INTO lost
        FROM unnest(workers, epochs) AS h(worker, epoch)
        WHERE NOT EXISTS (
            SELECT 1 FROM leases l WHERE l.worker = h.worker AND l.epoch = h.epoch
        );
        IF lost IS NOT NULL THEN
            RAISE EXCEPTION 'lease lost' USING ERRCODE = 'PTL01', DETAIL = lost;
        END IF;
    END $$""",
)

LEASE_LOST: Final = b"PTL01"

FENCE: Final = b"SELECT petrock_trio_fence($1::text[], $2::int8[])"

_NOW: Final = b"extract(epoch FROM clock_timestamp())"
_MY_BACKEND: Final = (
    b"pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
)

# A lease round locks every row it may write before it writes one, all in one order
# (the workers' order, as the fence does): two rounds, or a round and a fenced
# commit, then never wait for each other in a cycle. Written the obvious way (renew
# the rows held, then upsert the rows wanted, which locks every conflicting row
# whether it is taken or not), each round locked its own rows first and the others'
# next, and two rounds at the same moment deadlocked.
#
# First the rows wanted that do not exist yet: a placeholder each, epoch 0 and
# expired, inserted in order. This statement waits only for rows that another
# transaction is inserting (in the same order) or updating (past its own locking
# statement, where nothing waits), and holds no lock but its own inserts. After it,
# every wanted row is visible to the next statement. The round takes every
# placeholder it inserts, so no other transaction ever sees one.
ADD_LEASES: Final = b"""
INSERT INTO leases (worker, holder, epoch, expires_at, backend_pid)
SELECT w, '', 0, 0, 0 FROM unnest($1::text[]) AS w ORDER BY w
ON CONFLICT (worker) DO NOTHING
"""

# Then every row the round will write, held and wanted, locked in order. The later
# statements write only rows locked here, so they never wait: a renewal matches the
# holder as well as the epoch, so that even a held row that appeared only after this
# statement (one deleted by hand and taken again meanwhile) is left alone.
LOCK_LEASES: Final = (
    b"SELECT 1 FROM leases WHERE worker = ANY($1::text[]) ORDER BY worker FOR UPDATE"
)

RENEW_LEASES: Final = (
    b"""
UPDATE leases SET expires_at = """
    + _NOW
    + b""" + $3, (backend_pid, backend_start) = (SELECT """
    + _MY_BACKEND
    + b""")
FROM unnest($1::text[], $2::int8[]) AS h(worker, epoch)
WHERE leases.worker = h.worker AND leases.epoch = h.epoch AND leases.holder = $4
"""
)

TAKE_LEASES: Final = (
    b"""
UPDATE leases SET holder = $2, epoch = epoch + 1, expires_at = """
    + _NOW
    + b""" + $3,
    (backend_pid, backend_start) = (SELECT """
    + _MY_BACKEND
    + b""")
WHERE worker = ANY($1::text[])
  AND (expires_at < """
    + _NOW
    + b"""
   OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.pid = leases.backend_pid
                  -- Hidden (NULL) for another role's sessions: the pid alone then.
                  AND (a.backend_start IS NULL OR a.backend_start = leases.backend_start)))
"""
)

HELD_LEASES: Final = (
    b"SELECT worker, epoch FROM leases WHERE holder = $1 AND worker = ANY($2::text[])"
    b" AND expires_at >= " + _NOW
)

# Run after LOCK_LEASES, as a round's writes are.
RELEASE_LEASES: Final = b"""
UPDATE leases SET expires_at = 0
FROM unnest($1::text[], $2::int8[]) AS h(worker, epoch)
WHERE leases.worker = h.worker AND leases.epoch = h.epoch
"""

LEASE_RECORDS: Final = b"SELECT worker, holder, epoch, expires_at FROM leases ORDER BY worker"

RETRIES: Final = b"SELECT * FROM retries"

UPSERT_RETRIES: Final = b"""
INSERT INTO retries
SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::float8[], $5::float8[])
ON CONFLICT (worker) DO UPDATE SET
    message_id = excluded.message_id, attempts = excluded.attempts,
    next_attempt_at = excluded.next_attempt_at, first_failed_at = excluded.first_failed_at
"""

CLEAR_RETRIES: Final = b"""
DELETE FROM retries r USING unnest($1::text[], $2::int8[]) AS p(worker, position)
WHERE r.worker = p.worker AND r.message_id <= p.position
"""

LOCK: Final = b"SELECT pg_advisory_xact_lock($1)"

# Whatever order nextval runs in, the ids drawn are handed out sorted, in the order
# of the arrays; under the append lock they are also consecutive.
_INSERT_MESSAGES: Final = b"""
WITH ids AS (
    SELECT nextval('messages_id_seq') AS id FROM generate_series(1, cardinality($2::text[]))
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM ids
)
INSERT INTO messages (id, timestamp, name, payload%s)
SELECT numbered.id, u.timestamp, u.name, u.payload%s
FROM unnest($1::float8[], $2::text[], $3::bytea[]%s)
     WITH ORDINALITY AS u(timestamp, name, payload%s, n)
JOIN numbered USING (n)
RETURNING id
"""

INSERT_MESSAGES: Final = _INSERT_MESSAGES % (b"", b"", b"", b"")

# A batch where some append has metadata: one more array (no cost to the others).
INSERT_MESSAGES_WITH_METADATA: Final = _INSERT_MESSAGES % (
    b", metadata",
    b", u.metadata",
    b", $4::text[]",
    b", metadata",
)

# The channel is named after the messages table's oid: unique to this log even when
# several logs share a database in different schemas (one log's head means nothing
# to another's followers).
CHANNEL: Final = b"SELECT 'petrock_trio_' || 'messages'::regclass::oid"
NOTIFY: Final = (
    b"SELECT pg_notify('petrock_trio_' || 'messages'::regclass::oid,"
    b" currval('messages_id_seq')::text)"
)

UPSERT_POSITIONS: Final = b"""
INSERT INTO positions (worker, position, updated_at)
SELECT * FROM unnest($1::text[], $2::int8[], $3::float8[])
ON CONFLICT (worker) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
WHERE excluded.position > positions.position
"""

_DEAD_LETTER_ROWS: Final = b"""
INSERT INTO dead_letters (worker, message_id, command_name, error, attempts,
                          first_failed_at, last_failed_at, traceback)
SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[],
                     $6::float8[], $7::float8[], $8::text[])
"""

ADD_DEAD_LETTERS: Final = (
    _DEAD_LETTER_ROWS
    + b"""
ON CONFLICT (worker, message_id) DO UPDATE SET
    error = excluded.error, attempts = dead_letters.attempts + excluded.attempts,
    last_failed_at = excluded.last_failed_at, traceback = excluded.traceback
"""
)

# A letter resolved and then dead-lettered again within one batch starts afresh.
REPLACE_DEAD_LETTERS: Final = (
    _DEAD_LETTER_ROWS
    + b"""
ON CONFLICT (worker, message_id) DO UPDATE SET
    command_name = excluded.command_name, error = excluded.error,
    attempts = excluded.attempts, first_failed_at = excluded.first_failed_at,
    last_failed_at = excluded.last_failed_at, traceback = excluded.traceback
"""
)

DELETE_DEAD_LETTERS: Final = b"""
DELETE FROM dead_letters d USING unnest($1::text[], $2::int8[]) AS r(worker, message_id)
WHERE d.worker = r.worker AND d.message_id = r.message_id
"""

_READ_AFTER: Final = b"""
SELECT id, timestamp, name, payload, %s FROM messages
WHERE id > $1 AND id <= $2 AND ($3::text[] IS NULL OR name = ANY($3))
ORDER BY id LIMIT $4
"""

READ_AFTER: Final = _READ_AFTER % b"metadata"

# A log opened read-only may be older than the metadata column.
READ_AFTER_WITHOUT_METADATA: Final = _READ_AFTER % b"NULL::text"

HAS_METADATA: Final = b"""
SELECT count(*)::int8 FROM pg_attribute
WHERE attrelid = 'messages'::regclass AND attname = 'metadata' AND NOT attisdropped
"""

HEAD: Final = b"SELECT coalesce(max(id), 0)::int8 FROM messages"

POSITIONS: Final = b"SELECT worker, position FROM positions"

_SELECT_DEAD_LETTERS: Final = b"""
SELECT worker, message_id, command_name, error, attempts, first_failed_at, last_failed_at,
       %s
FROM dead_letters WHERE $1::text IS NULL OR worker = $1
ORDER BY last_failed_at, worker, message_id
"""

DEAD_LETTERS: Final = _SELECT_DEAD_LETTERS % b"traceback"

# A database opened read-only cannot be given a column it is older than.
DEAD_LETTERS_WITHOUT_TRACEBACK: Final = _SELECT_DEAD_LETTERS % b"NULL::text AS traceback"

HAS_TRACEBACK: Final = b"""
SELECT count(*)::int8 FROM pg_attribute
WHERE attrelid = 'dead_letters'::regclass AND attname = 'traceback' AND NOT attisdropped
"""

# Several processes write the state projection's snapshots under one name: each locks
# the rows it may delete first, all in one order, so two such writes never deadlock.
LOCK_SNAPSHOTS: Final = (
    b"SELECT 1 FROM snapshots WHERE name = ANY($1::text[]) ORDER BY name, position FOR UPDATE"
)

FORGET_SNAPSHOTS: Final = b"DELETE FROM snapshots WHERE name = ANY($1::text[])"

UPSERT_SNAPSHOTS: Final = b"""
INSERT INTO snapshots
SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::bytea[], $6::float8[])
ON CONFLICT (name, position) DO UPDATE SET
    state_version = excluded.state_version, shape = excluded.shape, state = excluded.state,
    taken_at = excluded.taken_at
"""

# Of each name, every snapshot but the newest $2.
PRUNE_SNAPSHOTS: Final = b"""
DELETE FROM snapshots s USING (
    SELECT name, position, row_number() OVER (PARTITION BY name ORDER BY position DESC) AS n
    FROM snapshots WHERE name = ANY($1::text[])
) AS ranked
WHERE s.name = ranked.name AND s.position = ranked.position AND ranked.n > $2
"""

SNAPSHOTS: Final = b"""
SELECT name, position, state_version, shape, state, taken_at FROM snapshots
WHERE $1::text IS NULL OR name = $1
ORDER BY name, position DESC
"""

# A database opened read-only may be older than the table, and cannot be given it.
HAS_SNAPSHOTS: Final = b"SELECT (to_regclass('snapshots') IS NOT NULL)::int::int8"
