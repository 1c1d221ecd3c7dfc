"""The body of ``POST /commands``: a batch of commands, read into command instances.

The body is ``{"commands": [{"name": "items/create", "payload": {...}}, ...]}``, in
the order they are to be appended. A command that cannot be read raises its typed
error with ``index``, its position in the list, as ``execute_many`` would.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ._commands import CommandRegistry
from ._errors import BatchTooLarge, CommandError, DecodeError
from ._message import Message

__all__ = ["answer", "read_batch"]

_ITEM_KEYS: Final = frozenset({"name", "payload"})


def read_batch(registry: CommandRegistry, body: bytes, max_batch: int) -> list[object]:
    """The commands of a batch body; raises :class:`DecodeError`, :class:`UnknownCommand`
    or :class:`BatchTooLarge` before any command is appended."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.keys() != {"commands"}:
        raise DecodeError('body must be a JSON object {"commands": [...]}')
    items = data["commands"]
    if not isinstance(items, list):
        raise DecodeError('"commands" must be a list of {"name": ..., "payload": {...}}')
    if len(items) > max_batch:
        # Before reading any of them: a huge list costs nothing more than its parsing.
        raise BatchTooLarge(len(items), max_batch)
    commands: list[object] = []
    for index, item in enumerate(items):
        try:
            commands.append(_command(registry, item))
        except CommandError as exc:
            exc.index = index
            raise
    return commands


def _command(registry: CommandRegistry, item: Any) -> object:
    if not isinstance(item, dict) or item.keys() != _ITEM_KEYS:
        raise DecodeError('each command must be an object {"name": ..., "payload": {...}}')
    name = item["name"]
    if not isinstance(name, str):
        raise DecodeError("a command's name must be a string")
    return registry.structure(name, registry.registered(name), item["payload"])


def answer(message: Message) -> dict[str, Any]:
    """What the HTTP API answers of an appended message (one or each of a batch's)."""
    return {"id": message.id, "name": message.name, "timestamp": message.timestamp.isoformat()}
