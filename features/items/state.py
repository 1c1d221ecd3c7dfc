"""Items state: rebuilt from the log by the apply functions, read through the queries."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

import petrock_trio as pt

if TYPE_CHECKING:
    from .commands import (
        CreateItem,
        DeleteItem,
        FailSummaryGeneration,
        RequestSummaryGeneration,
        SetGeneratedSummary,
        UpdateItem,
    )

__all__ = ["Item", "ItemPage", "ItemsState"]


@attrs.define
class Item:
    name: str
    description: str
    content: str
    created_at: datetime
    updated_at: datetime
    version: int = 1
    summary: str = ""
    summary_status: str = "none"  # none | pending | ready | failed
    summary_error: str = ""
    summary_request: str = ""  # the id of the latest summary request for this item

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@attrs.frozen
class ItemPage:
    items: list[Item]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@attrs.define
class ItemsState:
    """All items by name."""

    items: dict[str, Item] = attrs.Factory(dict)
    # Item name -> its content as of its latest summary request (what is summarised).
    requested_content: dict[str, str] = attrs.Factory(dict)

    # --- queries ----------------------------------------------------------------------

    def get(self, name: str) -> Item | None:
        return self.items.get(name)

    def awaits(self, name: str, request_id: str) -> bool:
        """Whether item ``name`` waits for the result of summary request ``request_id``."""
        item = self.items.get(name)
        return (
            item is not None
            and item.summary_status == "pending"
            and item.summary_request == request_id
        )

    def list(self, *, page: int = 1, page_size: int = 20, query: str = "") -> ItemPage:
        """Items by name, ``page`` (1-based) of ``page_size``, filtered by a substring of
        the name, description or content (case-insensitive)."""
        if page < 1 or not 1 <= page_size <= 1000:  # noqa: PLR2004
            raise pt.ValidationError("page must be >= 1 and page_size between 1 and 1000")
        needle = query.casefold()
        matches = [
            item
            for name, item in sorted(self.items.items())
            if not needle
            or needle in name.casefold()
            or needle in item.description.casefold()
            or needle in item.content.casefold()
        ]
        start = (page - 1) * page_size
        return ItemPage(matches[start : start + page_size], len(matches), page, page_size)

    # --- apply functions (registered with the app) -----------------------------------

    def apply_create(self, cmd: CreateItem, message: pt.Message) -> None:
        self.items[cmd.name] = Item(
            cmd.name, cmd.description, cmd.content, message.timestamp, message.timestamp
        )

    def apply_update(self, cmd: UpdateItem, message: pt.Message) -> None:
        item = self.items[cmd.name]
        item.description = cmd.description
        item.content = cmd.content
        item.updated_at = message.timestamp
        item.version += 1

    def apply_delete(self, cmd: DeleteItem, message: pt.Message) -> None:
        del self.items[cmd.name]
        self.requested_content.pop(cmd.name, None)

    def apply_request(self, cmd: RequestSummaryGeneration, message: pt.Message) -> None:
        item = self.items.get(cmd.item_id)
        if item is not None:
            item.summary_status = "pending"
            item.summary_request = cmd.request_id
            self.requested_content[cmd.item_id] = item.content

    def apply_summary(self, cmd: SetGeneratedSummary, message: pt.Message) -> None:
        item = self.items.get(cmd.item_id)
        if item is not None:
            item.summary = cmd.summary
            item.summary_status = "ready"
            item.summary_error = ""
            item.updated_at = message.timestamp

    def apply_failure(self, cmd: FailSummaryGeneration, message: pt.Message) -> None:
        item = self.items.get(cmd.item_id)
        if item is not None:
            item.summary_status = "failed"
            item.summary_error = cmd.reason
