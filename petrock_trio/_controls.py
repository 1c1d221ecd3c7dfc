"""Operators' controls of the workers: paused or not, and resets of their position.

The store holds them (``ControlRecord``), so every process that serves the log obeys
them, and a worker paused in the database starts paused. Each process keeps what it
last read. It reads them again whenever the store's watch reports another process's
commit (SQLite: ``PRAGMA data_version``, at once on Linux and within a second
elsewhere; PostgreSQL: the ``NOTIFY`` that every change of controls sends, and the
watch's poll every ``poll_interval`` if a notification is lost), at most ten times a
second; its own changes it applies at once.

A paused worker finishes the message it is on and then handles nothing: its message
loop waits at the gate (``parked``), its position stays, re-drives wait, periodic
work is skipped. A reset of its position (only while paused) restarts its runs from
the store: with leases, by the lease fence (the reset moved their leases to a new
epoch, and this process gives them up at once); without, by cancelling their
activity, after which ``serve`` starts them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

import trio
from trio_util import AsyncValue

from ._errors import PetrockError
from ._leases import LeaseKeeper
from ._logging import get_logger
from .stores import ControlRecord, Store

__all__ = ["Controls"]

_log = get_logger("petrock_trio")

# Reading the controls again at most this often, however busy the log is.
_SPACING: Final = 0.1
# After a failed read: the next try.
_RETRY: Final = 1.0


class Controls:
    """The controls of every worker as this process last read them, and what obeys them.

    ``names`` maps each worker to the names its runs are stored (and leased) under.
    """

    def __init__(
        self,
        store: Store,
        records: Iterable[ControlRecord] = (),
        *,
        names: Mapping[str, Sequence[str]] | None = None,
        leases: LeaseKeeper | None = None,
        discarded: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.store = store
        self.records: dict[str, ControlRecord] = {r.worker: r for r in records}
        self.names: Mapping[str, Sequence[str]] = names or {}
        self.leases = leases
        # Moves at every change of controls, and when a run parks or leaves the gate.
        self.version: AsyncValue[int] = AsyncValue(0)
        # Stored name -> whether its message loop waits at the pause gate.
        self.parked: dict[str, bool] = {}
        # Stored name -> the generation (resets of its worker) its run started at.
        self.started: dict[str, int] = {}
        # Dead letters discarded, by worker: replay skips them as it skips dead letters.
        self.discarded: dict[str, set[int]] = {}
        for worker, message_id in discarded:
            self.discarded.setdefault(worker, set()).add(message_id)
        self.reads = 0
        self.failures = 0
        self._poked = trio.Event()
        self._activities: dict[str, set[trio.CancelScope]] = {}

    def __repr__(self) -> str:
        paused = sorted(w for w, r in self.records.items() if r.paused)
        return f"<Controls paused={paused} parked={sorted(k for k, v in self.parked.items() if v)}>"

    # --- what they say -----------------------------------------------------------------

    def paused(self, worker: str) -> bool:
        record = self.records.get(worker)
        return record is not None and record.paused

    def generation(self, worker: str) -> int:
        record = self.records.get(worker)
        return 0 if record is None else record.generation

    def is_discarded(self, worker: str, message_id: int) -> bool:
        return message_id in self.discarded.get(worker, ())

    async def wait_resumed(self, worker: str) -> None:
        """Return once ``worker`` is not paused (at once if it is not)."""
        await self.version.wait_value(lambda _: not self.paused(worker))

    def park(self, stored: str, *, parked: bool) -> None:
        """Say whether the run stored as ``stored`` waits at the pause gate."""
        if self.parked.get(stored) != parked:
            self.parked[stored] = parked
            self.version.value += 1

    def leave(self, stored: str) -> None:
        """The run stored as ``stored`` ended here."""
        if self.parked.pop(stored, None) is not None:
            self.version.value += 1

    async def wait_parked(self, worker: str) -> None:
        """Return once every run of ``worker`` in this process waits at the pause gate."""

        def all_parked(_: int) -> bool:
            mine = [n for n in self.names.get(worker, ()) if n in self.parked]
            return all(self.parked[n] for n in mine)

        await self.version.wait_value(all_parked)

    def run_started(self, stored: str, worker: str) -> None:
        """A run of ``worker`` stored as ``stored`` started here, from the store as it
        stands after the resets seen so far."""
        self.started[stored] = self.generation(worker)
        self.park(stored, parked=False)
        self.version.value += 1

    async def wait_restarted(self, worker: str, generation: int) -> None:
        """Return once every run of ``worker`` in this process started again after
        reset ``generation`` and, while still paused, replayed up to the gate."""

        def ready(_: int) -> bool:
            return all(
                self.started.get(n, -1) >= generation
                and (self.parked.get(n, False) or not self.paused(worker))
                for n in self.names.get(worker, ())
            )

        await self.version.wait_value(ready)

    # --- following the store -------------------------------------------------------------

    def apply(self, records: Iterable[ControlRecord], *, complete: bool = False) -> None:
        """Take ``records`` as the store's (``complete``: all of them, so a worker
        missing has no controls). A worker reset since it was last read is restarted."""
        found = {r.worker: r for r in records}
        if complete:
            for worker in set(self.records) - set(found):
                found[worker] = ControlRecord(worker, paused=False)
        changed = False
        for worker, record in found.items():
            old = self.records.get(worker, ControlRecord(worker, paused=False))
            if record == old:
                continue
            self.records[worker] = record
            changed = True
            if record.paused != old.paused:
                _log.info(
                    "petrock.worker_paused" if record.paused else "petrock.worker_resumed",
                    worker_name=worker,
                )
            if record.generation > old.generation:
                _log.info("petrock.position_reset", worker_name=worker, position=record.reset_to)
                self._restart(worker)
        if changed:
            self.version.value += 1

    def _restart(self, worker: str) -> None:
        names = list(self.names.get(worker, ()))
        if self.leases is not None:
            # The reset moved the leases to a new epoch: ours are gone, and with them
            # what the runs were doing. They start again once the leases are taken.
            self.leases.lose([n for n in names if n in self.leases.held])
            return
        for name in names:
            for scope in self._activities.get(name, ()):
                scope.cancel()

    @contextlib.contextmanager
    def activity(self, stored: str) -> Iterator[trio.CancelScope]:
        """A scope for running ``stored`` (without leases), cancelled by a reset."""
        with trio.CancelScope() as scope:
            self._activities.setdefault(stored, set()).add(scope)
            try:
                yield scope
            finally:
                self._activities[stored].discard(scope)

    def poke(self) -> None:
        """Another process committed something: read the controls again soon."""
        self._poked.set()

    async def run(self) -> None:
        """Read the controls again after every poke; never returns unless cancelled.

        Error handling: a failed read is logged and tried again a second later; what
        was read before stays in force meanwhile.
        """
        while True:
            await self._poked.wait()
            self._poked = trio.Event()
            try:
                records = await self.store.controls()
            except PetrockError as exc:
                self.failures += 1
                _log.warning("petrock.controls_read_failed", error_details=repr(exc), exc_info=exc)
                self._poked.set()
                await trio.sleep(_RETRY)
                continue
            self.reads += 1
            self.apply(records, complete=True)
            await trio.sleep(_SPACING)
