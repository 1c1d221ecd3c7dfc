"""Partitions: which partition of a worker a message belongs to, and what is done.

A worker declared with ``partitions=N`` is served as N runs, one per partition, each
with its own position, retry state, state object and lease. Partition ``i`` handles
the messages whose key hashes to ``i``: ``stable_hash(key(cmd)) % N``. Every
partition reads every routed message (the pump reads each page once for all of them)
and only moves its position past the others', so for each key the messages are
handled in log order by one partition at a time.

Positions are stored under one name per partition, ``worker#i/N`` (``worker`` alone
for ``N = 1``, as before partitions existed). Each stored position is a true
statement: every message of that partition's keys up to it is done. After a change
of ``N`` the old positions stay true, so a message is done when the position of the
partition that owned its key under any partitioning says so (:class:`Coverage`);
nothing is skipped and nothing handled again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._errors import ConfigurationError

__all__ = ["Coverage", "KeyFn", "partition_name", "split_name", "stable_hash"]

KeyFn = Callable[[Any], object]

_SUFFIX = re.compile(r"#(\d+)/(\d+)$")


def stable_hash(key: object) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and Python run
    (``hash()`` of a string is salted per process). Keys are strings, integers,
    bytes, or tuples of them; other types raise ``TypeError``."""
    return int.from_bytes(hashlib.blake2b(_key_bytes(key), digest_size=8).digest(), "big")


def _key_bytes(key: object) -> bytes:
    # Typed prefixes, so that 1, "1" and b"1" are different keys.
    if isinstance(key, str):
        return b"s" + key.encode()
    if isinstance(key, bool):
        raise TypeError("a partition key must be a str, int, bytes or a tuple of them, not bool")
    if isinstance(key, int):
        return b"i" + str(key).encode()
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, tuple):
        parts = [_key_bytes(part) for part in key]
        return b"t" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    raise TypeError(
        f"a partition key must be a str, int, bytes or a tuple of them, not {type(key).__name__}"
    )


def partition_name(worker: str, index: int, count: int) -> str:
    """The name partition ``index`` of ``count`` is stored (and leased) under."""
    return worker if count == 1 else f"{worker}#{index}/{count}"


def split_name(name: str) -> tuple[str, int, int]:
    """(worker, partition, partition count) of a stored name."""
    match = _SUFFIX.search(name)
    if match is None:
        return name, 0, 1
    return name[: match.start()], int(match[1]), int(match[2])


def check_worker_name(name: str) -> None:
    if _SUFFIX.search(name):
        raise ConfigurationError(
            f"worker name {name!r} ends like a partition's name (#i/N); choose another"
        )


@attrs.frozen
class Coverage:
    """What the stored positions say is done for one partition of a worker.

    Everything up to ``low`` is done for every key of the partition, nothing after
    ``high`` is; in between, :meth:`done` asks the positions of every partitioning
    the worker was served with.
    """

    low: int
    high: int
    # (partition count, positions by partition) of each partitioning that left positions.
    generations: tuple[tuple[int, tuple[int, ...]], ...]

    @classmethod
    def of(cls, worker: str, index: int, count: int, saved: Mapping[str, int]) -> Coverage:
        by_count: dict[int, dict[int, int]] = {}
        for name, position in saved.items():
            owner, part, parts = split_name(name)
            if owner == worker and part < parts:
                by_count.setdefault(parts, {})[part] = position
        own = by_count.get(count, {}).get(index, 0)
        generations = tuple(
            (parts, tuple(positions.get(i, 0) for i in range(parts)))
            for parts, positions in sorted(by_count.items())
        )
        low = max([own, *(min(p) for _, p in generations)])
        high = max([own, *(max(p) for _, p in generations)])
        return cls(low, high, generations)

    def done(self, message_id: int, key_hash: int) -> bool:
        """Whether the message ``message_id`` with key hash ``key_hash`` is done."""
        if message_id <= self.low:
            return True
        if message_id > self.high:
            return False
        return any(message_id <= p[key_hash % n] for n, p in self.generations)
