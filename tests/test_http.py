"""The HTTP API, through a real Hypercorn server on loopback and a real httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import petrock_trio as pt
from petrock_trio._http import MAX_MESSAGES
from petrock_trio.testing import serving
from tests.support import Add, Note, make_app

TOKEN = "s3cret-token"


@pt.command("http-test/poke")
@attrs.frozen
class Poke:
    n: int


@pt.command("http-test/unregistered")
@attrs.frozen
class Unregistered:
    n: int


@attrs.define
class Switch:
    broken: bool = True


def build(
    database: str = ":memory:",
    *,
    thresholds: pt.HealthThresholds | None = None,
    **kw: Any,
) -> tuple[pt.App, Switch]:
    """The support app (a `tally` worker) plus `fragile`, which fails while switched broken."""
    app, _, _ = make_app(database, **kw)
    switch = Switch()
    # Without a generous unhealthy threshold one error in the first second reads as
    # 60 errors a minute; the health tests choose the threshold they need.
    thresholds = thresholds or pt.HealthThresholds(unhealthy_errors_per_minute=1e9)
    fragile: pt.PatternWorker[None] = pt.PatternWorker(
        "fragile", "fails while broken", retry=pt.Backoff(max_attempts=1), health=thresholds
    )

    @fragile.on_command("http-test/poke")
    async def poke(ctx: pt.HandlerContext, cmd: Poke, state: None) -> None:
        if switch.broken:
            raise RuntimeError(f"broken on {cmd.n}")

    app.register_command(Poke)
    app.register_worker(fragile)
    return app, switch


@asynccontextmanager
async def api(
    app: pt.App, *, serve: bool = True, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``'s HTTP API on a free loopback port; the app served unless told."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0, **options))
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                if serve:
                    async with serving(app):
                        yield client
                else:
                    yield client
            nursery.cancel_scope.cancel()


async def finished(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """A re-drive ticket polled until it is resolved or failed."""
    with trio.fail_after(10):
        while True:
            ticket: dict[str, Any] = (await client.get(url)).json()
            if ticket["status"] in {"resolved", "failed"}:
                return ticket
            await trio.sleep(0.01)


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return response.status_code, error["type"]


async def settled_head(app: pt.App) -> int:
    await app.caught_up()
    head: int = app.log.head.value
    return head


class TestCommands:
    """POST /commands/{name} appends valid commands and nothing else."""

    async def test_appends_and_answers_201(self) -> None:
        app, _ = build()
        async with api(app) as client:
            response = await client.post("/commands/test/add", json={"key": "a", "amount": 2})
            assert response.status_code == 201
            body = response.json()
            assert body["id"] == 1
            assert body["name"] == "test/add"
            assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
            # The answer comes once state has the command.
            assert app.state.totals == {"a": 2}
            await app.caught_up()
            assert app.inspect()["positions"]["tally"] == app.log.head.value

    @pytest.mark.parametrize(
        ("name", "body", "status", "kind"),
        [
            pytest.param("test/add", b'{"key": ', 400, "DecodeError", id="malformed-json"),
            pytest.param("test/add", b"", 400, "DecodeError", id="empty-body"),
            pytest.param("test/add", b"\xff\xfe", 400, "DecodeError", id="not-utf8"),
            pytest.param("test/add", b"[1, 2]", 400, "DecodeError", id="not-an-object"),
            pytest.param("test/add", b'{"key": 5}', 400, "DecodeError", id="wrong-type"),
            pytest.param(
                "test/add", b'{"key": "a", "amount": true}', 400, "DecodeError", id="bool-for-int"
            ),
            pytest.param(
                "test/add", b'{"key": "a", "amount": 1.5}', 400, "DecodeError", id="float-for-int"
            ),
            pytest.param("test/add", b"{}", 400, "DecodeError", id="missing-field"),
            pytest.param(
                "test/add", b'{"key": "a", "extra": 1}', 400, "DecodeError", id="extra-field"
            ),
            pytest.param("nope/nothing", b"{}", 400, "UnknownCommand", id="unknown-name"),
            pytest.param(
                "http-test/unregistered", b'{"n": 1}', 400, "UnknownCommand", id="not-registered"
            ),
            pytest.param("test/named", b'{"name": "  "}', 422, "ValidationError", id="invalid"),
        ],
    )
    async def test_bad_input_is_refused_and_appends_nothing(
        self, name: str, body: bytes, status: int, kind: str
    ) -> None:
        app, _ = build()
        async with api(app) as client:
            await client.post("/commands/test/add", json={"key": "before"})
            head = await settled_head(app)
            response = await client.post(
                f"/commands/{name}", content=body, headers={"Content-Type": "application/json"}
            )
            assert error_of(response) == (status, kind)
            assert await settled_head(app) == head
            assert app.state.totals == {"before": 1}

    async def test_validation_sees_earlier_commands(self) -> None:
        app, _ = build()
        async with api(app) as client:
            first = await client.post("/commands/test/named", json={"name": "ada"})
            assert first.status_code == 201
            head = await settled_head(app)
            second = await client.post("/commands/test/named", json={"name": "ada"})
            assert error_of(second) == (422, "ValidationError")
            assert "taken" in second.json()["error"]["message"]
            assert await settled_head(app) == head

    async def test_body_over_the_limit_by_content_length(self) -> None:
        app, _ = build()
        async with api(app, max_body_bytes=1000) as client:
            head = await settled_head(app)
            response = await client.post("/commands/test/add", json={"key": "x" * 5000})
            assert error_of(response) == (413, "PayloadTooLarge")
            assert await settled_head(app) == head

    async def test_body_over_the_limit_without_content_length(self) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"key": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        app, _ = build()
        async with api(app, max_body_bytes=1000) as client:
            head = await settled_head(app)
            response = await client.post("/commands/test/add", content=chunks())
            assert response.request.headers.get("transfer-encoding") == "chunked"
            assert error_of(response) == (413, "PayloadTooLarge")
            assert await settled_head(app) == head

    async def test_chunked_body_within_the_limit_is_accepted(self) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"key": '
            yield b'"chunked"}'

        app, _ = build()
        async with api(app, max_body_bytes=1000) as client:
            response = await client.post("/commands/test/add", content=chunks())
            assert response.status_code == 201
            assert app.state.totals == {"chunked": 1}

    async def test_payload_over_the_apps_limit(self) -> None:
        app, _ = build(max_payload_bytes=200)
        async with api(app, max_body_bytes=10_000) as client:
            head = await settled_head(app)
            response = await client.post("/commands/test/add", json={"key": "x" * 500})
            assert error_of(response) == (413, "PayloadTooLarge")
            assert await settled_head(app) == head

    async def test_not_serving(self) -> None:
        app, _ = build()
        async with api(app, serve=False) as client:
            response = await client.post("/commands/test/add", json={"key": "a"})
            assert error_of(response) == (503, "NotRunning")
            for path in ("/messages", "/dead-letters"):
                assert error_of(await client.get(path)) == (503, "NotRunning")
            health = await client.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "unhealthy"
            inspect = await client.get("/inspect")
            assert inspect.status_code == 200
            assert inspect.json()["running"] is False


class TestToken:
    """With a token, changes need it; reads stay open."""

    @pytest.mark.parametrize(
        "authorization",
        [
            pytest.param(None, id="missing"),
            pytest.param("Bearer wrong", id="wrong"),
            pytest.param(f"Basic {TOKEN}", id="other-scheme"),
            pytest.param(f"Bearer {TOKEN}x", id="longer"),
        ],
    )
    async def test_changes_need_the_token(self, authorization: str | None) -> None:
        app, _ = build()
        headers = {} if authorization is None else {"Authorization": authorization}
        async with api(app, token=TOKEN) as client:
            head = await settled_head(app)
            response = await client.post("/commands/test/add", json={"key": "a"}, headers=headers)
            assert error_of(response) == (401, "Unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
            redrive = await client.post("/dead-letters/fragile/1/redrive", headers=headers)
            assert error_of(redrive) == (401, "Unauthorized")
            assert await settled_head(app) == head
            assert app.state.totals == {}

    async def test_the_token_lets_changes_through_and_reads_stay_open(self) -> None:
        app, _ = build()
        async with api(app, token=TOKEN) as client:
            response = await client.post(
                "/commands/test/add",
                json={"key": "a"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 201
            for path in ("/", "/inspect", "/health", "/metrics", "/messages", "/dead-letters"):
                assert (await client.get(path)).status_code == 200, path

    async def test_cross_origin_browser_requests_are_refused(self) -> None:
        app, _ = build()
        async with api(app) as client:
            head = await settled_head(app)
            evil = {"Origin": "http://evil.example"}
            response = await client.post("/commands/test/add", json={"key": "a"}, headers=evil)
            assert error_of(response) == (403, "Forbidden")
            assert await settled_head(app) == head
            same = {"Origin": str(client.base_url).rstrip("/")}
            ok = await client.post("/commands/test/add", json={"key": "a"}, headers=same)
            assert ok.status_code == 201


class TestReads:
    """Inspect, health, metrics and recent messages."""

    async def test_inspect(self) -> None:
        app, _ = build()
        async with api(app) as client:
            await client.post("/commands/test/add", json={"key": "a"})
            await client.post("/commands/http-test/poke", json={"n": 7})
            await app.caught_up()
            report = (await client.get("/inspect")).json()
        assert report["running"] is True
        assert report["head"] == 3  # add, its echo, poke
        assert set(report["workers"]) == {"tally", "fragile"}
        assert report["workers"]["tally"]["position"] == 3
        assert report["workers"]["tally"]["metrics"]["processed"] == 1
        assert report["workers"]["tally"]["last_error"] is None
        assert "broken on 7" in report["workers"]["fragile"]["last_error"]

    async def test_health_healthy_then_degraded(self) -> None:
        app, _ = build()
        async with api(app) as client:
            healthy = await client.get("/health")
            assert healthy.status_code == 200
            assert healthy.json() == {"status": "healthy", "reasons": []}
            await client.post("/commands/http-test/poke", json={"n": 1})
            await app.caught_up()
            degraded = await client.get("/health")
            assert degraded.status_code == 200
            assert degraded.json()["status"] == "degraded"
            assert any(r.startswith("fragile: ") for r in degraded.json()["reasons"])

    async def test_health_unhealthy_is_503(self) -> None:
        app, _ = build(thresholds=pt.HealthThresholds(unhealthy_errors_per_minute=0.5))
        async with api(app) as client:
            await client.post("/commands/http-test/poke", json={"n": 1})
            await app.caught_up()
            response = await client.get("/health")
            assert response.status_code == 503
            assert response.json()["status"] == "unhealthy"

    async def test_metrics_in_prometheus_text_format(self) -> None:
        app, _ = build()
        async with api(app) as client:
            for key in "abc":
                await client.post("/commands/test/add", json={"key": key})
            await client.post("/commands/http-test/poke", json={"n": 1})
            await app.caught_up()
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

        def sample(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert sample("petrock_up") == 1
        assert sample("petrock_log_head") == 7  # three adds, three echoes, one poke
        assert sample("petrock_projection_position") == 7
        add = {"worker": "tally", "command": "test/add"}
        assert sample("petrock_handler_attempts_total", **add, outcome="success") == 3
        assert sample("petrock_handler_duration_seconds_count", **add) == 3
        assert sample("petrock_handler_duration_seconds_sum", **add) > 0
        assert sample("petrock_handler_duration_seconds_bucket", **add, le="+Inf") == 3
        assert sample("petrock_worker_position", worker="tally") == 7
        assert sample("petrock_worker_lag_messages", worker="tally") == 0
        assert sample("petrock_worker_lag_seconds", worker="tally") == 0
        poke = {"worker": "fragile", "command": "http-test/poke"}
        assert sample("petrock_handler_attempts_total", **poke, outcome="RuntimeError") == 1
        assert sample("petrock_handler_attempts_total", **poke, outcome="success") == 0
        assert sample("petrock_dead_letters_total", **poke) == 1
        assert sample("petrock_dead_letters_outstanding", worker="fragile") == 1
        assert sample("petrock_worker_health", worker="fragile", status="degraded") == 1
        assert sample("petrock_worker_health", worker="fragile", status="healthy") == 0
        assert sample("petrock_worker_health", worker="tally", status="healthy") == 1
        assert sample("petrock_health", status="degraded") == 1
        assert sample("petrock_handler_retries_total", **add) == 0
        # Rates are Prometheus's to compute: none is exposed, nor any quantile gauge.
        names = {name for name, _ in samples}
        assert not [n for n in names if "per_second" in n or "per_minute" in n]
        assert not [labels for _, labels in samples if "quantile" in dict(labels)]

    def test_each_app_gets_its_own_metrics_registry(self) -> None:
        # Two apps in one process must not collide in a shared global registry.
        first, _ = build()
        second, _ = build()
        pt.http_app(first)
        pt.http_app(second)
        pt.http_app(first)

    async def test_recent_messages(self) -> None:
        app, _ = build()
        async with api(app) as client:
            for text in ("one", "two", "three"):
                await client.post("/commands/test/note", json={"text": text})
            latest = (await client.get("/messages", params={"limit": 2})).json()
            first = (await client.get("/messages", params={"after": 0, "limit": 1})).json()
            beyond = (await client.get("/messages", params={"after": 99})).json()
        assert latest["head"] == 3
        assert [(m["id"], m["name"], m["payload"]) for m in latest["messages"]] == [
            (2, "test/note", {"text": "two"}),
            (3, "test/note", {"text": "three"}),
        ]
        assert datetime.fromisoformat(latest["messages"][0]["timestamp"]).tzinfo is not None
        assert [m["payload"]["text"] for m in first["messages"]] == ["one"]
        assert beyond["messages"] == []

    async def test_messages_limit_is_capped(self) -> None:
        app, _ = build()
        async with api(app) as client:
            await app.log.append(*(Note(str(i)) for i in range(MAX_MESSAGES + 20)))
            body = (await client.get("/messages", params={"limit": 100_000})).json()
        assert len(body["messages"]) == MAX_MESSAGES
        assert body["messages"][-1]["id"] == MAX_MESSAGES + 20

    @pytest.mark.parametrize(
        "params",
        [
            pytest.param({"after": "-1"}, id="negative-after"),
            pytest.param({"after": "abc"}, id="text-after"),
            pytest.param({"limit": "0"}, id="zero-limit"),
            pytest.param({"limit": "1.5"}, id="float-limit"),
        ],
    )
    async def test_bad_message_parameters(self, params: dict[str, str]) -> None:
        app, _ = build()
        async with api(app) as client:
            response = await client.get("/messages", params=params)
            assert error_of(response) == (400, "BadRequest")

    async def test_unknown_paths_and_methods_answer_json(self) -> None:
        app, _ = build()
        async with api(app) as client:
            assert error_of(await client.get("/nowhere")) == (404, "NotFound")
            assert error_of(await client.get("/commands/test/add")) == (405, "MethodNotAllowed")
            assert error_of(await client.delete("/inspect")) == (405, "MethodNotAllowed")


class TestDeadLetters:
    """Dead letters are listed and re-driven over HTTP."""

    async def test_list_and_redrive(self) -> None:
        app, switch = build()
        async with api(app, token=TOKEN) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            await client.post("/commands/http-test/poke", json={"n": 1}, headers=auth)
            await app.caught_up()
            (letter,) = (await client.get("/dead-letters")).json()["dead_letters"]
            assert letter["worker"] == "fragile"
            assert letter["message_id"] == 1
            assert letter["command_name"] == "http-test/poke"
            assert letter["attempts"] == 1
            assert "broken on 1" in letter["error"]
            only_tally = await client.get("/dead-letters", params={"worker": "tally"})
            assert only_tally.json() == {"dead_letters": []}

            # A re-drive answers at once (202) with a ticket to poll.
            again = await client.post("/dead-letters/fragile/1/redrive", headers=auth)
            assert again.status_code == 202
            assert again.headers["location"] == again.json()["url"]
            failed = await finished(client, again.json()["url"])
            assert (failed["status"], failed["resolved"]) == ("failed", False)
            assert failed["dead_letter"]["attempts"] == 2

            switch.broken = False
            fixed = await client.post("/dead-letters/fragile/1/redrive", headers=auth)
            assert fixed.status_code == 202
            done = await finished(client, fixed.json()["url"])
            assert {k: done[k] for k in ("worker", "message_id", "resolved", "dead_letter")} == {
                "worker": "fragile",
                "message_id": 1,
                "resolved": True,
                "dead_letter": None,
            }
            assert (await client.get("/dead-letters")).json() == {"dead_letters": []}

            gone = await client.post("/dead-letters/fragile/1/redrive", headers=auth)
            assert error_of(gone) == (404, "NotFound")

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param("/dead-letters/nobody/1/redrive", id="unknown-worker"),
            pytest.param("/dead-letters/fragile/99/redrive", id="unknown-message"),
            pytest.param("/dead-letters/tally/1/redrive", id="not-dead-lettered"),
            pytest.param("/dead-letters/fragile/one/redrive", id="not-a-number"),
        ],
    )
    async def test_redrive_of_nothing_is_404(self, path: str) -> None:
        app, _ = build()
        async with api(app) as client:
            await client.post("/commands/test/add", json={"key": "a"})
            head = await settled_head(app)
            assert error_of(await client.post(path)) == (404, "NotFound")
            assert await settled_head(app) == head
            assert app.inspect()["workers"]["tally"]["metrics"]["processed"] == 1


async def test_add_through_the_log_shows_up(tmp_path: Any) -> None:
    """Commands appended by code (not HTTP) are what the API reports."""
    app, _ = build(str(tmp_path / "http.db"))
    async with api(app) as client:
        await app.execute(Add("z", 4))
        await app.caught_up()
        report = (await client.get("/inspect")).json()
    assert report["head"] == 2
    assert report["workers"]["tally"]["metrics"]["processed"] == 1
