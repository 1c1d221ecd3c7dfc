"""``GET /messages`` under hostile input: every answer JSON, every page bounded.

Rows another program wrote into the SQLite file are inserted with the sqlite3 module
itself; pages are read through a real Hypercorn server with a real httpx client.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

import petrock_trio as pt
import petrock_trio.stores
import petrock_trio.testing
from petrock_trio.testing import serving
from tests.support import Note, make_app

KIB = 1024
MIB = 1024 * KIB


@asynccontextmanager
async def api(app: pt.App, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, serving(app):
            url = await nursery.start(partial(pt.serve_http, app, port=0, **options))
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                yield client
            nursery.cancel_scope.cancel()


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"]
    return response.status_code, error["type"]


class TestParameters:
    @pytest.mark.parametrize(
        "params",
        [
            pytest.param({"after": str(2**63)}, id="after-beyond-int64"),
            pytest.param({"after": "-1"}, id="negative-after"),
            pytest.param({"after": "-9223372036854775809"}, id="after-below-int64"),
            pytest.param({"after": "1" * 5000}, id="after-of-5000-digits"),
            pytest.param({"limit": str(10**30)}, id="limit-beyond-int64"),
            pytest.param({"limit": "abc"}, id="text-limit"),
            pytest.param({"limit": "-5"}, id="negative-limit"),
            pytest.param({"limit": " 5"}, id="limit-with-space"),
            pytest.param({"limit": "1_0"}, id="limit-with-underscore"),
            pytest.param({"limit": "\u0665"}, id="limit-in-arabic-digits"),
            pytest.param({"max_bytes": "0"}, id="zero-budget"),
            pytest.param({"full": "maybe"}, id="full-not-a-flag"),
        ],
    )
    async def test_out_of_range_or_malformed_is_400_json(self, params: dict[str, str]) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            await app.execute(Note("one"))
            response = await client.get("/messages", params=params)
            assert error_of(response) == (400, "BadRequest")

    async def test_the_largest_int64_is_fine(self) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            response = await client.get("/messages", params={"after": str(2**63 - 1)})
            assert response.status_code == 200
            assert response.json()["messages"] == []
            assert response.json()["next_after"] is None


def raw_rows(path: Path, rows: list[tuple[Any, str, Any]]) -> list[int]:
    """Insert ``(timestamp, name, payload)`` rows as another program would; their ids."""
    with sqlite3.connect(path) as conn:
        ids = []
        for timestamp, name, payload in rows:
            cursor = conn.execute(
                "INSERT INTO messages (timestamp, name, payload) VALUES (?, ?, ?)",
                (timestamp, name, payload),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
    conn.close()
    return ids


async def log_with_bad_rows(path: Path) -> list[int]:
    """A SQLite log: one good note, then rows no worker routes that another program wrote."""
    async with pt.open_log(str(path), commands=[Note]) as log:
        await log.append(Note("good"))
    return raw_rows(
        path,
        [
            (1e20, "other/far-future", b'{"a": 1}'),
            ("yesterday", "other/words", b'{"a": 2}'),
            (1700000000.0, "other/not-json", b"\xffnot json {"),
            (1700000000.0, "other/text-payload", '{"as": "text"}'),
            (float("-inf"), "other/minus-infinity", b"{}"),
        ],
    )


class TestRowsOfAnotherProgram:
    async def test_pages_answer_with_the_rows_marked_undecodable(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.db"
        await log_with_bad_rows(path)
        app, _, _ = make_app(str(path))
        async with api(app) as client:
            pages = [
                await client.get("/messages", params={"after": 0}),
                await client.get("/messages"),
                await client.get("/messages", params={"after": 0, "full": "true"}),
            ]
        for response in pages:
            assert response.status_code == 200, response.text
            by_name = {m["name"]: m for m in response.json()["messages"]}
            good = by_name["test/note"]
            assert good["payload"] == {"text": "good"}
            assert "undecodable" not in good
            assert datetime.fromisoformat(good["timestamp"]).tzinfo is not None
            for name in ("other/far-future", "other/words", "other/minus-infinity"):
                assert by_name[name]["timestamp"] is None
                assert "timestamp" in by_name[name]["undecodable"]
            assert by_name["other/far-future"]["payload"] == {"a": 1}
            assert "yesterday" in by_name["other/words"]["undecodable"]
            not_json = by_name["other/not-json"]
            assert "JSON" in not_json["undecodable"]
            assert "not json" in not_json["payload"]
            assert datetime.fromisoformat(not_json["timestamp"]).year == 2023
            text = by_name["other/text-payload"]
            assert text["payload"] == {"as": "text"}
            assert "undecodable" not in text


async def fill(app: pt.App) -> list[int]:
    """50 notes of 100 KiB each; their ids."""
    messages = await app.log.append(*(Note(f"{i:03}" + "x" * 100 * KIB) for i in range(50)))
    return [m.id for m in messages]


class TestBudget:
    """50 messages of 100 KiB: pages stay within the byte budget, and chain to all 50."""

    async def test_listing_truncates_payloads_with_a_marker(self) -> None:
        app, _, _ = make_app(max_payload_bytes=MIB)
        async with api(app) as client:
            ids = await fill(app)
            response = await client.get("/messages", params={"after": 0, "limit": 500})
        assert response.status_code == 200
        body = response.json()
        assert [m["id"] for m in body["messages"]] == ids
        assert body["next_after"] is None
        assert len(response.content) <= 50 * 5 * KIB
        for index, message in enumerate(body["messages"]):
            assert message["truncated"] is True
            assert message["payload_bytes"] == len(b'{"text":""}') + 3 + 100 * KIB
            assert isinstance(message["payload"], str)
            assert message["payload"].startswith(f'{{"text":"{index:03}xxx')
            assert len(message["payload"].encode()) <= 4 * KIB

    async def test_full_payloads_page_within_the_budget(self) -> None:
        app, _, _ = make_app(max_payload_bytes=MIB)
        seen: list[int] = []
        after = 0
        pages = 0
        async with api(app) as client:
            ids = await fill(app)
            while True:
                params: dict[str, str | int] = {"after": after, "limit": 500, "full": "true"}
                response = await client.get("/messages", params=params)
                assert response.status_code == 200
                assert len(response.content) <= MIB + 4 * KIB
                body = response.json()
                pages += 1
                for message in body["messages"]:
                    assert "truncated" not in message
                    assert message["payload"]["text"].startswith(f"{len(seen):03}x")
                    seen.append(message["id"])
                if body["next_after"] is None:
                    break
                assert body["next_after"] == seen[-1]
                after = body["next_after"]
        assert seen == ids
        assert pages >= 5

    async def test_a_client_asks_for_a_smaller_page(self) -> None:
        app, _, _ = make_app(max_payload_bytes=MIB)
        async with api(app) as client:
            ids = await fill(app)
            small = await client.get("/messages", params={"limit": 25, "max_bytes": 20 * KIB})
            forward = await client.get("/messages", params={"after": 0, "max_bytes": 20 * KIB})
        assert len(small.content) <= 24 * KIB
        newest = [m["id"] for m in small.json()["messages"]]
        # Without `after`, the newest messages that fit.
        assert newest == ids[-len(newest) :]
        assert 2 <= len(newest) < 25
        oldest = [m["id"] for m in forward.json()["messages"]]
        assert oldest == ids[: len(oldest)]
        assert forward.json()["next_after"] == oldest[-1]

    async def test_the_servers_budget_is_configurable(self) -> None:
        app, _, _ = make_app(max_payload_bytes=MIB)
        async with api(app, max_page_bytes=8 * KIB) as client:
            await fill(app)
            response = await client.get("/messages", params={"after": 0, "max_bytes": MIB})
        assert len(response.content) <= 12 * KIB
        assert response.json()["next_after"] is not None


class TestDisconnects:
    async def test_a_client_gone_mid_body_is_logged_at_debug(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        app, _, _ = make_app()
        caplog.set_level(logging.DEBUG)
        with capture_logs() as logs:
            async with api(app) as client:
                port = client.base_url.port
                assert port is not None
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(
                    b"POST /commands/test/add HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b'Content-Length: 1000\r\n\r\n{"key": '
                )
                await trio.sleep(0.2)
                await stream.aclose()
                with trio.fail_after(10):
                    while not [e for e in logs if e["event"] == "petrock.http.disconnected"]:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                assert (await client.get("/health")).status_code == 200
        (line,) = [e for e in logs if e["event"] == "petrock.http.disconnected"]
        assert line["log_level"] == "debug"
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert app.state.totals == {}


async def test_an_unexpected_error_is_answered_in_json(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, _ = make_app()

    def broken() -> Any:
        raise KeyError("boom")

    async with api(app) as client:
        monkeypatch.setattr(app, "inspect", broken)
        response = await client.get("/inspect")
    assert error_of(response) == (500, "InternalError")


async def test_a_failing_store_is_503_json() -> None:
    store = pt.testing.FaultyStore(pt.stores.open_store(":memory:"))
    app, _, _ = make_app(store=store)
    async with api(app) as client:
        store.fail_reads(1)
        response = await client.get("/messages", params={"after": 0})
        assert error_of(response) == (503, "StoreError")
        assert (await client.get("/messages", params={"after": 0})).status_code == 200


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"token": ""}, id="empty-token"),
        pytest.param({"allowed_hosts": "app.example"}, id="hosts-as-one-string"),
        pytest.param({"max_page_bytes": 0}, id="no-page-budget"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any]) -> None:
    app, _, _ = make_app()
    with pytest.raises(pt.ConfigurationError):
        pt.http_app(app, **options)
