"""The JSON codecs of command payloads: cattrs, and msgspec where it decides the same.

The cattrs codec is the reference: strict hooks for str/int/float/bool (no bool for
an int, ints accepted for a float, no non-finite float, no ``5`` coerced into
``"5"``), unknown keys refused, and a payload refused at encode time unless it decodes
again. Structuring through it costs more than the rest of reading a message.

The msgspec codec decodes into a Struct mirror of the class (``_mirror``) and builds
the class from it, several times faster. It only ever *accepts* faster: a payload its
strict decoding refuses, or a command whose payload does not decode back to an equal
command, goes to the cattrs codec, which gives today's verdict and message. Its
mirror types accept a subset of what cattrs accepts, with equal results
(tests/test_codec.py holds both codecs to that on generated payloads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import cattrs
import msgspec
import orjson

from ._errors import DecodeError
from ._mirror import Unsupported, mirror

__all__ = ["CattrsCodec", "Codec", "MsgspecCodec", "codec_for", "converter"]


class Codec(Protocol):
    """Encodes and decodes the payloads of one command class."""

    def encode(self, name: str, cmd: object) -> bytes: ...

    def decode(self, name: str, payload: bytes | str) -> Any: ...


def _strict(kind: type[Any]) -> Callable[[Any, type[Any]], Any]:
    # cattrs would coerce ``5`` into ``"5"``; bad input must be refused, not reshaped.
    def structure(value: Any, _: type[Any]) -> Any:
        if type(value) is bool and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got bool")
        if kind is float and type(value) is int:
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        if kind is float and not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value

    return structure


def converter() -> cattrs.Converter:
    """The strict cattrs converter every command payload is held to."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    for kind in (str, int, float, bool):
        conv.register_structure_hook(kind, _strict(kind))
    return conv


@attrs.define
class CattrsCodec:
    """unstructure + orjson to encode, orjson + strict structure to decode."""

    cls: type[Any]
    converter: cattrs.Converter
    _hook: Callable[[Any, Any], Any] | None = None

    def encode(self, name: str, cmd: object) -> bytes:
        try:
            data = self.converter.unstructure(cmd)
            payload = orjson.dumps(data)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise DecodeError(f"{name}: cannot encode: {exc}", command_name=name) from exc
        # A payload that would not decode is poison in the log: refuse it now (a field
        # of the wrong type, say), while the caller can still be told.
        self.structure(name, data)
        return payload

    def decode(self, name: str, payload: bytes | str) -> Any:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(
                f"{name}: payload is not valid JSON: {exc}", command_name=name
            ) from exc
        return self.structure(name, data)

    def structure(self, name: str, data: Any) -> Any:
        """Build the class from already-parsed JSON ``data``, refusing wrong types."""
        hook = self._hook
        if hook is None:
            hook = self._hook = self.converter.get_structure_hook(self.cls)
        if not isinstance(data, dict):
            raise DecodeError(f"{name}: payload must be a JSON object", command_name=name)
        try:
            return hook(data, self.cls)
        except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
            detail = (
                "; ".join(cattrs.transform_error(exc))
                if isinstance(exc, cattrs.BaseValidationError)
                else str(exc)
            )
            raise DecodeError(f"{name}: {detail}", command_name=name) from exc


class MsgspecCodec:
    """Decodes through a ``msgspec.Struct`` mirror; whatever it refuses, cattrs decides."""

    def __init__(self, cls: type[Any], fallback: CattrsCodec) -> None:
        found = mirror(cls)
        self.cls = cls
        self.fallback = fallback
        self._decode = msgspec.json.Decoder(found.struct).decode
        self._build = found.build
        self._encode = msgspec.json.Encoder().encode

    def __repr__(self) -> str:
        return f"<MsgspecCodec {self.cls.__qualname__}>"

    def fast_decode(self, payload: bytes | str) -> Any:
        """The command msgspec decodes, or raises for anything it does not accept."""
        return self._build(self._decode(payload))

    def decode(self, name: str, payload: bytes | str) -> Any:
        try:
            return self._build(self._decode(payload))
        except Exception:  # noqa: BLE001
            # msgspec's refusals (and a validator's, or a too-deep nesting) are
            # rare: cattrs decides them, so the verdict and message stay its own.
            return self.fallback.decode(name, payload)

    def encode(self, name: str, cmd: object) -> bytes:
        try:
            payload = self._encode(cmd)
            # The decode-again check, with the decoder itself: a NaN msgspec wrote as
            # null, a field of the wrong type, an int past 64 bits do not come back.
            if self._build(self._decode(payload)) == cmd:
                return payload
        except Exception:  # noqa: BLE001, S110
            pass  # cattrs refuses it with its own message, or accepts it after all
        return self.fallback.encode(name, cmd)


def codec_for(cls: type[Any], conv: cattrs.Converter) -> CattrsCodec | MsgspecCodec:
    """The codec of one command class: msgspec's where its mirror holds, else cattrs's."""
    fallback = CattrsCodec(cls, conv)
    try:
        return MsgspecCodec(cls, fallback)
    except Unsupported:
        return fallback
