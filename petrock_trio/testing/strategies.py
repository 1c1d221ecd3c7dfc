"""Hypothesis strategies for commands and command sequences (needs hypothesis).

Fields are drawn from their types, or from the strategies given in ``fields``.
Drawn commands pass their class's ``validate(state)`` unless ``valid=False``: a
command ``execute`` would refuse tests nothing a worker does. The state they are
checked against is ``state=``, or for :func:`commands_from` an app's own state.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from hypothesis import reject
from hypothesis import strategies as st

from .._app import App
from .._commands import CommandRegistry, command_name, validate
from .._errors import ConfigurationError, ValidationError

__all__ = ["bad_payloads", "command_sequences", "commands", "commands_from"]

# Draws of a command before the example is given up (Hypothesis then draws another,
# and its filter_too_much health check speaks up if that happens too often).
TRIES: Final = 10


class _NoState:
    def __repr__(self) -> str:
        return "<no state>"


_NO_STATE: Final = _NoState()

Fields = Mapping[str, Any]


def _for_type(kind: Any) -> st.SearchStrategy[Any]:
    # What JSON payloads can carry: 64-bit integers, finite floats.
    if kind is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(kind, type) and attrs.has(kind):
        return _instances(kind, {})
    return st.from_type(kind)


def _as_strategy(value: Any) -> st.SearchStrategy[Any]:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _instances(cls: type[Any], fields: Fields) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    drawn = {
        f.name: _as_strategy(fields[f.name]) if f.name in fields else _for_type(hints[f.name])
        for f in attrs.fields(cls)
        if f.init
    }
    return st.builds(cls, **drawn)


def _check_fields(classes: tuple[type[Any], ...], fields: Fields) -> None:
    known = {f.name for cls in classes for f in attrs.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        names = ", ".join(cls.__name__ for cls in classes)
        raise ConfigurationError(
            f"fields {unknown} are not fields of {names} (their fields: {sorted(known)})"
        )


def _validated(
    strategy: st.SearchStrategy[Any], state_for: Callable[[str], Any]
) -> st.SearchStrategy[Any]:
    def accepted(cmd: Any) -> bool:
        try:
            validate(cmd, state_for(command_name(cmd)))
        except ValidationError:
            return False
        return True

    @st.composite
    def draw_valid(draw: st.DrawFn) -> Any:
        cmd = draw(strategy)
        for _ in range(TRIES - 1):
            if accepted(cmd):
                return cmd
            cmd = draw(strategy)
        if not accepted(cmd):
            reject()
        return cmd

    return draw_valid()


def _strategy(
    classes: tuple[type[Any], ...],
    fields: Fields | None,
    state_for: Callable[[str], Any] | None,
    *,
    valid: bool,
) -> st.SearchStrategy[Any]:
    if not classes:
        raise ConfigurationError("commands() needs at least one command class")
    for cls in classes:
        if not attrs.has(cls):
            raise ConfigurationError(f"{cls!r} is not an attrs command class")
    fields = dict(fields or {})
    _check_fields(classes, fields)
    strategy = st.one_of([_instances(cls, fields) for cls in classes])
    validating = [cls.__name__ for cls in classes if getattr(cls, "validate", None) is not None]
    if not valid or not validating:
        return strategy
    if state_for is None:
        raise ConfigurationError(
            f"{', '.join(validating)} validate against a state: pass state= (what their "
            "validate receives), draw from commands_from(app), or pass valid=False to draw "
            "commands validate may refuse"
        )
    return _validated(strategy, state_for)


def _constant(state: Any) -> Callable[[str], Any] | None:
    return None if state is _NO_STATE else (lambda _name: state)


def commands(
    *classes: type[Any],
    fields: Fields | None = None,
    state: Any = _NO_STATE,
    valid: bool = True,
) -> st.SearchStrategy[Any]:
    """Instances of any of the command ``classes``.

    Each field is drawn from its type, or from ``fields[name]`` (a strategy, or a
    value to use as is) for every class that has that field. A class with a
    ``validate`` method yields only commands that pass ``validate(state)``, checked
    when drawn, unless ``valid=False``; such a class needs ``state``. A draw is tried
    up to ``TRIES`` times before the example is rejected, so a strategy that seldom
    passes makes Hypothesis's ``filter_too_much`` health check fail instead of
    stalling: give the fields strategies that fit (``st.sampled_from`` of names that
    exist, ``st.integers(1, 9)`` for a quantity).
    """
    return _strategy(classes, fields, _constant(state), valid=valid)


def commands_from(
    source: CommandRegistry | App,
    *,
    fields: Fields | None = None,
    state: Any = _NO_STATE,
    valid: bool = True,
) -> st.SearchStrategy[Any]:
    """Instances of every command class registered on ``source``: an ``App`` (each
    command checked against the state the app gives it, as ``execute`` checks it,
    as it is when drawn) or a ``CommandRegistry`` (checked against ``state``).
    ``fields`` and ``valid`` as for :func:`commands`."""
    registry = source.registry if isinstance(source, App) else source
    classes = tuple(registry.lookup(name) for name in registry.names())
    state_for = _constant(state)
    if state_for is None and isinstance(source, App):
        state_for = source.state_for
    return _strategy(classes, fields, state_for, valid=valid)


def command_sequences(
    *classes: type[Any],
    min_size: int = 0,
    max_size: int = 30,
    fields: Fields | None = None,
    state: Any = _NO_STATE,
    valid: bool = True,
) -> st.SearchStrategy[list[Any]]:
    """Lists of commands (as :func:`commands` draws them), for property tests over
    arbitrary message sequences. Each command is checked against ``state`` as given,
    not as the commands before it in the list would leave it: for sequences that
    must stay valid in order, draw one command at a time from :func:`commands_from`
    an app that applies each one."""
    return st.lists(
        _strategy(classes, fields, _constant(state), valid=valid),
        min_size=min_size,
        max_size=max_size,
    )


def bad_payloads() -> st.SearchStrategy[bytes]:
    """Payloads no command decodes from: not JSON, not an object, or invalid UTF-8."""
    return st.one_of(
        st.binary(max_size=64).filter(lambda b: not b.strip().startswith(b"{")),
        st.sampled_from([b"[]", b"null", b"1", b'"text"', b"{", b"\xff\xfe{}", b'{"a":}']),
    )
