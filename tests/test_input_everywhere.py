"""Bad input wherever a user can reach: HTTP bodies, payloads, configuration."""

from __future__ import annotations

import json
from functools import partial
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Add, Note, make_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"key": json_values}, optional={"amount": json_values}).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=64),
)


async def post_all(names: list[str], payloads: list[bytes]) -> tuple[list[int], int]:
    app, _, _ = make_app()
    statuses: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client, serving(app):
                for name, body in zip(names, payloads, strict=True):
                    response = await client.post(
                        f"/commands/{name}",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    statuses.append(response.status_code)
                    if response.status_code >= 400:
                        error = response.json()["error"]
                        assert error["type"]
                        assert error["message"]
                await app.caught_up()
                head = app.log.head.value
                accepted_notes = head
            nursery.cancel_scope.cancel()
    return statuses, accepted_notes


@settings(max_examples=25)
@given(
    st.lists(
        st.tuples(st.sampled_from(["test/add", "test/note", "nope/none", "test%2Fadd"]), bodies),
        min_size=5,
        max_size=25,
    )
)
def test_generated_http_bodies(requests: list[tuple[str, bytes]]) -> None:
    names = [name for name, _ in requests]
    payloads = [body for _, body in requests]
    statuses, head = trio.run(post_all, names, payloads)
    assert set(statuses) <= {201, 400, 404, 413, 422}
    accepted = statuses.count(201)
    # Each accepted Add is echoed once by the tally worker; nothing else was appended.
    # The path is percent-decoded: "test%2Fadd" names test/add too.
    adds = sum(
        1
        for name, s in zip(names, statuses, strict=True)
        if s == 201 and unquote(name) == "test/add"
    )
    assert head == accepted + adds
    print(f"{len(statuses)} bodies: {accepted} accepted, {len(statuses) - accepted} refused")


class TestPayloads:
    """Edge cases of command payloads: each refused with DecodeError or PayloadTooLarge."""

    @pytest.mark.parametrize(
        ("payload", "error"),
        [
            pytest.param(
                b'{"text": "' + b"x" * 2_000_000 + b'"}', pt.PayloadTooLarge, id="huge-string"
            ),
            pytest.param(
                b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", pt.DecodeError, id="deep-nesting"
            ),
            pytest.param(b'{"text": "\\ud800"}', pt.DecodeError, id="lone-surrogate"),
            pytest.param(b'{"text": "\xc3\x28"}', pt.DecodeError, id="invalid-utf8"),
            pytest.param(b'{"text": NaN}', pt.DecodeError, id="nan"),
            pytest.param(b'{"text": "a", "text": 5}', pt.DecodeError, id="duplicate-key"),
            pytest.param(b"", pt.DecodeError, id="empty"),
        ],
    )
    def test_decode_refuses(self, payload: bytes, error: type[Exception]) -> None:
        registry = pt.CommandRegistry()
        registry.register(Note)
        with pytest.raises(error):
            registry.decode("test/note", payload)

    @pytest.mark.parametrize(
        "cmd",
        [
            pytest.param(Add("k", 2**64), id="int-beyond-64-bits"),
            pytest.param(Note("\udc80"), id="lone-surrogate"),
            pytest.param(Note(["not", "a", "string"]), id="wrong-type"),  # type: ignore[arg-type]
        ],
    )
    async def test_execute_refuses_and_appends_nothing(self, cmd: Any) -> None:
        app, _, _ = make_app()
        async with serving(app):
            with pytest.raises(pt.DecodeError):
                await app.execute(cmd)
            assert app.log.head.value == 0


class TestConfiguration:
    """Settings that cannot work are refused when the object is built."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"page_size": 0},
            {"max_payload_bytes": 0},
            {"shutdown_grace": -1},
            {"position_flush_interval": 0},
            {"synchronous": "SOMETIMES"},
        ],
    )
    def test_app(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.App(**kwargs)

    @pytest.mark.parametrize(
        "kwargs",
        [{"name": " "}, {"name": "w", "handler_timeout": 0}, {"name": "w", "periodic_timeout": -1}],
    )
    def test_worker(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.PatternWorker(**kwargs)

    def test_routes_and_periodic(self) -> None:
        worker: pt.PatternWorker[None] = pt.PatternWorker("w")

        async def handler(ctx: pt.HandlerContext, cmd: Any, state: None) -> None:
            pass

        with pytest.raises(pt.ConfigurationError):
            worker.on_command("x/y", handler, timeout=0)
        with pytest.raises(pt.ConfigurationError):
            worker.on_command("x/y", "not callable")  # type: ignore[call-overload]
        with pytest.raises(pt.ConfigurationError):
            worker.set_periodic_work(handler, interval=0)  # type: ignore[arg-type]

    def test_database_urls(self) -> None:
        with pytest.raises(pt.ConfigurationError):
            pt.App(database=None)  # type: ignore[arg-type]

    async def test_unopenable_database_is_a_store_error(self, tmp_path: Any) -> None:
        app = pt.App(database=str(tmp_path / "no" / "such" / "dir" / "x.db"))
        with pytest.RaisesGroup(pt.StoreError, flatten_subgroups=True, allow_unwrapped=True):
            async with serving(app):
                pass
