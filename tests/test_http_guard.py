"""Who may drive the HTTP API: the Host allowlist, the Origin check, binding beyond loopback.

A real Hypercorn server on a free port and a real httpx client, as in test_http.py; the
client names the Host and Origin a browser would send from another site's page.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio.testing import serving
from tests.support import Note, make_app

TOKEN = "guard-token"
EVIL = "evil.example"


@asynccontextmanager
async def api(
    app: pt.App, host: str = "127.0.0.1", **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` served on ``host`` (a free port), connecting over loopback."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, serving(app):
            url: str = await nursery.start(partial(pt.serve_http, app, host, 0, **options))
            port = int(url.rsplit(":", 1)[1])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                yield c
            nursery.cancel_scope.cancel()


def port_of(client: httpx.AsyncClient) -> int:
    port = client.base_url.port
    assert port is not None
    return port


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["message"]
    return response.status_code, error["type"]


async def head_of(app: pt.App) -> int:
    await app.caught_up()
    head: int = app.log.head.value
    return head


class TestRebinding:
    """A page of another site whose name resolves to 127.0.0.1 drives nothing."""

    async def test_a_post_from_a_rebound_name_appends_nothing(self) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            head = await head_of(app)
            evil = {
                "Host": f"{EVIL}:{port_of(client)}",
                "Origin": f"http://{EVIL}:{port_of(client)}",
            }
            response = await client.post("/commands/test/add", json={"key": "a"}, headers=evil)
            assert error_of(response) == (403, "HostNotAllowed")
            assert EVIL in response.json()["error"]["message"]
            assert await head_of(app) == head
            assert app.state.totals == {}

    @pytest.mark.parametrize(
        "path", ["/messages", "/inspect", "/", "/health", "/metrics", "/dead-letters", "/nowhere"]
    )
    async def test_reads_from_a_rebound_name_are_refused(self, path: str) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            await app.execute(Note("secret"))
            response = await client.get(path, headers={"Host": EVIL})
            assert error_of(response) == (403, "HostNotAllowed")
            assert "secret" not in response.text

    async def test_redrive_from_a_rebound_name_is_refused(self) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            response = await client.post("/dead-letters/tally/1/redrive", headers={"Host": EVIL})
            assert error_of(response) == (403, "HostNotAllowed")

    @pytest.mark.parametrize(
        "host",
        [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8000",
            "localhost.",
        ],
    )
    async def test_loopback_names_are_allowed(self, host: str) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            assert (await client.get("/health", headers={"Host": host})).status_code == 200

    @pytest.mark.parametrize(
        "host",
        [
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "evil.example:8000",
            "127.0.0.2",
            "127.0.0.1:port",
            "[::1",
            "",
        ],
    )
    async def test_other_names_are_refused(self, host: str) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            response = await client.get("/health", headers={"Host": host})
            assert error_of(response) == (403, "HostNotAllowed")


class TestAllowlist:
    """``allowed_hosts`` adds names; ``"*"`` allows any."""

    async def test_added_names_are_allowed_and_loopback_stays(self) -> None:
        app, _, _ = make_app()
        async with api(app, allowed_hosts=["app.example", "pinned.example:9000"]) as client:
            for host in ("app.example", "APP.example:8443", "pinned.example:9000", "localhost"):
                response = await client.get("/health", headers={"Host": host})
                assert response.status_code == 200, host
            for host in ("pinned.example", "pinned.example:9001", EVIL):
                response = await client.get("/health", headers={"Host": host})
                assert error_of(response) == (403, "HostNotAllowed"), host

    async def test_star_allows_any_host(self) -> None:
        app, _, _ = make_app()
        async with api(app, allowed_hosts=["*"]) as client:
            assert (await client.get("/health", headers={"Host": EVIL})).status_code == 200

    def test_http_app_takes_the_list_too(self) -> None:
        app, _, _ = make_app()
        pt.http_app(app, allowed_hosts=["app.example", "[::2]:80", "::3"])

    @pytest.mark.parametrize("entry", ["", "a b", "http://app.example", "app.example:port", "[::1"])
    def test_bad_entries_are_refused(self, entry: str) -> None:
        app, _, _ = make_app()
        with pytest.raises(pt.ConfigurationError):
            pt.http_app(app, allowed_hosts=[entry])


class TestOrigin:
    """State-changing requests from a browser must come from an allowed origin."""

    @pytest.mark.parametrize(
        "origin", [f"http://{EVIL}", "null", f"http://{EVIL}:8000", "http://127.0.0.1.evil.example"]
    )
    async def test_a_foreign_origin_is_refused_with_an_allowed_host(self, origin: str) -> None:
        app, _, _ = make_app()
        async with api(app) as client:
            head = await head_of(app)
            response = await client.post(
                "/commands/test/add", json={"key": "a"}, headers={"Origin": origin}
            )
            assert error_of(response) == (403, "Forbidden")
            redrive = await client.post("/dead-letters/tally/1/redrive", headers={"Origin": origin})
            assert error_of(redrive) == (403, "Forbidden")
            assert await head_of(app) == head

    async def test_origins_in_the_allowlist_are_accepted(self) -> None:
        app, _, _ = make_app()
        async with api(app, allowed_hosts=["app.example"]) as client:
            port = port_of(client)
            for origin in (
                f"http://127.0.0.1:{port}",
                f"http://localhost:{port}",
                "https://app.example",
            ):
                response = await client.post(
                    "/commands/test/add", json={"key": "a"}, headers={"Origin": origin}
                )
                assert response.status_code == 201, origin
            assert app.state.totals == {"a": 3}

    async def test_with_star_the_origin_must_be_the_requests_own(self) -> None:
        app, _, _ = make_app()
        async with api(app, allowed_hosts=["*"]) as client:
            other = {"Host": "app.example", "Origin": f"http://{EVIL}"}
            response = await client.post("/commands/test/add", json={"key": "a"}, headers=other)
            assert error_of(response) == (403, "Forbidden")
            own = {"Host": "app.example", "Origin": "http://app.example"}
            ok = await client.post("/commands/test/add", json={"key": "a"}, headers=own)
            assert ok.status_code == 201


class TestExposure:
    """Beyond loopback, a token is required unless the operator says otherwise."""

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
    async def test_no_token_beyond_loopback_is_refused(self, host: str) -> None:
        app, _, _ = make_app()
        with trio.fail_after(10), pytest.raises(pt.ConfigurationError, match="token"):
            await pt.serve_http(app, host, 0)

    async def test_a_token_beyond_loopback_warns_that_reads_are_open(self) -> None:
        app, _, _ = make_app()
        with capture_logs() as logs:
            async with api(app, "0.0.0.0", token=TOKEN) as client:
                assert (await client.get("/health")).status_code == 200
                refused = await client.post("/commands/test/add", json={"key": "a"})
                assert error_of(refused) == (401, "Unauthorized")
        (warning,) = [line for line in logs if line["event"] == "petrock.http.exposed"]
        assert warning["log_level"] == "warning"
        assert "read" in warning["risk"]

    async def test_allow_no_token_serves_and_warns_loudly(self) -> None:
        app, _, _ = make_app()
        with capture_logs() as logs:
            async with api(app, "0.0.0.0", allow_no_token=True) as client:
                response = await client.post("/commands/test/add", json={"key": "a"})
                assert response.status_code == 201
        (warning,) = [line for line in logs if line["event"] == "petrock.http.insecure"]
        assert warning["log_level"] == "warning"
        assert "submit commands" in warning["risk"]

    async def test_loopback_needs_no_token_and_warns_nothing(self) -> None:
        app, _, _ = make_app()
        with capture_logs() as logs:
            async with api(app) as client:
                assert (await client.get("/health")).status_code == 200
        assert [line for line in logs if line["event"].startswith("petrock.http.")] == []

    async def test_the_bound_names_are_allowed(self) -> None:
        app, _, _ = make_app()
        async with api(app, "0.0.0.0", token=TOKEN) as client:
            port = port_of(client)
            for host in (f"0.0.0.0:{port}", socket.gethostname()):
                response = await client.get("/health", headers={"Host": host})
                assert response.status_code == 200, host
            response = await client.get("/health", headers={"Host": EVIL})
            assert error_of(response) == (403, "HostNotAllowed")
