"""Command registry and codec: names, strict decoding, typed errors."""

from __future__ import annotations

import types

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio._commands import validate
from tests.support import Add, Named, Note


class TestRegistry:
    """A registry maps names to classes and refuses conflicts."""

    def test_register_and_lookup(self) -> None:
        registry = pt.CommandRegistry()
        assert registry.register(Add) == "test/add"
        assert registry.lookup("test/add") is Add
        assert registry.names() == ["test/add"]

    def test_unknown_name_is_a_lookup_error(self) -> None:
        registry = pt.CommandRegistry()
        with pytest.raises(pt.UnknownCommand) as info:
            registry.lookup("nope/never")
        assert isinstance(info.value, LookupError)
        assert info.value.command_name == "nope/never"

    def test_conflicting_class_for_a_name(self) -> None:
        @pt.command("test/conflict")
        @attrs.frozen
        class First:
            x: int

        @pt.command("test/conflict")
        @attrs.frozen
        class Second:
            x: int

        registry = pt.CommandRegistry()
        registry.register(First)
        with pytest.raises(pt.ConfigurationError, match="already registered"):
            registry.register(Second)

    def test_command_requires_attrs_class(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="attrs class"):

            @pt.command("test/plain")
            class Plain:
                pass

    @pytest.mark.parametrize("name", ["", " padded ", "x" * 201])
    def test_invalid_names(self, name: str) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.command(name)

    def test_command_name_of_non_command(self) -> None:
        with pytest.raises(pt.UnknownCommand, match="not a command"):
            pt.command_name(object())


class TestCodec:
    """Payloads are JSON; decoding refuses anything that is not exactly the class."""

    def test_round_trip(self) -> None:
        registry = pt.CommandRegistry()
        name, payload = registry.encode(Add("k", 3))
        assert name == "test/add"
        assert registry.decode(name, payload) == Add("k", 3)

    @pytest.mark.parametrize(
        ("payload", "detail"),
        [
            pytest.param(b'{"key": 5}', "expected str", id="wrong-type"),
            pytest.param(b'{"key": "k", "amount": "3"}', "expected int", id="string-for-int"),
            pytest.param(b'{"key": "k", "amount": true}', "expected int", id="bool-for-int"),
            pytest.param(b'{"amount": 3}', "key", id="missing-field"),
            pytest.param(b'{"key": "k", "extra": 1}', "extra", id="extra-field"),
            pytest.param(b"[1, 2]", "JSON object", id="not-an-object"),
            pytest.param(b"{not json", "not valid JSON", id="malformed"),
            pytest.param(b'{"key": "\xed\xa0\x80"}', "not valid JSON", id="invalid-utf8"),
        ],
    )
    def test_bad_payloads(self, payload: bytes, detail: str) -> None:
        registry = pt.CommandRegistry()
        with pytest.raises(pt.DecodeError, match=detail) as info:
            registry.decode("test/add", payload)
        assert info.value.command_name == "test/add"
        assert isinstance(info.value, ValueError)

    def test_oversized_payload(self) -> None:
        registry = pt.CommandRegistry(max_payload_bytes=64)
        with pytest.raises(pt.PayloadTooLarge):
            registry.encode(Note("x" * 100))
        with pytest.raises(pt.PayloadTooLarge):
            registry.decode("test/note", b'{"text": "' + b"x" * 100 + b'"}')

    def test_validate_is_optional(self) -> None:
        state = types.SimpleNamespace(names={"taken"})
        validate(Note("anything"), state)
        with pytest.raises(pt.ValidationError, match="taken"):
            validate(Named("taken"), state)

    @given(key=st.text(), amount=st.integers(min_value=-(2**63), max_value=2**63 - 1))
    def test_round_trip_property(self, key: str, amount: int) -> None:
        registry = pt.CommandRegistry()
        try:
            name, payload = registry.encode(Add(key, amount))
        except pt.DecodeError:
            # Lone surrogates cannot be encoded as UTF-8 JSON: refused, never mangled.
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in key)
            return
        assert registry.decode(name, payload) == Add(key, amount)
