"""Leases: each worker runs in exactly one of the processes that share a log.

A lease is a row per worker in the store: holder, epoch and expiry. One task per
process renews the leases it holds and tries to take the free ones it wants, in one
transaction every ``ttl / 5`` seconds. A lease is free once it expired, was released
at a graceful shutdown, or (PostgreSQL) its holder's connection is gone: a process
killed outright loses its leases at the next attempt of the others, a frozen or
cut-off one when they expire.

A partitioned worker has a lease per partition, and its partitions are spread over
the processes: each process holds at most its fair share, ``ceil(partitions /
members)``, where the members are the processes with a live lease (each holds a
membership lease of its own, so that one that holds nothing yet is counted). A
process above its share hands the extra partitions over (stops them and releases
their leases); one below it takes free ones. When a member dies, its partitions go to
the others within ``ttl``: as its leases become free, and as its membership lease
expires, which raises everyone's share.

Safety does not rest on time. Every commit a worker makes names the epoch of its
lease, and the store refuses it (:class:`LeaseLost`) once another process has taken
the lease over: a resumed old holder cannot write. Time only decides when a holder
stops by itself: when it could not renew for ``ttl`` seconds, counted from the start
of its last successful renewal, so before the store lets anyone else in.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import socket
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

import trio
from trio_util import AsyncValue

from ._clock import WallClock
from ._errors import LeaseLost, PetrockError
from ._logging import get_logger
from .stores import LeaseRecord, Store

__all__ = ["LeaseKeeper"]

# The membership leases: one per process that serves partitioned workers.
_MEMBER = "petrock:member:"

_log = get_logger("petrock_trio")


class LeaseKeeper:
    """Holds this process's leases; cancels a worker's activity when its lease is lost."""

    def __init__(
        self,
        store: Store,
        clock: WallClock,
        wanted: Iterable[str] | Mapping[str, tuple[str, int]],
        *,
        ttl: float,
    ) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.interval = ttl / 5
        # Unique per run: a restarted process never mistakes its predecessor's lease
        # for its own.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Partitioned workers: worker -> its partitions' lease names, by partition.
        self.groups: dict[str, list[str]] = {}
        if isinstance(wanted, Mapping):
            for name, (worker, _) in wanted.items():
                self.groups.setdefault(worker, []).append(name)
            self.groups = {w: names for w, names in self.groups.items() if len(names) > 1}
        self.member = f"{_MEMBER}{self.holder}" if self.groups else None
        self.wanted = frozenset(wanted) | ({self.member} if self.member else set())
        # Every lease of the log as last read (partitioned workers only): who holds what.
        self.records: list[LeaseRecord] = []
        self.handoffs = 0
        self._member_gone = False
        # Below its share while another process holds more than its own: that one hands
        # the extra over at its next round, so this one looks again soon after.
        self._hungry = False
        self.held: dict[str, int] = {}
        self.failures = 0
        self.takeovers = 0
        self.losses = 0
        self._changes: AsyncValue[int] = AsyncValue(0)
        self._activities: dict[str, trio.CancelScope] = {}
        self._valid_until = -float("inf")

    def __repr__(self) -> str:
        return f"<LeaseKeeper {self.holder!r} held={sorted(self.held)}>"

    def fence(self, worker: str) -> dict[str, int]:
        """The lease a commit for ``worker`` must still hold; LeaseLost if there is none."""
        epoch = self.held.get(worker)
        if epoch is None:
            raise LeaseLost((worker,))
        return {worker: epoch}

    def fences(self, workers: Iterable[str]) -> dict[str, int]:
        """The leases held among ``workers`` (positions of the others are not ours to write)."""
        return {w: self.held[w] for w in workers if w in self.held}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew and take leases every ``interval`` seconds; never returns unless cancelled.

        The first round runs before ``started``, so workers know at once which of them
        this process runs.
        """
        while True:
            started = trio.current_time()
            # A round that hangs (a lost connection) is cut off when the leases would
            # expire: from then on they are no longer this process's to use.
            deadline = self._valid_until if self.held else started + self.ttl
            with trio.move_on_at(deadline):
                await self._round(started)
            if trio.current_time() >= self._valid_until and self.held:
                _log.warning("petrock.leases_expired", workers=sorted(self.held))
                self.lose(list(self.held))
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            if self._member_gone:
                # A member died: its partitions are shared out now, not a round later.
                self._member_gone = False
                await trio.lowlevel.checkpoint()
                continue
            # Hungry, it looks five times a round: a process that joins has its share
            # about one of the holder's rounds after it appears, not two.
            await trio.sleep_until(started + self.interval / (5 if self._hungry else 1))

    async def _round(self, started: float) -> None:
        try:
            wanted: set[str] | frozenset[str] = self.wanted - self.held.keys()
            if self.groups:
                self.records = await self.store.lease_records()
                wanted, extra = self._shares(wanted, self.clock())
                if extra:
                    await self._hand_off(extra)
            held = dict(self.held)
            now_held = await self.store.leases(
                self.holder,
                held,
                sorted(wanted),
                ttl=self.ttl,
                now=self.clock(),
            )
        except PetrockError as exc:
            self.failures += 1
            _log.warning("petrock.lease_renewal_failed", error_details=repr(exc), exc_info=exc)
            return
        self._valid_until = started + self.ttl
        self.lose([w for w, epoch in held.items() if now_held.get(w) != epoch])
        dead = {w: e for w, e in now_held.items() if w.startswith(_MEMBER) and w != self.member}
        if dead:
            # Another member's lease was ours to take: that process is gone. It no longer
            # counts as a member, so the next round's shares cover its partitions.
            now_held = {w: e for w, e in now_held.items() if w not in dead}
            self._member_gone = True
            await self._release_quietly(dead)
        gained = {w: e for w, e in now_held.items() if w not in self.held}
        if gained:
            self.held.update(gained)
            self.takeovers += len(gained)
            _log.info("petrock.leases_taken", workers=sorted(gained), holder=self.holder)
            self._changes.value += 1

    def _shares(self, wanted: set[str] | frozenset[str], now: float) -> tuple[set[str], list[str]]:
        """(the leases to try to take, the held ones above this process's share)."""
        records = {r.worker: r for r in self.records}
        alive = [r for r in self.records if r.worker.startswith(_MEMBER) and r.expires_at > now]
        members = {r.holder for r in alive} | {self.holder}
        grouped = {name for names in self.groups.values() for name in names}
        take = {name for name in wanted if name not in grouped}
        # Asking for the others' membership leases takes only those of processes that are
        # gone (PostgreSQL frees a lease whose holder's connection ended): a kill -9 is
        # noticed at the next round instead of when its membership expires.
        take.update(r.worker for r in alive if r.worker != self.member)
        extra: list[str] = []
        self._hungry = False
        for names in self.groups.values():
            share = math.ceil(len(names) / len(members))
            mine = [n for n in names if n in self.held]
            held_by = Counter(
                records[n].holder for n in names if n in records and records[n].expires_at > now
            )
            if len(mine) < share and any(
                count > share for holder, count in held_by.items() if holder != self.holder
            ):
                self._hungry = True
            if len(mine) > share:
                extra.extend(mine[share:])
                continue
            need = share - len(mine)
            free = [
                n
                for n in names
                if n not in self.held and (n not in records or records[n].expires_at <= now)
            ]
            take.update(free[:need])
            if len(free) < need:
                # Leases that look held may be free already (a holder whose PostgreSQL
                # connection is gone): asking costs nothing, and takes only those.
                others = [n for n in names if n not in self.held and n not in free]
                # Those of a holder that is no longer a member first (it died): they are
                # the ones that can be free.
                orphans = [n for n in others if records[n].holder not in members]
                rest = [n for n in others if n not in orphans]
                wanted_more = need - len(free)
                picked = orphans[:wanted_more]
                picked += random.sample(rest, min(wanted_more - len(picked), len(rest)))
                take.update(picked)
        return take, extra

    async def _release_quietly(self, held: dict[str, int]) -> None:
        try:
            await self.store.release_leases(held)
        except PetrockError as exc:
            _log.warning("petrock.lease_release_failed", error_details=repr(exc), exc_info=exc)

    async def _hand_off(self, names: list[str]) -> None:
        """Stop these partitions here and free their leases for the other members."""
        epochs = {n: self.held[n] for n in names}
        self.handoffs += len(names)
        _log.info("petrock.leases_handed_off", workers=sorted(names), holder=self.holder)
        self.lose(names)
        await self.store.release_leases(epochs)

    def lose(self, workers: Iterable[str]) -> None:
        """Forget these leases and stop whatever their workers are doing."""
        lost = [w for w in workers if self.held.pop(w, None) is not None]
        if not lost:
            return
        self.losses += len(lost)
        _log.warning("petrock.leases_lost", workers=sorted(lost), holder=self.holder)
        for worker in lost:
            scope = self._activities.get(worker)
            if scope is not None:
                scope.cancel()
        self._changes.value += 1

    def holds(self, worker: str) -> bool:
        """Whether this process holds ``worker``'s lease and its term has not run out
        by this process's own clock (a takeover comes only after it has)."""
        return worker in self.held and trio.current_time() < self._valid_until

    async def ensure(self, worker: str) -> None:
        """Return only while this process may act for ``worker``.

        Checked before every handler and periodic run: a process that was frozen past
        its leases' expiry must not start work when it resumes, even before its
        renewal task has run and noticed. Otherwise the worker's activity is cancelled.
        """
        # The checkpoint first: whatever happens at it (a renewal failing, a takeover
        # noticed) is seen by the check after it, right before the work starts.
        await trio.lowlevel.checkpoint()
        if self.holds(worker):
            return
        expired = trio.current_time() >= self._valid_until
        self.lose(list(self.held) if expired else [worker])
        await trio.lowlevel.checkpoint()
        raise LeaseLost((worker,))  # only outside an activity scope

    async def wait_held(self, worker: str) -> int:
        """Wait until this process holds ``worker``'s lease; return its epoch."""
        while True:
            await self._changes.wait_value(lambda _: worker in self.held)
            # Held when the waiter was woken; lost again, maybe, before it ran.
            epoch = self.held.get(worker)
            if epoch is not None:
                return epoch

    @contextlib.contextmanager
    def activity(self, worker: str) -> Iterator[trio.CancelScope]:
        """A scope for running ``worker``, cancelled if its lease is lost meanwhile."""
        with trio.CancelScope() as scope:
            self._activities[worker] = scope
            if worker not in self.held:
                scope.cancel()
            try:
                yield scope
            finally:
                del self._activities[worker]

    async def release(self) -> None:
        """Give every lease up at once (graceful shutdown), so others take over now."""
        held, self.held = dict(self.held), {}
        if held:
            try:
                await self.store.release_leases(held)
            except PetrockError as exc:
                # They expire by themselves; others wait up to ``ttl`` for them.
                _log.warning("petrock.lease_release_failed", error_details=repr(exc), exc_info=exc)

    def statistics(self) -> dict[str, object]:
        return {
            "holder": self.holder,
            "held": {w: e for w, e in sorted(self.held.items()) if w != self.member},
            "standby": sorted(self.wanted - self.held.keys() - {self.member}),
            "takeovers": self.takeovers,
            "losses": self.losses,
            "failures": self.failures,
            "handoffs": self.handoffs,
        }

    def holders(self) -> dict[str, str]:
        """Who holds each live lease, as last read (partitioned workers only)."""
        now = self.clock()
        found = {r.worker: r.holder for r in self.records if r.expires_at > now}
        found.update(dict.fromkeys(self.held, self.holder))
        return found
