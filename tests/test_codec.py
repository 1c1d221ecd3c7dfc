"""The two codecs of command payloads decide alike: msgspec's only ever accepts faster."""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Literal

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio._codec import CattrsCodec, MsgspecCodec, converter

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Past int64 the msgspec mirror leaves ints to cattrs; past 64 bits both refuse them.
WIDE_INT = st.one_of(I64, st.integers(min_value=-(2**66), max_value=2**66))
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@pt.command("codec/scalars")
@attrs.frozen
class Scalars:
    s: str
    i: int
    f: float
    b: bool
    o: int | None = None
    g: float | None = None


@pt.command("codec/inner")
@attrs.frozen
class Inner:
    x: int
    tag: str = ""


@pt.command("codec/nested")
@attrs.frozen
class Nested:
    inner: Inner
    items: list[Inner] = attrs.Factory(list)
    maybe: Inner | None = None
    weights: dict[str, float] = attrs.Factory(dict)
    words: tuple[str, ...] = ()


@pt.command("codec/kinds")
@attrs.frozen
class Kinds:
    kind: Literal["a", "b"]
    numbers: list[int]
    flags: dict[str, bool] = attrs.Factory(dict)
    limit: int = attrs.field(default=0, kw_only=True)


@pt.command("codec/validated")
@attrs.frozen
class Validated:
    n: int = attrs.field(validator=attrs.validators.gt(0))


def strip(text: str) -> str:
    return text.strip()


@pt.command("codec/converted")
@attrs.frozen
class Converted:
    text: str = attrs.field(converter=strip)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pt.command("codec/coloured")
@attrs.frozen
class Coloured:
    colour: Colour


@pt.command("codec/no-eq")
@attrs.frozen(eq=False)
class NoEq:
    n: int


@pt.command("codec/private")
@attrs.frozen
class Private:
    _n: int


@pt.command("codec/self-default")
@attrs.frozen
class SelfDefault:
    n: int
    twice: int = attrs.field(default=attrs.Factory(lambda self: self.n * 2, takes_self=True))


@pt.command("codec/tree")
@attrs.frozen
class Tree:
    label: str
    children: list[Tree] = attrs.Factory(list)


ON_MSGSPEC = (Scalars, Nested, Kinds, Validated, Converted)


def codecs(cls: type[Any]) -> tuple[CattrsCodec, MsgspecCodec]:
    reference = CattrsCodec(cls, converter())
    return reference, MsgspecCodec(cls, reference)


def verdict(decode: Any, payload: bytes) -> Any:
    """The decoded command, or the refusal and the command it names."""
    try:
        return decode(payload)
    except pt.DecodeError as exc:
        return f"refused, naming {exc.command_name}"
    except Exception:  # noqa: BLE001  (the fast path's own refusals)
        return "refused"


def ints(value: Any) -> list[int]:
    """Every int in a parsed JSON value."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in ints(v)]
    if isinstance(value, list):
        return [n for v in value for n in ints(v)]
    return [value] if type(value) is int else []


inners = st.builds(Inner, x=I64, tag=st.text())
commands = st.one_of(
    st.builds(Scalars, s=st.text(), i=WIDE_INT, f=FINITE, b=st.booleans(), o=st.none() | I64),
    st.builds(
        Nested,
        inner=inners,
        items=st.lists(inners, max_size=3),
        maybe=st.none() | inners,
        weights=st.dictionaries(st.text(), FINITE, max_size=3),
        words=st.lists(st.text(), max_size=3).map(tuple),
    ),
    st.builds(
        Kinds,
        kind=st.sampled_from(["a", "b"]),
        numbers=st.lists(WIDE_INT, max_size=4),
        flags=st.dictionaries(st.text(), st.booleans(), max_size=3),
        limit=I64,
    ),
    st.builds(Validated, n=st.integers(min_value=1, max_value=2**63 - 1)),
    st.builds(Converted, text=st.text().map(str.strip)),
)


class TestRoundTrip:
    """Encoded by either codec, decoded by either, a command comes back equal."""

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(cmd=commands)
    def test_all_four_combinations(self, cmd: Any) -> None:
        reference, fast = codecs(type(cmd))
        written: list[bytes | None] = []
        for codec in (reference, fast):
            try:
                written.append(codec.encode("c", cmd))
            except pt.DecodeError:
                written.append(None)
        if written[0] is None:
            # Lone surrogates, ints past 64 bits: both refuse them.
            assert written == [None, None]
            return
        old, new = written
        assert old is not None
        assert new is not None
        assert json.loads(old) == json.loads(new)
        for payload in (old, new):
            assert reference.decode("c", payload) == cmd
            assert fast.decode("c", payload) == cmd

    @given(cmd=commands)
    def test_the_fast_path_reads_what_orjson_wrote(self, cmd: Any) -> None:
        """Logs written before msgspec decode through it, not through the fallback."""
        reference, fast = codecs(type(cmd))
        try:
            old = reference.encode("c", cmd)
        except pt.DecodeError:
            return
        if all(-(2**63) <= n < 2**63 for n in ints(json.loads(old))):
            assert fast.fast_decode(old) == cmd


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | WIDE_INT | FINITE | st.text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=6,
    )


def objects_for(cls: type[Any], valid: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """JSON objects mostly shaped like ``cls``: right or wrong values, keys left out or added."""
    fields = {name: st.one_of(value, json_values()) for name, value in valid.items()}
    return st.tuples(
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(st.sampled_from(["extra", "x", "s"]), json_values(), max_size=1),
        st.booleans(),
    ).map(lambda t: (cls, {**t[0], **t[1]} if t[2] else t[0]))


inner_objects = st.fixed_dictionaries(
    {"x": st.one_of(WIDE_INT, json_values())}, optional={"tag": st.text(), "junk": st.integers()}
)
arbitrary = st.one_of(
    objects_for(
        Scalars,
        {"s": st.text(), "i": WIDE_INT, "f": FINITE | WIDE_INT, "b": st.booleans(), "o": I64},
    ),
    objects_for(
        Nested,
        {
            "inner": inner_objects,
            "items": st.lists(inner_objects, max_size=2),
            "maybe": st.none() | inner_objects,
            "weights": st.dictionaries(st.text(), FINITE | WIDE_INT, max_size=2),
            "words": st.lists(st.text(), max_size=2),
        },
    ),
    objects_for(
        Kinds,
        {
            "kind": st.sampled_from(["a", "b", "c"]),
            "numbers": st.lists(WIDE_INT, max_size=3),
            "flags": st.dictionaries(st.text(), st.booleans(), max_size=2),
            "limit": WIDE_INT,
        },
    ),
    objects_for(Validated, {"n": WIDE_INT}),
    objects_for(Converted, {"text": st.text()}),
)


# Number texts JSON allows, ints and floats of every size.
NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})([.][0-9]{1,20})?([eE][-+]?[0-9]{1,3})?\Z")


class TestArbitraryPayloads:
    """Any JSON object is accepted or refused alike, and accepted as the same command."""

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(case=arbitrary)
    def test_same_verdict(self, case: tuple[type[Any], dict[str, Any]]) -> None:
        cls, data = case
        assert_same_verdict(cls, json.dumps(data).encode())

    @given(i=NUMBER_TEXT, f=NUMBER_TEXT)
    def test_number_texts(self, i: str, f: str) -> None:
        """orjson and msgspec read the same number texts as the same ints and floats."""
        assert_same_verdict(Scalars, f'{{"s": "", "b": false, "i": {i}, "f": {f}}}'.encode())


def assert_same_verdict(cls: type[Any], payload: bytes) -> None:
    """Both codecs accept or refuse ``payload`` alike, and the msgspec path alone
    accepts only what cattrs accepts, building the same command."""
    reference, fast = codecs(cls)
    expected = verdict(lambda p: reference.decode("c", p), payload)
    assert verdict(lambda p: fast.decode("c", p), payload) == expected
    quick = verdict(fast.fast_decode, payload)
    if quick != "refused":
        assert quick == expected


class TestRefusals:
    """Bad payloads are refused by the msgspec codec with cattrs's own messages."""

    @pytest.mark.parametrize(
        ("cls", "payload", "detail"),
        [
            pytest.param(Scalars, b'{"s":"a","i":1,"f":1,"b":true,"z":1}', "extra", id="unknown"),
            pytest.param(Nested, b'{"inner":{"x":1,"y":2}}', r"extra.*\$\.inner", id="nested"),
            pytest.param(Nested, b'{"items":[{"x":1,"q":0}],"inner":{"x":1}}', "extra", id="list"),
            pytest.param(Scalars, b'{"s":"a","i":true,"f":1,"b":true}', "expected int", id="bool"),
            pytest.param(Scalars, b'{"s":"a","i":"5","f":1,"b":true}', "expected int", id="str"),
            pytest.param(Scalars, b'{"s":5,"i":5,"f":1,"b":true}', "expected str", id="int-str"),
            pytest.param(Scalars, b'{"s":"a","i":1,"f":true,"b":true}', "expected float", id="bf"),
            pytest.param(Scalars, b'{"s":"a","i":1,"f":NaN,"b":true}', "not valid JSON", id="nan"),
            pytest.param(Scalars, b'{"s":"a","i":1,"f":-Infinity,"b":true}', "JSON", id="inf"),
            pytest.param(Scalars, b'{"s":"a","i":1,"f":1e999,"b":true}', "JSON", id="overflow"),
            pytest.param(Scalars, b'{"s":"a","f":1,"b":true}', "missing @ \\$.i", id="missing"),
            pytest.param(Nested, b'{"inner":{}}', "missing @ \\$.inner.x", id="nested-missing"),
            pytest.param(Scalars, b'{"s":"a","i":1,"f":1,"b":null}', "expected bool", id="null"),
            pytest.param(Kinds, b'{"kind":"c","numbers":[]}', "kind", id="literal"),
            pytest.param(Validated, b'{"n":0}', "invalid value", id="validator"),
            pytest.param(Scalars, b"[1]", "JSON object", id="array"),
        ],
    )
    def test_refused_alike(self, cls: type[Any], payload: bytes, detail: str) -> None:
        reference, fast = codecs(cls)
        with pytest.raises(pt.DecodeError, match=detail) as info:
            fast.decode("c", payload)
        assert info.value.command_name == "c"
        with pytest.raises(pt.DecodeError) as old:
            reference.decode("c", payload)
        assert str(info.value) == str(old.value)

    @pytest.mark.parametrize(
        "cmd",
        [
            pytest.param(Scalars("a", 1, math.nan, b=True), id="nan"),
            pytest.param(Scalars("a", 1, math.inf, b=True), id="inf"),
            pytest.param(Scalars("a", 1, 1.0, b=True, g=math.nan), id="nan-as-null"),
            pytest.param(Scalars("a", 2**64, 1.0, b=True), id="past-64-bits"),
            pytest.param(Scalars("a", i=True, f=1.0, b=True), id="bool-for-int"),
            pytest.param(Scalars("\ud800", 1, 1.0, b=True), id="lone-surrogate"),
            pytest.param(Nested(Inner("x")), id="nested-wrong-type"),  # type: ignore[arg-type]
        ],
    )
    def test_encode_refuses_what_would_not_decode(self, cmd: Any) -> None:
        """A NaN that msgspec writes as null is refused, even where null is allowed."""
        reference, fast = codecs(type(cmd))
        with pytest.raises(pt.DecodeError) as info:
            fast.encode("c", cmd)
        with pytest.raises(pt.DecodeError) as old:
            reference.encode("c", cmd)
        assert str(info.value) == str(old.value)

    async def test_execute_refuses_nan(self) -> None:
        registry = pt.CommandRegistry()
        registry.register(Scalars)
        with pytest.raises(pt.DecodeError, match="codec/scalars: "):
            registry.encode(Scalars("a", 1, 1.0, b=True, g=math.inf))


class TestBuilding:
    """The class is built as cattrs builds it: defaults, validators and converters."""

    def test_defaults(self) -> None:
        _, fast = codecs(Nested)
        first = fast.fast_decode(b'{"inner":{"x":1}}')
        second = fast.fast_decode(b'{"inner":{"x":1}}')
        assert first == Nested(Inner(1))
        assert first.items is not second.items  # a factory's value is never shared

    def test_keyword_only_fields(self) -> None:
        _, fast = codecs(Kinds)
        assert fast.fast_decode(b'{"kind":"a","numbers":[1],"limit":3}') == Kinds("a", [1], limit=3)

    def test_converter_applies(self) -> None:
        reference, fast = codecs(Converted)
        payload = b'{"text": "  padded "}'
        assert fast.fast_decode(payload) == Converted("padded")
        assert reference.decode("c", payload) == Converted("padded")

    def test_validator_runs(self) -> None:
        _, fast = codecs(Validated)
        with pytest.raises(ValueError, match="must be > 0"):
            fast.fast_decode(b'{"n": -1}')

    def test_ints_past_int64_still_decode(self) -> None:
        """orjson reads unsigned 64-bit ints; the fallback keeps them readable."""
        _, fast = codecs(Scalars)
        payload = b'{"s":"","i":18446744073709551615,"f":0,"b":false}'
        assert fast.decode("c", payload).i == 2**64 - 1

    def test_duplicate_keys(self) -> None:
        """orjson keeps a repeated key's last value; so does the mirror, nested too."""
        reference, fast = codecs(Nested)
        payload = b'{"inner": {"x": 1, "x": 3}, "weights": {"a": 1, "a": 2.5}}'
        assert fast.fast_decode(payload) == reference.decode("c", payload)
        assert fast.fast_decode(payload) == Nested(Inner(3), weights={"a": 2.5})

    def test_text_payloads(self) -> None:
        _, fast = codecs(Scalars)
        assert fast.decode("c", '{"s":"é","i":1,"f":2,"b":true}') == Scalars("é", 1, 2.0, b=True)


class TestChoice:
    """Each class gets msgspec's codec where its mirror holds, cattrs's otherwise."""

    @pytest.mark.parametrize("cls", ON_MSGSPEC)
    def test_msgspec_where_it_holds(self, cls: type[Any]) -> None:
        assert isinstance(pt.CommandRegistry().codec(cls), MsgspecCodec)

    @pytest.mark.parametrize(
        ("cmd", "payload"),
        [
            pytest.param(Coloured(Colour.RED), b'{"colour":"red"}', id="enum"),
            pytest.param(NoEq(1), b'{"n":1}', id="no-equality"),
            pytest.param(Private(1), b'{"_n":1}', id="private-field"),
            pytest.param(SelfDefault(2), b'{"n":2,"twice":4}', id="factory-takes-self"),
            pytest.param(Tree("a", [Tree("b")]), None, id="refers-to-itself"),
        ],
    )
    def test_cattrs_for_the_rest(self, cmd: Any, payload: bytes | None) -> None:
        registry = pt.CommandRegistry()
        codec = registry.codec(type(cmd))
        assert isinstance(codec, CattrsCodec)
        name, written = registry.encode(cmd)
        if payload is not None:
            assert written == payload
        back = registry.decode(name, written)
        assert type(back) is type(cmd)
        assert attrs.astuple(back) == attrs.astuple(cmd)
        assert registry.codec(type(cmd)) is codec  # chosen once

    def test_structure_keeps_cattrs(self) -> None:
        registry = pt.CommandRegistry()
        with pytest.raises(pt.DecodeError, match="extra fields"):
            registry.structure("codec/inner", Inner, {"x": 1, "y": 2})
        assert registry.structure("codec/inner", Inner, {"x": 1}) == Inner(1)
