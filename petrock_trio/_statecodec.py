"""State as snapshots store it: encoded, decoded, described by its shape.

State is encoded with the commands' converter (strict types: ``5`` is no string),
taught a few more types: datetimes, dates and durations, sets, dictionaries whose
keys are not strings (as pairs), ``SimpleNamespace``. A state's *shape* is its type
and the field names and types of every attrs class it holds: a snapshot written by
code whose state had another shape is not used.
"""

from __future__ import annotations

import enum
import types
import typing
from collections import abc
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Final

import attrs
import cattrs
import orjson

from ._codec import converter as _converter
from ._errors import ConfigurationError

__all__ = ["StateCodec", "StatesCodec", "detail", "in_place", "restore"]

_LEAVES: Final = frozenset({str, int, float, bool, type(None), datetime, date, timedelta})
_SEQUENCES: Final = frozenset(
    {list, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet}
)
_SETS: Final = frozenset({set, frozenset, abc.Set, abc.MutableSet})
_MAPPINGS: Final = frozenset({dict, abc.Mapping, abc.MutableMapping})
# Whatever is left for orjson to write itself must be a JSON value: a datetime, a
# dataclass or a subclass of str, int, dict or list in an untyped place (``Any``, a
# bare ``dict``) would come back as something else, so orjson hands those to _refuse.
_DUMPS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__qualname__} is not a JSON value")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _none(value: Any, _: Any) -> None:
    if value is not None:
        raise TypeError(f"expected null, got {type(value).__name__}")


def _number(value: Any) -> float:
    if type(value) not in {int, float}:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _is_set(tp: Any) -> bool:
    origin: Any = typing.get_origin(tp)
    return tp in _SETS or origin in _SETS


def _keyed(tp: Any) -> bool:
    """A mapping type whose keys are not strings: JSON objects cannot hold it."""
    args = typing.get_args(tp)
    return typing.get_origin(tp) in _MAPPINGS and bool(args) and args[0] not in {str, Any}


def _converter_for_state() -> cattrs.Converter:
    converter = _converter()
    converter.register_structure_hook(type(None), _none)
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(datetime, lambda v, _: datetime.fromisoformat(_text(v)))
    converter.register_unstructure_hook(date, date.isoformat)
    converter.register_structure_hook(date, lambda v, _: date.fromisoformat(_text(v)))
    converter.register_unstructure_hook(timedelta, timedelta.total_seconds)
    converter.register_structure_hook(timedelta, lambda v, _: timedelta(seconds=_number(v)))
    converter.register_unstructure_hook(
        types.SimpleNamespace, lambda ns: {k: converter.unstructure(v) for k, v in vars(ns).items()}
    )
    converter.register_structure_hook(
        types.SimpleNamespace, lambda v, _: types.SimpleNamespace(**converter.structure(v, dict))
    )

    def unstructure_set(tp: Any) -> Callable[[Any], Any]:
        (item,) = typing.get_args(tp) or (Any,)
        each = converter.get_unstructure_hook(item) if item is not Any else converter.unstructure
        return lambda values: [each(v) for v in values]

    converter.register_unstructure_hook_factory(_is_set, unstructure_set)

    def unstructure_pairs(tp: Any) -> Callable[[Any], Any]:
        key, value = typing.get_args(tp)
        uk, uv = converter.get_unstructure_hook(key), converter.get_unstructure_hook(value)
        return lambda mapping: [[uk(k), uv(v)] for k, v in mapping.items()]

    def structure_pairs(tp: Any) -> Callable[[Any, Any], Any]:
        key, value = typing.get_args(tp)

        def structure(data: Any, _: Any) -> dict[Any, Any]:
            if not isinstance(data, list):
                raise TypeError(f"expected a list of pairs, got {type(data).__name__}")
            return {converter.structure(k, key): converter.structure(v, value) for k, v in data}

        return structure

    converter.register_unstructure_hook_factory(_keyed, unstructure_pairs)
    converter.register_structure_hook_factory(_keyed, structure_pairs)
    return converter


_CONVERTER: Final = _converter_for_state()


def _type_name(tp: Any) -> str:  # noqa: PLR0911 - one return per kind of type
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    origin = typing.get_origin(tp)
    if origin in {typing.Union, types.UnionType}:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, typing.get_args(tp)))}]"
    if origin is not None:
        return f"{_type_name(origin)}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__qualname__", None) or repr(tp)


def _problem(tp: Any, where: str, classes: dict[type[Any], str]) -> str | None:  # noqa: PLR0911
    """Why a value of type ``tp`` at ``where`` cannot be encoded, or None; the attrs
    classes met on the way go into ``classes`` with their part of the shape."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp in _LEAVES or tp in _SEQUENCES or tp in _MAPPINGS or tp is tuple:
        return None  # an untyped container holds JSON values
    if isinstance(tp, type) and issubclass(tp, enum.Enum | types.SimpleNamespace):
        return None
    if origin is typing.Annotated:
        return _problem(args[0], where, classes)
    if origin is typing.Literal:
        return None
    if origin in {typing.Union, types.UnionType} or origin in _SEQUENCES or origin is tuple:
        problems = (_problem(a, where, classes) for a in args if a is not Ellipsis)
        return next((p for p in problems if p is not None), None)
    if origin in _MAPPINGS:
        return _problem(args[0], f"{where} (its keys)", classes) or _problem(
            args[1], f"{where} (its values)", classes
        )
    if isinstance(tp, type) and attrs.has(tp):
        if tp in classes:
            return None
        classes[tp] = ""  # before the fields: a class may refer to itself
        try:
            attrs.resolve_types(tp)
        except NameError as exc:
            return (
                f"{where} has type {_type_name(tp)}, whose fields' types cannot be resolved "
                f"({exc}): import them at run time, not only for type checking"
            )
        fields = attrs.fields(tp)
        classes[tp] = ", ".join(f"{f.name}: {_type_name(f.type)}" for f in fields)
        problems = (_problem(f.type, f"{tp.__qualname__}.{f.name}", classes) for f in fields)
        return next((p for p in problems if p is not None), None)
    return f"{where} has type {_type_name(tp)}, which a snapshot cannot encode"


class StateCodec:
    """Encodes and decodes the states of one type, and describes its shape."""

    def __init__(self, kind: type[Any], *, owner: str) -> None:
        self.kind = kind
        self.owner = owner
        classes: dict[type[Any], str] = {}
        problem = _problem(kind, _type_name(kind), classes)
        if problem is not None:
            raise ConfigurationError(
                f"{owner} takes snapshots, but its state cannot be encoded: {problem}"
            )
        # The root first, then every attrs class it holds, by name.
        parts = [_type_name(kind)] if kind not in classes else []
        parts += [
            f"{c.__qualname__}({classes[c]})"
            for c in sorted(classes, key=lambda c: (c is not kind, c.__qualname__))
        ]
        self.shape = "; ".join(parts)

    def __repr__(self) -> str:
        return f"<StateCodec {self.shape!r}>"

    @classmethod
    def checked(cls, state: object, *, owner: str) -> StateCodec:
        """The codec of ``state``'s type, after a round trip of ``state`` itself:
        raises :class:`ConfigurationError` naming what would not come back."""
        codec = cls(type(state), owner=owner)
        try:
            back = codec.decode(codec.encode(state))
        except Exception as exc:  # whatever fails, the state cannot be saved
            raise ConfigurationError(
                f"{owner} takes snapshots, but its state cannot be encoded: {detail(exc)}"
            ) from exc
        kind: Any = type(state)
        if kind.__eq__ is not object.__eq__ and back != state:
            where = _type_name(kind)
            if attrs.has(kind):
                where += "." + next(
                    f.name
                    for f in attrs.fields(kind)
                    if getattr(back, f.name) != getattr(state, f.name)
                )
            raise ConfigurationError(
                f"{owner} takes snapshots, but {where} does not come back the same from one: "
                "an untyped value (Any, a bare dict or list) must hold JSON values only"
            )
        return codec

    def unstructure(self, state: object) -> Any:
        return _CONVERTER.unstructure(state, self.kind)

    def structure(self, data: Any) -> Any:
        return _CONVERTER.structure(data, self.kind)

    def encode(self, state: object) -> bytes:
        """Raises TypeError or ValueError for a value the state's type does not allow."""
        return orjson.dumps(self.unstructure(state), default=_refuse, option=_DUMPS)

    def decode(self, data: bytes) -> Any:
        """Raises ValueError, TypeError or cattrs' errors for data that does not decode."""
        return self.structure(orjson.loads(data))


class StatesCodec:
    """Several states saved as one (the state projection's: a state per command
    registered with its own ``state=``), in the order they were registered."""

    def __init__(self, codecs: Sequence[StateCodec]) -> None:
        self.codecs = tuple(codecs)
        self.shape = " + ".join(c.shape for c in self.codecs)

    def encode(self, states: Any) -> bytes:
        data = [c.unstructure(s) for c, s in zip(self.codecs, states, strict=True)]
        return orjson.dumps(data, default=_refuse, option=_DUMPS)

    def decode(self, data: bytes) -> list[Any]:
        parsed = orjson.loads(data)
        if not isinstance(parsed, list) or len(parsed) != len(self.codecs):
            raise ValueError(f"expected a list of {len(self.codecs)} states")
        return [c.structure(d) for c, d in zip(self.codecs, parsed, strict=True)]


def in_place(target: object) -> bool:
    """Whether :func:`restore` puts a state's contents into ``target`` itself."""
    return attrs.has(type(target)) or isinstance(target, dict | set | list | types.SimpleNamespace)


def detail(exc: BaseException) -> str:
    """What went wrong, in one line: cattrs' paths, or the cause orjson wrapped."""
    if isinstance(exc, orjson.JSONEncodeError) and exc.__cause__ is not None:
        return detail(exc.__cause__)
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    return str(exc) or type(exc).__name__


def restore(target: Any, loaded: Any) -> Any:
    """Put ``loaded``'s contents into ``target`` where its type allows (others may hold
    ``target``: the projection's states are the application's objects); the object to
    use from now on."""
    if type(loaded) is not type(target):
        return loaded
    if attrs.has(type(target)):
        for field in attrs.fields(type(target)):
            # object.__setattr__, as attrs itself does: also for frozen and slotted classes.
            object.__setattr__(target, field.name, getattr(loaded, field.name))
    elif isinstance(target, dict | set):
        target.clear()
        target.update(loaded)
    elif isinstance(target, list):
        target[:] = loaded
    elif isinstance(target, types.SimpleNamespace):
        vars(target).clear()
        vars(target).update(vars(loaded))
    else:
        return loaded
    return target
