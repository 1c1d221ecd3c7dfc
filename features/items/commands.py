"""The items feature's commands; each validates itself against the items state."""

from __future__ import annotations

import attrs

import petrock_trio as pt

from .state import ItemsState

__all__ = [
    "CreateItem",
    "DeleteItem",
    "FailSummaryGeneration",
    "RequestSummaryGeneration",
    "SetGeneratedSummary",
    "UpdateItem",
]

MAX_NAME = 200


def _require_item(state: ItemsState, name: str, command: str) -> None:
    if name not in state.items:
        raise pt.ValidationError(f"no item named {name!r}", command_name=command)


def _require_request(state: ItemsState, item_id: str, request_id: str, command: str) -> None:
    # A result lands once, and only for the item it was asked for: not for an item of
    # the same name created again since, nor for a request already settled.
    _require_item(state, item_id, command)
    if not state.awaits(item_id, request_id):
        raise pt.ValidationError(
            f"item {item_id!r} is not waiting for summary request {request_id!r}",
            command_name=command,
        )


@pt.command("items/create")
@attrs.frozen
class CreateItem:
    name: str
    description: str = ""
    content: str = ""

    def validate(self, state: ItemsState) -> None:
        if not self.name.strip():
            raise pt.ValidationError("name must not be empty", command_name="items/create")
        if len(self.name) > MAX_NAME:
            raise pt.ValidationError(
                f"name longer than {MAX_NAME} characters", command_name="items/create"
            )
        if self.name in state.items:
            raise pt.ValidationError(
                f"an item named {self.name!r} exists", command_name="items/create"
            )


@pt.command("items/update")
@attrs.frozen
class UpdateItem:
    name: str
    description: str = ""
    content: str = ""

    def validate(self, state: ItemsState) -> None:
        _require_item(state, self.name, "items/update")


@pt.command("items/delete")
@attrs.frozen
class DeleteItem:
    name: str

    def validate(self, state: ItemsState) -> None:
        _require_item(state, self.name, "items/delete")


@pt.command("items/request-summary-generation")
@attrs.frozen
class RequestSummaryGeneration:
    item_id: str
    request_id: str

    def validate(self, state: ItemsState) -> None:
        _require_item(state, self.item_id, "items/request-summary-generation")


@pt.command("items/set-generated-summary")
@attrs.frozen
class SetGeneratedSummary:
    item_id: str
    request_id: str
    summary: str

    def validate(self, state: ItemsState) -> None:
        _require_request(state, self.item_id, self.request_id, "items/set-generated-summary")


@pt.command("items/fail-summary-generation")
@attrs.frozen
class FailSummaryGeneration:
    item_id: str
    request_id: str
    reason: str

    def validate(self, state: ItemsState) -> None:
        _require_request(state, self.item_id, self.request_id, "items/fail-summary-generation")
