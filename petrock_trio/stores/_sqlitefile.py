"""How the SQLite store notices its database file deleted or replaced under it.

An open connection keeps writing to the file it opened, even once that file is no
longer at its path: commits still succeed, and are lost with the file when the last
connection closes. So the store compares the path's inode and device with those of
the file it opened, around every write (in the writer's thread, after COMMIT too:
a commit is acknowledged only if its file is still there) and every
``interval`` seconds while it watches, writes or not.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from .._errors import StoreGone
from .._logging import get_logger

__all__ = ["FileGuard"]

_log = get_logger("petrock_trio")


class FileGuard:
    """The identity of an open database file, and whether it is still at its path."""

    def __init__(self, file: str, identity: tuple[int, int]) -> None:
        self.file = file
        self.identity = identity
        self.gone: str | None = None
        self._logged = False

    def __repr__(self) -> str:
        return f"<FileGuard {self.file!r} gone={self.gone is not None}>"

    @classmethod
    def of(cls, conn: sqlite3.Connection) -> FileGuard | None:
        """The guard of ``conn``'s main database file; None for a database in memory."""
        files = {name: file for _, name, file in conn.execute("PRAGMA database_list")}
        file = files.get("main")
        if not file:
            return None
        try:
            status = Path(file).stat()
        except OSError:
            return None
        return cls(file, (status.st_dev, status.st_ino))

    def check(self) -> None:
        """Raise :class:`StoreGone` if the file was deleted or replaced (from any thread)."""
        if self.gone is None:
            self.gone = self._problem()
        if self.gone is not None:
            raise StoreGone(self.gone)

    def _problem(self) -> str | None:
        try:
            status = Path(self.file).stat()
        except FileNotFoundError:
            return f"database file {self.file!r} was deleted"
        except OSError:
            return None  # cannot tell (permissions): no proof that it is gone
        if (status.st_dev, status.st_ino) != self.identity:
            return f"database file {self.file!r} was replaced by another file"
        return None

    def noticed(self) -> None:
        """Log, once, at error level, that the file is gone (on the Trio thread)."""
        if self.gone is not None and not self._logged:
            self._logged = True
            _log.error("petrock.store_gone", database=self.file, reason=self.gone)

    async def watch(self, interval: float) -> None:
        """Look every ``interval`` seconds until the file is gone; then return."""
        while True:
            await trio.sleep(interval)
            try:
                self.check()  # a stat: a look at the directory entry, inline
            except StoreGone:
                self.noticed()
                return
