"""The items feature: items whose content a worker summarises through an external service.

Register it with ``app.register_feature(ItemsFeature(summarizer=...))``; the module
itself is also a feature (``app.register_feature(features.items)``) that uses a local
summariser at ``DEFAULT_SUMMARIZER_URL``.
"""

from __future__ import annotations

from typing import Any

import attrs

import petrock_trio as pt

from .commands import (
    CreateItem,
    DeleteItem,
    FailSummaryGeneration,
    RequestSummaryGeneration,
    SetGeneratedSummary,
    UpdateItem,
)
from .state import Item, ItemPage, ItemsState
from .summarizer import HttpSummarizer, Summarizer, SummarizerService, serve_summarizer
from .workers import SummaryState, new_summary_worker

__all__ = [
    "DEFAULT_SUMMARIZER_URL",
    "CreateItem",
    "DeleteItem",
    "FailSummaryGeneration",
    "HttpSummarizer",
    "Item",
    "ItemPage",
    "ItemsFeature",
    "ItemsState",
    "RequestSummaryGeneration",
    "SetGeneratedSummary",
    "SummarizerService",
    "SummaryState",
    "UpdateItem",
    "register",
    "serve_summarizer",
]

DEFAULT_SUMMARIZER_URL = "http://127.0.0.1:8765/summarize"


@attrs.define
class ItemsFeature:
    """The feature's parts, built for one app."""

    summarizer: Summarizer = attrs.field(factory=lambda: HttpSummarizer(DEFAULT_SUMMARIZER_URL))
    # The breaker, and the bulkhead that lets 8 calls at a time through: the worker's 16
    # partitions ask at once. A call is cut off after 20 s, so a request waits at most one
    # call for its place, then its own, within its route's REQUEST_TIMEOUT (60 s).
    service: pt.ExternalService = attrs.field(
        factory=lambda: pt.ExternalService(
            "summarizer", failure_threshold=3, reset_timeout=10.0, timeout=20.0, max_concurrent=8
        )
    )
    state: ItemsState = attrs.Factory(ItemsState)
    worker: pt.PatternWorker[SummaryState] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.worker = new_summary_worker(self.summarizer, self.service, self.state)

    def register(self, app: pt.App) -> None:
        """Register the commands, the items state and the summary worker."""
        self.register_commands(app)
        app.register_worker(self.worker)

    def register_commands(self, app: pt.App) -> None:
        """Register the commands and the items state only (to pair them with another worker)."""
        s = self.state
        app.register_command(CreateItem, ItemsState.apply_create, state=s)
        app.register_command(UpdateItem, ItemsState.apply_update, state=s)
        app.register_command(DeleteItem, ItemsState.apply_delete, state=s)
        app.register_command(RequestSummaryGeneration, ItemsState.apply_request, state=s)
        app.register_command(SetGeneratedSummary, ItemsState.apply_summary, state=s)
        app.register_command(FailSummaryGeneration, ItemsState.apply_failure, state=s)


def register(app: pt.App, **options: Any) -> ItemsFeature:
    feature = ItemsFeature(**options)
    feature.register(app)
    return feature
