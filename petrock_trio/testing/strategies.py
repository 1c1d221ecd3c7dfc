"""Hypothesis strategies for commands and command sequences (needs hypothesis)."""

from __future__ import annotations

import typing
from typing import Any

import attrs
from hypothesis import strategies as st

from .._commands import CommandRegistry

__all__ = ["bad_payloads", "command_sequences", "commands", "commands_from"]


def _for_type(kind: Any) -> st.SearchStrategy[Any]:
    # What JSON payloads can carry: 64-bit integers, finite floats.
    if kind is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(kind, type) and attrs.has(kind):
        return _instances(kind)
    return st.from_type(kind)


def _instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _for_type(hints[f.name]) for f in attrs.fields(cls) if f.init}
    return st.builds(cls, **fields)


def commands(*classes: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of any of the command ``classes``, fields drawn from their types."""
    if not classes:
        raise ValueError("commands() needs at least one command class")
    return st.one_of([_instances(cls) for cls in classes])


def commands_from(registry: CommandRegistry) -> st.SearchStrategy[Any]:
    """Instances of every command class registered on ``registry`` (e.g. ``app.registry``)."""
    return commands(*(registry.lookup(name) for name in registry.names()))


def command_sequences(
    *classes: type[Any], min_size: int = 0, max_size: int = 30
) -> st.SearchStrategy[list[Any]]:
    """Lists of commands, for property tests over arbitrary message sequences."""
    return st.lists(commands(*classes), min_size=min_size, max_size=max_size)


def bad_payloads() -> st.SearchStrategy[bytes]:
    """Payloads no command decodes from: not JSON, not an object, or invalid UTF-8."""
    return st.one_of(
        st.binary(max_size=64).filter(lambda b: not b.strip().startswith(b"{")),
        st.sampled_from([b"[]", b"null", b"1", b'"text"', b"{", b"\xff\xfe{}", b'{"a":}']),
    )
