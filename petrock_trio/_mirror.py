"""A ``msgspec.Struct`` mirror of an attrs command class, and how to build the class from it.

msgspec decodes JSON straight into attrs classes, but for them it ignores unknown
fields (``forbid_unknown_fields`` applies to Structs only) and it does not call
``__init__``, so attrs converters never run. Decoding into a generated Struct that
forbids unknown fields, then calling the class with the decoded values, keeps both:
the class is built exactly as cattrs builds it, ``cls(**fields)``, validators,
converters and ``__attrs_post_init__`` included.

Only types whose msgspec decoding accepts a subset of what the cattrs codec accepts,
with equal results, are mirrored; anything else raises :class:`Unsupported` and the
class keeps the cattrs codec.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, Union

import attrs
import msgspec

__all__ = ["Mirror", "Unsupported", "mirror"]

# orjson reads integers of 64 bits as ints and larger ones as floats, which the strict
# int hook refuses. msgspec would read any size; it can bound ints within int64 only,
# so unsigned values past 2**63 are left to the cattrs codec, which accepts them.
_INT: Final = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

Build = Callable[[Any], Any]
# attrs.Factory is typed as a function returning the default; its class is what is set.
_FACTORY: Final[type[Any]] = type(attrs.Factory(list))


class Unsupported(TypeError):
    """The class has a type or feature that the msgspec mirror does not reproduce."""


@attrs.frozen
class Mirror:
    """The Struct to decode into and the function that turns it into the attrs class."""

    struct: type[msgspec.Struct]
    build: Build


def mirror(cls: type[Any]) -> Mirror:
    """The mirror of attrs class ``cls``, or :class:`Unsupported`."""
    return _mirror_class(cls, {})


# Mirrors built so far for one class, None for those being built: a class holding
# itself, directly or not, is left to cattrs rather than mirrored forever.
_Seen = dict[type[Any], Mirror | None]


def _mirror_class(cls: type[Any], seen: _Seen) -> Mirror:
    if cls in seen:
        found = seen[cls]
        if found is None:
            raise Unsupported(f"{cls.__qualname__} refers to itself")
        return found
    if cls.__eq__ is object.__eq__:  # type: ignore[comparison-overlap]
        # The encode check compares the decoded command with the original.
        raise Unsupported(f"{cls.__qualname__} has no equality")
    try:
        attrs.resolve_types(cls)
    except Exception as exc:  # a name the annotations use is missing, say
        raise Unsupported(f"{cls.__qualname__}: annotations do not resolve: {exc}") from exc
    seen[cls] = None
    fields = attrs.fields(cls)
    specs, builds = (
        zip(*(_field(cls, f, seen) for f in fields), strict=True) if fields else ((), ())
    )
    try:
        struct = msgspec.defstruct(
            f"{cls.__name__}Mirror", list(specs), kw_only=True, forbid_unknown_fields=True
        )
        msgspec.json.Decoder(struct)  # refuses types msgspec cannot decode
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"{cls.__qualname__}: {exc}") from exc
    positional = sum(not f.kw_only for f in fields)
    found = seen[cls] = Mirror(struct, _builder(cls, list(builds), positional))
    return found


def _field(
    cls: type[Any], field: attrs.Attribute[Any], seen: _Seen
) -> tuple[tuple[str, Any] | tuple[str, Any, Any], Build | None]:
    """A field's spec for ``defstruct`` and how to build its value."""
    if not field.init or field.alias != field.name or field.type is None:
        raise Unsupported(f"{cls.__qualname__}.{field.name} is not a plain init field")
    kind, build = _mirror_type(field.type, seen)
    default = field.default
    if default is attrs.NOTHING:
        return (field.name, kind), build
    if isinstance(default, _FACTORY):
        if default.takes_self:
            raise Unsupported(f"{cls.__qualname__}.{field.name}: its factory takes self")
        return (field.name, kind, msgspec.field(default_factory=default.factory)), build
    return (field.name, kind, default), build


def _builder(cls: type[Any], builds: list[Build | None], positional: int) -> Build:
    astuple = msgspec.structs.astuple
    names = [f.name for f in attrs.fields(cls)]
    if positional == len(names) and not any(builds):
        # The common case: every field positional, none holding an attrs class.
        return lambda m: cls(*astuple(m))

    def build(m: Any) -> Any:
        values = [v if b is None else b(v) for v, b in zip(astuple(m), builds, strict=True)]
        keywords = dict(zip(names[positional:], values[positional:], strict=True))
        return cls(*values[:positional], **keywords)

    return build


def _mirror_type(kind: Any, seen: _Seen) -> tuple[Any, Build | None]:
    """msgspec's type for an annotation, and how to turn what it decodes into the value."""
    if kind in (str, bool, float, type(None), None):
        return kind, None
    if kind is int:
        return _INT, None
    if isinstance(kind, type) and attrs.has(kind):
        nested = _mirror_class(kind, seen)
        return nested.struct, nested.build
    return _mirror_generic(kind, seen)


def _mirror_generic(kind: Any, seen: _Seen) -> tuple[Any, Build | None]:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal and all(type(a) in (str, int) for a in args):
        return kind, None
    if origin in (Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:  # noqa: PLR2004
            # cattrs picks among several classes its own way: left to cattrs.
            raise Unsupported(f"union {kind!r}")
        inner, build = _mirror_type(others[0], seen)
        return inner | None, None if build is None else _optional(build)
    if origin is list and len(args) == 1:
        inner, build = _mirror_type(args[0], seen)
        return list[inner], None if build is None else _each(build, list)  # type: ignore[valid-type]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # noqa: PLR2004
        inner, build = _mirror_type(args[0], seen)
        return tuple[inner, ...], None if build is None else _each(build, tuple)  # type: ignore[valid-type]
    if origin is dict and len(args) == 2 and args[0] is str:  # noqa: PLR2004
        inner, build = _mirror_type(args[1], seen)
        return dict[str, inner], None if build is None else _values(build)  # type: ignore[valid-type]
    raise Unsupported(f"type {kind!r}")


def _optional(build: Build) -> Build:
    return lambda v: None if v is None else build(v)


def _each(build: Build, container: Callable[[Any], Any]) -> Build:
    return lambda v: container(build(x) for x in v)


def _values(build: Build) -> Build:
    return lambda v: {k: build(x) for k, x in v.items()}
