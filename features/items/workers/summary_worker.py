"""The summary worker: requests a summary for each item and fills it in when ready."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from functools import partial

import attrs

import petrock_trio as pt

from ..commands import (
    CreateItem,
    DeleteItem,
    FailSummaryGeneration,
    RequestSummaryGeneration,
    SetGeneratedSummary,
    UpdateItem,
)
from ..summarizer import Summarizer

__all__ = ["MAX_AGE", "PendingSummary", "SummaryState", "new_summary_worker"]

MAX_AGE = timedelta(hours=24)
RESUBMIT_AFTER = 120.0  # seconds: a result not seen by then is assumed lost; ask again


@attrs.frozen
class PendingSummary:
    request_id: str
    item_id: str
    content: str
    requested_at: float  # the request message's timestamp, so replay rebuilds it exactly


@attrs.define
class SummaryState:
    contents: dict[str, str] = attrs.Factory(dict)
    pending: dict[str, PendingSummary] = attrs.Factory(dict)
    submitted: dict[str, float] = attrs.Factory(dict)  # request id -> when its result was emitted


async def on_create(ctx: pt.HandlerContext, cmd: CreateItem, state: SummaryState) -> None:
    state.contents[cmd.name] = cmd.content
    with contextlib.suppress(pt.ValidationError):  # deleted meanwhile: nothing to summarise
        ctx.emit(RequestSummaryGeneration(item_id=cmd.name, request_id=ctx.idempotency_key))


async def on_update(ctx: pt.HandlerContext, cmd: UpdateItem, state: SummaryState) -> None:
    state.contents[cmd.name] = cmd.content


async def on_delete(ctx: pt.HandlerContext, cmd: DeleteItem, state: SummaryState) -> None:
    state.contents.pop(cmd.name, None)
    for request_id in [r for r, p in state.pending.items() if p.item_id == cmd.name]:
        del state.pending[request_id]


async def on_request(
    ctx: pt.HandlerContext, cmd: RequestSummaryGeneration, state: SummaryState
) -> None:
    if (content := state.contents.get(cmd.item_id)) is not None:
        at = ctx.message.timestamp.timestamp()
        state.pending[cmd.request_id] = PendingSummary(cmd.request_id, cmd.item_id, content, at)


async def on_done(ctx: pt.HandlerContext, cmd: SetGeneratedSummary, state: SummaryState) -> None:
    state.pending.pop(cmd.request_id, None)
    state.submitted.pop(cmd.request_id, None)


async def process_pending(
    summarizer: Summarizer,
    service: pt.ExternalService,
    ctx: pt.PeriodicContext,
    state: SummaryState,
) -> None:
    now = ctx.now().timestamp()
    # A result emitted by a run that then failed never lands: after a while, ask again.
    sent = state.submitted.get
    for p in [p for p in state.pending.values() if now - sent(p.request_id, 0) > RESUBMIT_AFTER]:
        if now - p.requested_at > MAX_AGE.total_seconds():
            result: object = FailSummaryGeneration(p.item_id, p.request_id, "timeout")
        else:
            try:
                summary = await service.call(summarizer.summarize, p.content, p.request_id)
            except pt.ServiceUnavailable:
                return  # the breaker is open: try again on a later run
            except Exception as exc:  # noqa: BLE001 - logged; the breaker counts it
                ctx.log.warning("summary_failed", item_id=p.item_id, error_details=repr(exc))
                continue
            result = SetGeneratedSummary(p.item_id, p.request_id, summary)
        try:
            ctx.emit(result)
        except pt.ValidationError:
            continue  # the item was deleted; its delete will clear this request
        state.submitted[p.request_id] = now


def new_summary_worker(
    summarizer: Summarizer, service: pt.ExternalService, *, interval: float = 1.0
) -> pt.PatternWorker[SummaryState]:
    worker = pt.PatternWorker(
        "items-summaries", "Generates summaries of item content", SummaryState(), services=[service]
    )
    worker.on_command("items/create", on_create)
    worker.on_command("items/update", on_update)
    worker.on_command("items/delete", on_delete)
    worker.on_command("items/request-summary-generation", on_request)
    worker.on_command("items/set-generated-summary", on_done)
    worker.on_command("items/fail-summary-generation", on_done)
    worker.set_periodic_work(partial(process_pending, summarizer, service), interval=interval)
    return worker
