"""The items summary worker written the old way: the "before" of the migration guide.

Run it:  python examples/legacy_summary_worker.py

It implements the old-style worker interface (info / start / replay / work / stop)
the way a Petrock feature did before PatternWorker: its own loop over the log, its
own position tracking and checkpointing, its own replay, its own error handling.
``features/items/workers/summary_worker.py`` is the same behaviour as a
PatternWorker; ``features/items/tests/test_equivalence.py`` checks that both emit the same
commands and leave the same items behind.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
import trio

import petrock_trio as pt
from features.items import (
    CreateItem,
    DeleteItem,
    FailSummaryGeneration,
    RequestSummaryGeneration,
    SetGeneratedSummary,
    UpdateItem,
)
from features.items.summarizer import Summarizer
from petrock_trio.stores import DeadLetterRecord

log = structlog.get_logger("legacy_summary_worker")

MAX_AGE = timedelta(hours=24)
PAGE = 100
HANDLER_TIMEOUT = 5.0
WORK_TIMEOUT = 30.0
MAX_ATTEMPTS = 8
FAILURE_THRESHOLD = 3  # consecutive summariser failures before backing off
COOL_DOWN = 10.0  # seconds to leave the summariser alone after that
RESUBMIT_AFTER = 120.0  # a result not seen by then is assumed lost


class LegacySummaryWorker:
    """Summarises items; every piece of infrastructure is written out by hand."""

    def __init__(self, summarizer: Summarizer, name: str = "items-summaries") -> None:
        self.name = name
        self.summarizer = summarizer
        self.app: pt.App | None = None
        self.last_processed_id = 0
        self.saved_position = 0
        self.contents: dict[str, str] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.submitted: dict[str, float] = {}
        self.dead_letter_ids: set[int] = set()
        # Retry bookkeeping for the message at the head of the queue.
        self.attempts = 0
        self.retry_at = 0.0
        # A hand-rolled circuit breaker around the summariser.
        self.consecutive_failures = 0
        self.summarizer_open_until = 0.0

    def info(self) -> pt.WorkerInfo:
        return pt.WorkerInfo(self.name, "Generates summaries of item content (old style)")

    async def start(self, app: pt.App) -> None:
        self.app = app
        self.contents.clear()
        self.pending.clear()
        self.submitted.clear()
        self.last_processed_id = 0
        positions = await app.log.store.positions()
        self.saved_position = positions.get(self.name, 0)
        # Messages given up on are not replayed: they never took effect.
        letters = await app.log.store.dead_letters(self.name)
        self.dead_letter_ids = {letter.message_id for letter in letters}
        log.info("worker starting", worker=self.name, saved_position=self.saved_position)

    async def replay(self) -> None:
        """Rebuild state from the log up to the saved position, with no side effects."""
        assert self.app is not None
        while self.last_processed_id < self.saved_position:
            try:
                messages = await self.app.log.read_after(self.last_processed_id, PAGE)
            except pt.PetrockError as exc:
                log.error("replay read failed", worker=self.name, error=repr(exc))
                return
            if not messages:
                break
            for message in messages:
                if message.id > self.saved_position:
                    break
                if message.id in self.dead_letter_ids:
                    self.last_processed_id = message.id
                    continue
                try:
                    await self.handle(message, replay=True)
                except Exception as exc:  # noqa: BLE001 - the old way: log and go on
                    log.error(
                        "replay failed", worker=self.name, message_id=message.id, error=repr(exc)
                    )
                self.last_processed_id = message.id
        log.info("replay done", worker=self.name, position=self.last_processed_id)

    async def work(self) -> None:
        """One tick: handle every new message, checkpoint, then process pending summaries."""
        assert self.app is not None
        if trio.current_time() < self.retry_at:
            return  # backing off after a failed message
        while True:
            try:
                messages = await self.app.log.read_after(self.last_processed_id, PAGE)
            except pt.PetrockError as exc:
                log.error("read failed", worker=self.name, error=repr(exc))
                return
            if not messages:
                break
            for message in messages:
                try:
                    with trio.fail_after(HANDLER_TIMEOUT):
                        await self.handle(message, replay=False)
                except Exception as exc:  # noqa: BLE001 - retried on a later tick
                    self.attempts += 1
                    log.error(
                        "handler failed",
                        worker=self.name,
                        message_id=message.id,
                        attempt=self.attempts,
                        error=repr(exc),
                    )
                    if self.attempts < MAX_ATTEMPTS:
                        delay = min(2.0 ** (self.attempts - 1), 30.0)
                        self.retry_at = trio.current_time() + delay
                        return
                    await self.dead_letter(message, exc)
                self.attempts = 0
                self.last_processed_id = message.id
                await self.checkpoint()
        try:
            with trio.fail_after(WORK_TIMEOUT):
                await self.process_pending()
        except trio.TooSlowError:
            log.error("processing pending summaries timed out", worker=self.name)

    async def dead_letter(self, message: pt.Message, error: Exception) -> None:
        """Record the message as given up on, so that it is not lost."""
        assert self.app is not None
        now = self.app.clock()
        letter = DeadLetterRecord(
            self.name, message.id, message.name, repr(error), self.attempts, now, now
        )
        await self.app.log.commit(self.app.log.new_commit(dead_letters=[letter]))
        self.dead_letter_ids.add(message.id)
        log.error("gave up on message", worker=self.name, message_id=message.id)

    async def checkpoint(self) -> None:
        assert self.app is not None
        if self.last_processed_id > self.saved_position:
            await self.app.log.commit(
                self.app.log.new_commit(positions={self.name: self.last_processed_id})
            )
            self.saved_position = self.last_processed_id

    async def stop(self) -> None:
        log.info("worker stopping", worker=self.name, position=self.last_processed_id)

    async def handle(self, message: pt.Message, *, replay: bool) -> None:
        cmd = message.command
        if isinstance(cmd, CreateItem):
            self.contents[cmd.name] = cmd.content
            if not replay:
                request = RequestSummaryGeneration(cmd.name, f"{self.name}:{message.id}")
                await self.execute(request)
        elif isinstance(cmd, UpdateItem):
            self.contents[cmd.name] = cmd.content
        elif isinstance(cmd, DeleteItem):
            self.contents.pop(cmd.name, None)
            for request_id in [r for r, p in self.pending.items() if p["item_id"] == cmd.name]:
                del self.pending[request_id]
        elif isinstance(cmd, RequestSummaryGeneration):
            if cmd.item_id in self.contents:
                self.pending[cmd.request_id] = {
                    "request_id": cmd.request_id,
                    "item_id": cmd.item_id,
                    "content": self.contents[cmd.item_id],
                    "requested_at": message.timestamp.timestamp(),
                }
        elif isinstance(cmd, SetGeneratedSummary | FailSummaryGeneration):
            self.pending.pop(cmd.request_id, None)
            self.submitted.pop(cmd.request_id, None)

    async def execute(self, cmd: object) -> bool:
        assert self.app is not None
        try:
            await self.app.execute(cmd)
        except pt.ValidationError as exc:
            log.warning("command refused", worker=self.name, error=repr(exc))
            return False
        return True

    async def process_pending(self) -> None:
        assert self.app is not None
        if trio.current_time() < self.summarizer_open_until:
            log.warning("summarizer unavailable, skipping", worker=self.name)
            return
        now = self.app.clock()
        for pending in list(self.pending.values()):
            if now - self.submitted.get(pending["request_id"], 0) <= RESUBMIT_AFTER:
                continue
            if now - pending["requested_at"] > MAX_AGE.total_seconds():
                result: object = FailSummaryGeneration(
                    pending["item_id"], pending["request_id"], "timeout"
                )
            else:
                try:
                    summary = await self.summarizer.summarize(
                        pending["content"], pending["request_id"]
                    )
                except Exception as exc:  # noqa: BLE001 - counted by the breaker below
                    log.error("summarizer failed", worker=self.name, error=repr(exc))
                    self.consecutive_failures += 1
                    if self.consecutive_failures >= FAILURE_THRESHOLD:
                        self.summarizer_open_until = trio.current_time() + COOL_DOWN
                        return
                    continue
                self.consecutive_failures = 0
                result = SetGeneratedSummary(pending["item_id"], pending["request_id"], summary)
            if await self.execute(result):
                self.submitted[pending["request_id"]] = now


async def main() -> None:
    """Run the legacy worker on the items feature with the local summariser."""
    from features.items import ItemsFeature, SummarizerService, serve_summarizer  # noqa: PLC0415
    from features.items.summarizer import HttpSummarizer  # noqa: PLC0415

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_summarizer, SummarizerService())
        app = pt.App(database=":memory:")
        feature = ItemsFeature()
        feature.register_commands(app)
        app.register_worker(LegacySummaryWorker(HttpSummarizer(url)), tick=0.2)
        await nursery.start(pt.serve, app)
        await app.execute(CreateItem("legacy", content="Old workers poll. They track ids by hand."))
        with trio.fail_after(10):
            while (item := feature.state.get("legacy")) is None or item.summary_status != "ready":  # noqa: ASYNC110 - the old way polls
                await trio.sleep(0.1)
        print(f"summary: {item.summary}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
