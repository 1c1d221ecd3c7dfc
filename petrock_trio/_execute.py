"""Executing commands: one at a time, or a batch in one transaction, validated in order.

A batch (``App.execute_many``) is all or nothing: every command is encoded and
checked before anything is written, and the batch is one :class:`Commit`, which the
store writes in one transaction. Its ``k``-th command's ``validate(state)`` sees
state as if the batch's earlier commands had been applied: they are applied, through
the projection's own ``apply`` functions, to deep copies of the states that later
validated commands consult. Copies are made only where needed: a batch with no
``validate`` methods copies nothing and takes no lock; a validated command copies its
state only if an earlier command of the batch applies to that same state object.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from ._commands import CommandRegistry, command_name, validate
from ._errors import BatchTooLarge, CommandError, ConfigurationError, UnknownCommand
from ._message import Message, decode_metadata
from ._projection import Applier
from ._runtime import Runtime
from .stores import Commit

__all__ = ["Executor"]


@attrs.frozen
class Executor:
    """What ``execute`` and ``execute_many`` need of the app, fixed at construction.

    ``appliers`` is the projection's own table (name -> (apply, state)), read at each
    batch: commands registered later count.
    """

    registry: CommandRegistry
    state_for: Callable[[str], Any]
    appliers: Mapping[str, tuple[Applier, Any]]
    lock: trio.Lock
    max_batch: int

    def encode(self, cmd: object) -> tuple[str, bytes]:
        """Name and payload of a registered command; raises the typed errors."""
        self.registry.registered(command_name(cmd))
        return self.registry.encode(cmd)

    def encode_valid(self, cmd: object) -> tuple[str, bytes]:
        """:meth:`encode`, then ``cmd.validate(state)`` against current state."""
        name, payload = self.encode(cmd)
        validate(cmd, self.state_for(name))
        return name, payload

    async def one(self, rt: Runtime, cmd: object, metadata: Sequence[str | None]) -> Message:
        log = rt.log
        if getattr(cmd, "validate", None) is None:
            # Nothing to check: go straight to group commit with concurrent callers,
            # back once state has applied it.
            encoded = self.encode_valid(cmd)
            (row,) = await rt.append_applied(log.new_commit(encoded=[encoded], metadata=metadata))
        else:
            # Validation must see every earlier command applied, so validated commands
            # go one at a time: wait for state to reach the head, check, append.
            async with self.lock:
                await rt.wait_applied(log.head.value)
                encoded = self.encode_valid(cmd)
                (row,) = await log.commit(log.new_commit(encoded=[encoded], metadata=metadata))
            await rt.wait_applied(row.id)
        return Message.from_row(row, cmd)

    async def many(
        self, rt: Runtime, commands: Sequence[object], metadata: str | None = None
    ) -> list[Message]:
        """Append ``commands`` in one transaction, all or nothing; ``metadata`` (a trace
        context) is every message's."""
        # A copy: the caller's list may change while this waits for the lock.
        commands = list(commands)
        count = len(commands)
        if count > self.max_batch:
            raise BatchTooLarge(count, self.max_batch)
        if not commands:
            await trio.lowlevel.checkpoint()
            return []
        log = rt.log
        metadatas = () if metadata is None else [metadata] * count
        checked = [k for k, c in enumerate(commands) if getattr(c, "validate", None) is not None]
        if not checked:
            # Nothing to check: group commit with concurrent callers, as execute does.
            encoded = self._encode_all(commands)
            commit = Commit(appends=encoded, timestamp=log.clock(), metadata=metadatas)
            rows = await rt.append_applied(commit)
        else:
            async with self.lock:
                await rt.wait_applied(log.head.value)
                timestamp = log.clock()
                encoded = self._checked_in_order(commands, checked, log.head.value, timestamp)
                commit = Commit(appends=encoded, timestamp=timestamp, metadata=metadatas)
                rows = await log.commit(commit)
            await rt.wait_applied(rows[-1].id)
        # One commit: every row has its timestamp and metadata, converted once.
        when = datetime.fromtimestamp(rows[0].timestamp, UTC)
        meta = decode_metadata(rows[0].metadata)
        return [
            Message(row.id, when, row.name, cmd, meta)
            for row, cmd in zip(rows, commands, strict=True)
        ]

    def _encode_known(self, cmd: object, known: set[type[Any]]) -> tuple[str, bytes]:
        """:meth:`encode`, the class's registration looked up once per batch (the
        registry's encode names the command anyway)."""
        kind = type(cmd)
        if kind in known:
            return self.registry.encode(cmd)
        encoded = self.encode(cmd)
        known.add(kind)
        return encoded

    def _encode_all(self, commands: list[object]) -> list[tuple[str, bytes]]:
        encoded = []
        known: set[type[Any]] = set()
        for index, cmd in enumerate(commands):
            try:
                encoded.append(self._encode_known(cmd, known))
            except CommandError as exc:
                _at(exc, index, len(commands))
                raise
        return encoded

    def _checked_in_order(
        self, commands: list[object], checked: list[int], head: int, timestamp: float
    ) -> list[tuple[str, bytes]]:
        """Encode each command and validate those with ``validate``, in order, each
        against state with the batch's earlier commands applied; the first refusal
        raises, naming its index."""
        # The states validate methods consult, and the last command consulting each:
        # an earlier command's apply is mirrored only onto a state consulted after it.
        last_check: dict[int, int] = {}
        for index in checked:
            try:
                last_check[id(self.state_for(command_name(commands[index])))] = index
            except UnknownCommand:
                continue  # refused in order below, before anything after it matters
        shadows: dict[int, Any] = {}  # id(state) -> its copy with the batch applied so far
        when = datetime.fromtimestamp(timestamp, UTC)
        wanted = set(checked)
        encoded = []
        known: set[type[Any]] = set()
        for index, cmd in enumerate(commands):
            try:
                name, payload = self._encode_known(cmd, known)
                if index in wanted:
                    state = self.state_for(name)
                    validate(cmd, shadows.get(id(state), state))
            except CommandError as exc:
                _at(exc, index, len(commands))
                raise
            encoded.append((name, payload))
            found = self.appliers.get(name)
            if found is None or last_check.get(id(found[1]), -1) <= index:
                continue
            apply, state = found
            shadow = shadows.get(id(state))
            if shadow is None:
                shadow = shadows[id(state)] = _copy(state, name)
            # The id it gets if nothing else is appended meanwhile (unvalidated commands
            # of other callers may be): appliers rarely read it, and only the copy sees it.
            message = Message(head + index + 1, when, name, cmd)
            try:
                apply(shadow, cmd, message)
            except Exception:  # noqa: BLE001, S112 - the projection logs it and goes on too
                continue
        return encoded


def _at(exc: CommandError, index: int, count: int) -> None:
    exc.index = index
    exc.add_note(f"command {index} of a batch of {count}; nothing of the batch was appended")


def _copy(state: Any, name: str) -> Any:
    try:
        return copy.deepcopy(state)
    except Exception as exc:
        raise ConfigurationError(
            f"the state that {name!r} applies to cannot be copied (copy.deepcopy) to "
            f"validate a batch in order: {type(exc).__name__}: {exc}"
        ) from exc
