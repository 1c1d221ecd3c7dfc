"""How the SQLite store learns that another process committed.

``PRAGMA data_version`` changes when any other connection commits, and costs a few
microseconds (a read of the file's shared memory, not of the table). When to look:
on Linux, when the write-ahead log file is written (inotify), so an idle app never
wakes up; elsewhere, a poll that slows down to once a second while nothing changes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Final

import trio

from .._logging import get_logger
from ._sqlitesql import HEAD

__all__ = ["wal_changes", "watch_commits"]

_log = get_logger("petrock_trio")

# The slowest a follower polls for other processes' appends where inotify is missing.
_MAX_POLL_INTERVAL: Final = 1.0
# After a write to the log, when to look for its commit (seconds after the previous
# look, or at the next write): about the time of a sync, in all 0.1 s.
_LOOKS_AFTER_A_WRITE: Final = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.04)


async def watch_commits(
    conn: sqlite3.Connection, path: str, interval: float, publish: Callable[[int], None]
) -> None:
    """Publish the head whenever another connection commits; never returns.

    ``conn`` is the watch's own connection, used inline; ``interval`` is the first
    poll interval where inotify is missing.
    """
    with wal_changes(path) as changes:
        version = _data_version(conn)

        def look() -> bool:
            nonlocal version
            try:
                now = _data_version(conn)
                if now == version:
                    return False
                version = now
                (head,) = conn.execute(HEAD).fetchone()
                publish(int(head))
            except sqlite3.Error as exc:
                # The pump's own reads report a failing database.
                _log.warning("petrock.sqlite_watch_failed", error=str(exc))
            return True

        if changes is None:
            await _poll(look, interval)
        else:
            await _follow(look, changes)


class _Changes:
    """Readable when a file was written: inotify's descriptor, waited on by Trio."""

    def __init__(self, notify: Any) -> None:
        self.notify = notify

    async def wait(self) -> None:
        await trio.lowlevel.wait_readable(self.notify.fileno())
        self.notify.read(timeout=0)  # drain: one look covers every write so far


@contextlib.contextmanager
def wal_changes(path: str) -> Iterator[_Changes | None]:
    """Writes to ``path``'s write-ahead log, where inotify exists; None elsewhere."""
    try:
        import inotify_simple  # noqa: PLC0415 - Linux only

        notify = inotify_simple.INotify()
    except (ImportError, OSError):
        yield None
        return
    try:
        changes: _Changes | None = _Changes(notify)
        try:
            notify.add_watch(path + "-wal", inotify_simple.flags.MODIFY)
        except OSError:
            changes = None  # no write-ahead log file to watch (another journal mode)
        yield changes
    finally:
        # Wake any task waiting on the descriptor before its number can be reused.
        trio.lowlevel.notify_closing(notify.fileno())
        notify.close()


async def _follow(look: Callable[[], bool], changes: _Changes) -> None:
    """Look whenever the write-ahead log is written, until the commit shows."""
    while True:
        # The safety look covers a log file replaced behind the watch.
        with trio.move_on_after(_MAX_POLL_INTERVAL * 5) as idle:
            await changes.wait()
        if idle.cancelled_caught:
            look()
            continue
        # The log is written before the commit shows (the writer syncs in between):
        # look again, sooner first, until it does; another write starts over.
        attempt = 0
        while attempt < len(_LOOKS_AFTER_A_WRITE):
            with trio.move_on_after(_LOOKS_AFTER_A_WRITE[attempt]) as waited:
                await changes.wait()
            if look():
                break
            attempt = attempt + 1 if waited.cancelled_caught else 0


async def _poll(look: Callable[[], bool], interval: float) -> None:
    """Look every ``interval`` seconds after a change, slowing down to once a second."""
    idle = interval
    while True:
        await trio.sleep(idle)
        idle = min(idle * 2, _MAX_POLL_INTERVAL) if not look() else interval


def _data_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)
