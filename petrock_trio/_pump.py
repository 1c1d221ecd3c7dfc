"""The log pump: one task reads each new message once and fans pages out to feeds.

The rows this process appends need no read: its log hands each commit's rows to the
pump before it publishes the new head (``LogPump.handed``), and the pump makes its
next page of them when they follow its position with no id between. Otherwise (rows
of another process came first, or the pump is behind) it reads from the store as
always, and the rows handed are dropped once it is past them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from typing import Final

import attrs
import trio
from trio_util import AsyncValue

from ._errors import StoreError
from ._log import MessageLog
from ._logging import get_logger
from ._message import Page, Row
from ._watermark import Watermark

__all__ = ["Feed", "LogPump", "PumpStatistics"]

_log = get_logger("petrock_trio.pump")

# Commits whose rows the pump keeps at hand until a page takes them; older ones are
# forgotten (a pump that idles with no feed attached reads them when it needs them).
HANDED: Final = 1024


@attrs.frozen
class PumpStatistics:
    """What the pump has done: each message should be read once, whatever the fan-out."""

    position: int
    pages_read: int
    rows_read: int
    # Pages made of the rows this process appended, handed over by its log (no read).
    pages_handed: int
    rows_handed: int
    read_errors: int
    feeds: int
    attached: int


class Feed:
    """One subscriber's view of the log, in id order, with no gaps and no repeats.

    While attached, the pump sends it every page that routes one of its names (one
    channel operation per page) and moves its position past pages that route nothing.
    When its channel is full the pump detaches it rather than wait: it then reads what
    it missed from the pump's recent pages or from the store, and re-attaches once it
    reaches the pump. ``position`` is the last id this subscriber has fully handled.
    """

    def __init__(
        self, pump: LogPump, name: str, routes: Collection[str] | None, position: int, capacity: int
    ) -> None:
        self.pump = pump
        self.name = name
        self.routes: frozenset[str] | None = None if routes is None else frozenset(routes)
        self.position = Watermark(position)
        self.attached = False
        self.closed = False
        self.detaches = 0
        self._send, self._receive = trio.open_memory_channel[Page](capacity)
        self._idle = False
        self._skip_to = position

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Feed {self.name!r} {state} position={self.position.value}>"

    @property
    def idle(self) -> bool:
        """Whether its subscriber waits for a page with nothing in hand."""
        return self._idle

    # --- called by the pump, synchronously -------------------------------------------

    def _offer(self, page: Page) -> bool:
        """Deliver ``page`` if it routes anything here; False when the feed must detach."""
        if not page.routes_any(self.routes):
            if self._idle:
                self.advance(page.last)
            else:
                self._skip_to = max(self._skip_to, page.last)
            return True
        try:
            self._send.send_nowait(page)
        except trio.WouldBlock:
            return False
        # The subscriber has a page in hand now, even before it runs: later pages that
        # route nothing must wait for it instead of moving the position past it.
        self._idle = False
        self._skip_to = max(self._skip_to, page.last)
        return True

    # --- called by the subscriber -----------------------------------------------------

    def advance(self, position: int) -> None:
        self.position.advance(position)

    def queued(self, after: int) -> Page | None:
        """The page after ``after`` if it is at hand, with no wait and no read: next in
        the channel, or, detached and the channel empty, among the pump's recent pages.
        (``after`` may be past ``position``: the subscriber has more in hand.)"""
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return None
        return None if self.attached else self.pump.recent_page(after)

    async def next_page(self) -> Page:
        """The next page to handle; routed rows after ``position`` are all that matter.

        Raises ``trio.EndOfChannel`` once the feed is closed and what it held is handled.
        """
        while True:
            try:
                page = self._receive.receive_nowait()
            except trio.WouldBlock:
                if self.closed:
                    raise trio.EndOfChannel from None
            else:
                # A checkpoint per page, like every async function of the engine: a
                # long catch-up with handlers that never wait must not starve others.
                await trio.lowlevel.checkpoint()
                return page
            # Channel empty and nothing in hand: every page sent has been handled, so
            # pages skipped since then are done too.
            self.advance(self._skip_to)
            if self.attached:
                self._idle = True
                try:
                    return await self._receive.receive()
                finally:
                    self._idle = False
            if self.pump.try_attach(self):
                continue
            recent = self.pump.recent_page(self.position.value)
            if recent is None:
                return await self.pump.read_page(self.position.value, self.routes)
            await trio.lowlevel.checkpoint()
            return recent

    def rewind(self) -> None:
        """Forget pages received but not handled; read again from ``position``.

        After the subscriber's loop failed in the middle of a page, the rest of that
        page (and anything queued behind it) must be handled again, not skipped.
        """
        self.pump.detach(self)
        while True:
            try:
                self._receive.receive_nowait()
            except trio.WouldBlock:
                break
        self._skip_to = self.position.value

    def close(self) -> None:
        """No more pages: a subscriber waiting in :meth:`next_page` gets EndOfChannel."""
        self.closed = True
        self.pump.detach(self)
        self.pump.forget(self)
        self._send.close()


class LogPump:
    """Reads each new message once, in pages, and offers every page to attached feeds.

    Never blocks on a slow feed; idles while no feed is attached, since nobody would
    use what it read.
    """

    def __init__(
        self,
        log: MessageLog,
        *,
        page_size: int = 1000,
        recent_pages: int = 32,
        on_page: Callable[[], None] = lambda: None,
    ) -> None:
        self.log = log
        # Feeds that route nothing in a page move on without their subscriber running;
        # this tells whoever persists positions that they moved.
        self.on_page = on_page
        self.page_size = page_size
        self.position: AsyncValue[int] = AsyncValue(0)
        self._feeds: list[Feed] = []
        self._attached: dict[Feed, None] = {}
        self._any_attached: AsyncValue[int] = AsyncValue(0)
        self._recent: deque[Page] = deque(maxlen=recent_pages)
        # Pages read for feeds behind the pump, with the names they were read for, and
        # the reads under way: feeds catching up together (the partitions of a worker
        # that start once their leases are held) share one read and one Page, and with
        # it the Page's decode and partition caches.
        self._caught_up: deque[tuple[frozenset[str] | None, Page]] = deque(maxlen=recent_pages)
        self._reading: list[tuple[int, frozenset[str] | None, trio.Event]] = []
        # The rows of this process's own commits, oldest first, until a page takes them.
        self._handed: deque[list[Row]] = deque(maxlen=HANDED)
        self.pages_read = 0
        self.rows_read = 0
        self.pages_handed = 0
        self.rows_handed = 0
        self.read_errors = 0

    def __repr__(self) -> str:
        return (
            f"<LogPump position={self.position.value} feeds={len(self._feeds)} "
            f"attached={len(self._attached)}>"
        )

    def statistics(self) -> PumpStatistics:
        return PumpStatistics(
            position=self.position.value,
            pages_read=self.pages_read,
            rows_read=self.rows_read,
            pages_handed=self.pages_handed,
            rows_handed=self.rows_handed,
            read_errors=self.read_errors,
            feeds=len(self._feeds),
            attached=len(self._attached),
        )

    def feed(
        self, name: str, routes: Collection[str] | None, position: int, capacity: int = 16
    ) -> Feed:
        """A new feed starting after ``position``; call before :meth:`run` starts."""
        feed = Feed(self, name, routes, position, capacity)
        self._feeds.append(feed)
        return feed

    def try_attach(self, feed: Feed) -> bool:
        if feed.closed or feed.position.value < self.position.value:
            return False
        feed.attached = True
        self._attached[feed] = None
        self._any_attached.value = len(self._attached)
        return True

    def forget(self, feed: Feed) -> None:
        """Drop a closed feed (a worker another process took over, or a stopped one)."""
        if feed in self._feeds:
            self._feeds.remove(feed)

    def detach(self, feed: Feed) -> None:
        if feed.attached:
            feed.attached = False
            feed.detaches += 1
            self._attached.pop(feed, None)
            self._any_attached.value = len(self._attached)

    def recent_page(self, after: int) -> Page | None:
        for page in self._recent:
            if page.after <= after < page.last:
                return page
        return None

    async def read_page(self, after: int, names: Collection[str] | None = None) -> Page:
        """A page for a detached feed at ``after``, up to the pump's position: one read
        already made for feeds at the same place, or a read from the store."""
        wanted = None if names is None else frozenset(names)
        while True:
            page = self._shared_page(after, wanted)
            if page is not None:
                await trio.lowlevel.checkpoint()
                return page
            under_way = [e for a, n, e in self._reading if a <= after and _covers(n, wanted)]
            if not under_way:
                break
            # Whether it succeeds, fails or is cancelled, look again: the cancel of the
            # task that reads reaches only that task, and another one reads instead.
            await under_way[0].wait()
        entry = (after, wanted, trio.Event())
        self._reading.append(entry)
        try:
            page = await self._read(after, self.position.value, names)
            self._caught_up.append((wanted, page))
        finally:
            self._reading.remove(entry)
            entry[2].set()
        return page

    def _shared_page(self, after: int, wanted: frozenset[str] | None) -> Page | None:
        for names, page in self._caught_up:
            if page.after <= after < page.last and _covers(names, wanted):
                return page
        return None

    async def _read(self, after: int, upto: int, names: Collection[str] | None = None) -> Page:
        rows = await self.log.store.read_after(
            after, self.page_size, upto=upto, names=None if names is None else sorted(names)
        )
        # A short page read everything up to ``upto``, gaps in the ids included.
        last = rows[-1].id if len(rows) == self.page_size else upto
        return Page(after, last, rows)

    def handed(self, rows: list[Row]) -> None:
        """The rows one commit of this process just appended, consecutive ids, told
        before the log's head moves past them (``MessageLog.row_listeners``)."""
        self._handed.append(rows)

    def _handed_page(self, position: int) -> Page | None:
        """The next page made of rows handed over, if they follow ``position`` with no id
        between (nothing another process appended can be there: ids are unique), up to
        ``page_size`` rows; None when the store must be read."""
        handed = self._handed
        taken: list[Row] = []
        last = position
        while handed and len(taken) < self.page_size:
            rows = handed[0]
            start = last + 1 - rows[0].id  # the index of the row after ``last``
            if start >= len(rows):
                handed.popleft()  # read from the store already
                continue
            if start < 0 or rows[-1].id - rows[0].id != len(rows) - 1:
                break  # ids between (another process's rows, or a gap): read them
            end = start + self.page_size - len(taken)
            taken += rows[start:end]
            last = taken[-1].id
            if end >= len(rows):
                handed.popleft()
        return Page(position, last, taken) if taken else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the log; never returns unless cancelled."""
        start = min((f.position.value for f in self._feeds), default=self.log.head.value)
        self.position.value = start
        for feed in self._feeds:
            self.try_attach(feed)
        self.log.row_listeners.append(self.handed)
        try:
            task_status.started()
            await self._follow()
        finally:
            self.log.row_listeners.remove(self.handed)
            self._handed.clear()

    async def _follow(self) -> None:
        head = self.log.head
        waited = -1  # the position at which the pump last waited for its own rows
        while True:
            position = self.position.value
            if head.value <= position:
                await head.wait_value(lambda h, p=position: h > p)
            if not self._attached:
                await self._any_attached.wait_value(lambda n: n > 0)
                continue
            page = self._handed_page(position)
            appending = self.log.appending
            if page is None and appending is not None and waited < position:
                # The head may have moved for the rows this process is writing (a watch
                # sees them when any connection does): they come without a read. Once
                # a position: then another's rows are there, or nobody's, to read.
                waited = position
                await appending.wait()
                continue
            if page is not None:
                await trio.lowlevel.checkpoint()  # as a read would be
                self.pages_handed += 1
                self.rows_handed += len(page.rows)
            else:
                try:
                    page = await self._read(position, head.value)
                except StoreError as exc:
                    # A failing database must not take the app down: every feed waits,
                    # nothing is skipped, and reading resumes where it stopped.
                    self.read_errors += 1
                    delay = min(2.0 ** min(self.read_errors - 1, 5), 30.0)
                    _log.error(
                        "petrock.store_read_failed",
                        error_details=repr(exc),
                        retry_in=delay,
                        exc_info=exc,
                    )
                    await trio.sleep(delay)
                    continue
                self.read_errors = 0
                self.pages_read += 1
                self.rows_read += len(page.rows)
            self._recent.append(page)
            for feed in list(self._attached):
                if not feed._offer(page):  # noqa: SLF001 - the pump and its feeds are one unit
                    self.detach(feed)
            self.position.value = page.last
            self.on_page()


def _covers(read_for: frozenset[str] | None, wanted: frozenset[str] | None) -> bool:
    """Whether a page read for the names ``read_for`` holds every row ``wanted`` routes."""
    return read_for is None or (wanted is not None and wanted <= read_for)
