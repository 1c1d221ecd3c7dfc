"""A group commit folded into one statement per table."""

from __future__ import annotations

from collections.abc import Sequence

from . import _pgsql as sql
from ._base import SNAPSHOTS_KEPT, Commit, DeadLetterRecord, RetryRecord, SnapshotRecord
from ._pgbinary import Param, Statement, byteas, float8s, int8, int8s, optional_texts, texts

__all__ = ["Batch"]

_Key = tuple[str, int]


class Batch:
    """The commits of one group commit, folded so that each row is written once.

    One statement cannot touch a row twice, so positions keep their highest value
    and dead letters fold the way successive upserts and deletes would have left
    them (attempts add up; a resolve deletes; a letter after a resolve starts anew).
    """

    def __init__(self, commits: Sequence[Commit]) -> None:
        self.timestamps: list[float] = []
        self.names: list[str] = []
        self.payloads: list[bytes | None] = []
        # Each append's metadata, once some commit of the batch has any.
        self.metadata: list[str | None] | None = None
        self.positions: dict[str, tuple[int, float]] = {}
        # key -> ("add" | "replace", letter) or ("delete", None)
        self.letters: dict[_Key, tuple[str, DeadLetterRecord | None]] = {}
        self.retries: dict[str, RetryRecord] = {}
        self.leases: dict[str, int] = {}
        # Snapshots to write by (name, position), and names whose earlier ones go first.
        self.snapshots: dict[_Key, SnapshotRecord] = {}
        self.forgotten: set[str] = set()
        for commit in commits:
            self.leases.update(commit.leases)
            self._add_appends(commit)
            for worker, position in commit.positions.items():
                if worker not in self.positions or position > self.positions[worker][0]:
                    self.positions[worker] = (position, commit.timestamp)
                retry = self.retries.get(worker)
                if retry is not None and retry.message_id <= position:
                    del self.retries[worker]
            for retry in commit.retries:
                self.retries[retry.worker] = retry
            for letter in commit.dead_letters:
                self._add_letter(letter)
            for worker, message_id in commit.resolved:
                self.letters[worker, message_id] = ("delete", None)
            self._add_snapshots(commit)

    def _add_snapshots(self, commit: Commit) -> None:
        for name in commit.forget_snapshots:
            self.forgotten.add(name)
            self.snapshots = {k: r for k, r in self.snapshots.items() if k[0] != name}
        for record in commit.snapshots:
            self.snapshots[record.name, record.position] = record

    def _add_appends(self, commit: Commit) -> None:
        if commit.metadata and self.metadata is None:
            self.metadata = [None] * len(self.names)
        for name, payload in commit.appends:
            self.timestamps.append(commit.timestamp)
            self.names.append(name)
            self.payloads.append(payload)
        if self.metadata is not None:
            self.metadata.extend(commit.metadata or [None] * len(commit.appends))

    def _add_letter(self, letter: DeadLetterRecord) -> None:
        key = (letter.worker, letter.message_id)
        kind, earlier = self.letters.get(key, ("add", None))
        if kind == "delete":
            kind = "replace"
        elif earlier is not None:
            letter = DeadLetterRecord(
                worker=letter.worker,
                message_id=letter.message_id,
                command_name=earlier.command_name,
                error=letter.error,
                attempts=earlier.attempts + letter.attempts,
                first_failed_at=earlier.first_failed_at,
                last_failed_at=letter.last_failed_at,
                traceback=letter.traceback,
            )
        self.letters[key] = (kind, letter)

    @property
    def empty(self) -> bool:
        return not (
            self.names
            or self.positions
            or self.letters
            or self.retries
            or self.snapshots
            or self.forgotten
        )

    def statements(self, *, lock_key: int | None) -> tuple[list[Statement], int]:
        """The statements, and the index of the one whose result holds the new ids."""
        out: list[Statement] = []
        if self.leases:
            fenced = sorted(self.leases)
            out.append((sql.FENCE, [texts(fenced), int8s(self.leases[w] for w in fenced)]))
        inserted = -1
        if self.names:
            if lock_key is not None:
                out.append((sql.LOCK, [int8(lock_key)]))
            inserted = len(out)
            columns = [float8s(self.timestamps), texts(self.names), byteas(self.payloads)]
            if self.metadata is not None:
                columns.append(optional_texts(self.metadata))
                out.append((sql.INSERT_MESSAGES_WITH_METADATA, columns))
            else:
                out.append((sql.INSERT_MESSAGES, columns))
            out.append((sql.NOTIFY, ()))
        # Rows are written in key order, so that two processes writing the same
        # rows lock them in the same order instead of deadlocking.
        if self.positions:
            workers = sorted(self.positions)
            out.append(
                (
                    sql.UPSERT_POSITIONS,
                    [
                        texts(workers),
                        int8s(self.positions[w][0] for w in workers),
                        float8s(self.positions[w][1] for w in workers),
                    ],
                )
            )
            out.append(
                (
                    sql.CLEAR_RETRIES,
                    [texts(workers), int8s(self.positions[w][0] for w in workers)],
                )
            )
        if self.retries:
            retries = [self.retries[w] for w in sorted(self.retries)]
            out.append(
                (
                    sql.UPSERT_RETRIES,
                    [
                        texts(r.worker for r in retries),
                        int8s(r.message_id for r in retries),
                        int8s(r.attempts for r in retries),
                        float8s(r.next_attempt_at for r in retries),
                        float8s(r.first_failed_at for r in retries),
                    ],
                )
            )
        for kind, upsert in (("add", sql.ADD_DEAD_LETTERS), ("replace", sql.REPLACE_DEAD_LETTERS)):
            letters = [
                d for key, (k, d) in sorted(self.letters.items()) if k == kind and d is not None
            ]
            if letters:
                out.append((upsert, _letter_params(letters)))
        deleted = [key for key, (kind, _) in sorted(self.letters.items()) if kind == "delete"]
        if deleted:
            out.append(
                (
                    sql.DELETE_DEAD_LETTERS,
                    [texts(w for w, _ in deleted), int8s(m for _, m in deleted)],
                )
            )
        out.extend(self._snapshot_statements())
        return out, inserted

    def _snapshot_statements(self) -> list[Statement]:
        out: list[Statement] = []
        touched = sorted(self.forgotten | {name for name, _ in self.snapshots})
        if touched:
            out.append((sql.LOCK_SNAPSHOTS, [texts(touched)]))
        if self.forgotten:
            out.append((sql.FORGET_SNAPSHOTS, [texts(sorted(self.forgotten))]))
        if self.snapshots:
            records = [self.snapshots[key] for key in sorted(self.snapshots)]
            out.append(
                (
                    sql.UPSERT_SNAPSHOTS,
                    [
                        texts(r.name for r in records),
                        int8s(r.position for r in records),
                        texts(r.state_version for r in records),
                        texts(r.shape for r in records),
                        byteas(r.state for r in records),
                        float8s(r.taken_at for r in records),
                    ],
                )
            )
            names = sorted({r.name for r in records})
            out.append((sql.PRUNE_SNAPSHOTS, [texts(names), int8(SNAPSHOTS_KEPT)]))
        return out


def _letter_params(letters: Sequence[DeadLetterRecord]) -> list[Param]:
    return [
        texts(d.worker for d in letters),
        int8s(d.message_id for d in letters),
        texts(d.command_name for d in letters),
        texts(d.error for d in letters),
        int8s(d.attempts for d in letters),
        float8s(d.first_failed_at for d in letters),
        float8s(d.last_failed_at for d in letters),
        optional_texts(d.traceback for d in letters),
    ]
