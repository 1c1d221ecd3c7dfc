"""The summary worker: requests a summary for each item and asks the summariser for it,
for many items at once (one partition per group of items, the service's bulkhead in front)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import TypeAlias

import petrock_trio as pt

from ..commands import (
    CreateItem,
    FailSummaryGeneration,
    RequestSummaryGeneration,
    SetGeneratedSummary,
)
from ..state import ItemsState
from ..summarizer import Summarizer

__all__ = ["MAX_AGE", "PARTITIONS", "REQUEST_TIMEOUT", "SummaryState", "new_summary_worker"]

MAX_AGE = timedelta(hours=24)
PARTITIONS = 16  # items summarised at once, at most; the service's bulkhead caps the calls
# A request's handler waits for a free place in the bulkhead, then for the call.
REQUEST_TIMEOUT = 60.0
# An open circuit waits without spending attempts: what spends them is a failure before
# the circuit opens, or a request that fails on its own. After 20 of those (about three
# minutes) it is dead-lettered, and the items behind it in its partition go on.
REQUEST_RETRY = pt.Backoff(max_delay=10.0, max_attempts=20)
# The worker keeps no state of its own: the items state has the content requested.
SummaryState: TypeAlias = None


def new_summary_worker(
    summarizer: Summarizer, service: pt.ExternalService, items: ItemsState
) -> pt.PatternWorker[SummaryState]:
    worker = pt.PatternWorker[SummaryState](
        "items-summaries",
        "Generates summaries of item content",
        services=[service],
        partitions=PARTITIONS,
        key=lambda cmd: cmd.item_id,  # the request's; a create's is its name
    )

    @worker.on(CreateItem, key=lambda cmd: cmd.name)
    async def on_create(ctx: pt.HandlerContext, cmd: CreateItem, _: None) -> None:
        with contextlib.suppress(pt.ValidationError):  # deleted meanwhile: nothing to summarise
            ctx.emit(RequestSummaryGeneration(item_id=cmd.name, request_id=ctx.idempotency_key))

    # Live only: replay skips it, since its outcome is in the log already.
    @worker.on(RequestSummaryGeneration, timeout=REQUEST_TIMEOUT, retry=REQUEST_RETRY, replay=False)
    async def on_request(ctx: pt.HandlerContext, cmd: RequestSummaryGeneration, _: None) -> None:
        content = items.requested_content.get(cmd.item_id)  # as of the request message
        # A deleted item, or one created again since, has no use for the result: the
        # command's validate would refuse it.
        if content is None or not items.awaits(cmd.item_id, cmd.request_id):
            return
        result: SetGeneratedSummary | FailSummaryGeneration
        if ctx.now() - ctx.message.timestamp > MAX_AGE:
            result = FailSummaryGeneration(cmd.item_id, cmd.request_id, "timeout")
        else:
            # Raises on failure: the engine retries, or waits while the circuit is open.
            summary = await service.call(summarizer.summarize, content, cmd.request_id)
            result = SetGeneratedSummary(cmd.item_id, cmd.request_id, summary)
        with contextlib.suppress(pt.ValidationError):  # deleted while the summariser worked
            ctx.emit(result)  # committed with this request's position: it lands once

    return worker
