"""Command classes: the ``@command`` marker and the registry that encodes and decodes them.

Each class's JSON codec is chosen once, on its first use (``_codec``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol, TypeVar, cast

import attrs

from ._codec import CattrsCodec, MsgspecCodec, codec_for, converter
from ._errors import (
    ConfigurationError,
    PayloadTooLarge,
    UnknownCommand,
    ValidationError,
)

__all__ = ["Command", "CommandRegistry", "command", "command_name"]

_NAME_ATTR: Final = "__petrock_command__"

C = TypeVar("C", bound=type[Any])

# Classes marked by ``@command``, used only as a fallback by registries that were not
# told about a name explicitly: a command written to the log by one app must still
# decode in a process that imported the class but never registered it.
_CATALOG: dict[str, type[Any]] = {}


class Command(Protocol):
    """A command instance, as far as a type checker can tell: what ``ctx.emit`` takes.

    ``@command`` marks attrs classes only, and attrs gives each of them
    ``__match_args__``: mypy and pyright accept instances of attrs classes here and
    refuse a name (``"orders/place"``) or an ``object()``; mypy refuses the class
    itself too, pyright lets it through (the class has ``__match_args__``). A decorator
    cannot add a member a type checker sees, so whether the class is marked with
    ``@command`` and registered with the app is checked at run time:
    :class:`UnknownCommand`, a programming error that dead-letters its message at once.
    (An attrs class declared with ``match_args=False`` satisfies the engine but not
    this protocol.)
    """

    @property
    def __match_args__(self) -> tuple[str, ...]: ...


def command(name: str) -> Callable[[C], C]:
    """Mark an attrs class as the command called ``name`` (``"feature/verb"``).

    Apply it above ``@attrs.frozen``. The class may define ``validate(self, state)``,
    raising :class:`ValidationError` when the command is invalid against current state.
    """
    if not name or name != name.strip() or len(name) > 200:  # noqa: PLR2004
        raise ConfigurationError(f"invalid command name {name!r}")

    def mark(cls: C) -> C:
        is_attrs = attrs.has(cls)  # kept apart so the TypeGuard does not narrow `cls`
        if not is_attrs:
            raise ConfigurationError(
                f"@command({name!r}) must decorate an attrs class; put it above @attrs.frozen"
            )
        setattr(cls, _NAME_ATTR, name)
        _CATALOG[name] = cls
        return cls

    return mark


def command_name(cls_or_instance: object) -> str:
    """The registered name of a command class or instance."""
    cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
    try:
        return cast("str", getattr(cls, _NAME_ATTR))
    except AttributeError:
        raise UnknownCommand(
            f"{cls.__qualname__} is not a command; decorate it with @command"
        ) from None


class _Validating(Protocol):
    def validate(self, state: Any) -> None: ...


class CommandRegistry:
    """Maps command names to classes and encodes/decodes their JSON payloads.

    Each :class:`App` owns one; names it was not told about fall back to classes
    marked with :func:`command` in this process.
    """

    def __init__(self, *, max_payload_bytes: int = 1 << 20) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._classes: dict[str, type[Any]] = {}
        self._converter = converter()
        self._codecs: dict[type[Any], CattrsCodec | MsgspecCodec] = {}

    def __repr__(self) -> str:
        return f"<CommandRegistry {len(self._classes)} commands>"

    def register(self, cls: type[Any]) -> str:
        name = command_name(cls)
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ConfigurationError(
                f"command {name!r} is already registered to {existing.__qualname__}"
            )
        self._classes[name] = cls
        return name

    def names(self) -> list[str]:
        return sorted(self._classes)

    def lookup(self, name: str) -> type[Any]:
        cls = self._classes.get(name) or _CATALOG.get(name)
        if cls is None:
            raise UnknownCommand(f"unknown command {name!r}", command_name=name)
        return cls

    def is_registered(self, name: str) -> bool:
        """True for names registered on this registry (what ``execute`` accepts)."""
        return name in self._classes

    def registered(self, name: str) -> type[Any]:
        """The class registered as ``name`` on this registry (what ``execute`` and the
        HTTP API accept); :class:`UnknownCommand` otherwise."""
        cls = self._classes.get(name)
        if cls is None:
            raise UnknownCommand(
                f"command {name!r} is not registered with this app", command_name=name
            )
        return cls

    def codec(self, cls: type[Any]) -> CattrsCodec | MsgspecCodec:
        """The codec of a command class: msgspec's where it decides as cattrs would."""
        found = self._codecs.get(cls)
        if found is None:
            found = self._codecs[cls] = codec_for(cls, self._converter)
        return found

    def encode(self, cmd: object) -> tuple[str, bytes]:
        """The name and JSON payload of a command instance."""
        name = command_name(cmd)
        payload = self.codec(type(cmd)).encode(name, cmd)
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"{name}: payload of {len(payload)} bytes exceeds {self.max_payload_bytes}",
                command_name=name,
            )
        return name, payload

    def decode(self, name: str, payload: bytes | str) -> Any:
        """The command instance for a stored or received payload."""
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"{name}: payload of {len(payload)} bytes exceeds {self.max_payload_bytes}",
                command_name=name,
            )
        return self.codec(self.lookup(name)).decode(name, payload)

    def structure(self, name: str, cls: type[Any], data: Any) -> Any:
        """Build ``cls`` from already-parsed JSON ``data``, refusing wrong types."""
        codec = self.codec(cls)
        held = codec.fallback if isinstance(codec, MsgspecCodec) else codec
        return held.structure(name, data)


def validate(cmd: object, state: Any) -> None:
    """Run a command's optional ``validate(state)``.

    A refusal leaves here naming its command: ``validate`` methods rarely pass
    ``command_name`` themselves, and whoever catches the error (a caller of
    ``execute``, the HTTP API, a handler that emits) needs to know which was refused.
    """
    check = getattr(cmd, "validate", None)
    if check is None:
        return
    try:
        cast("_Validating", cmd).validate(state)
    except ValidationError as exc:
        if exc.command_name is None:
            exc.command_name = command_name(cmd)
        raise
