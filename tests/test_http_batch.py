"""POST /commands: a batch through a real Hypercorn server, appended all or nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.test_http import TOKEN, api, build, error_of, settled_head


def batch(*items: tuple[str, Any]) -> dict[str, Any]:
    return {"commands": [{"name": name, "payload": payload} for name, payload in items]}


class TestBatch:
    """A batch is answered with its messages in order, once state has them."""

    async def test_appends_and_answers_201(self) -> None:
        app, _ = build()
        async with api(app) as client:
            body = batch(("test/add", {"key": "a"}), ("test/named", {"name": "ada"}))
            response = await client.post("/commands", json=body)
            assert response.status_code == 201, response.text
            messages = response.json()["messages"]
            assert [(m["id"], m["name"]) for m in messages] == [(1, "test/add"), (2, "test/named")]
            assert all(datetime.fromisoformat(m["timestamp"]).tzinfo for m in messages)
            assert app.state.totals == {"a": 1}
            assert app.state.names == {"ada"}

    async def test_empty_batch(self) -> None:
        app, _ = build()
        async with api(app) as client:
            response = await client.post("/commands", json={"commands": []})
            assert response.status_code == 201
            assert response.json() == {"messages": []}

    async def test_validated_in_order(self) -> None:
        app, _ = build()
        async with api(app) as client:
            body = batch(("test/named", {"name": "ada"}), ("test/named", {"name": "ada"}))
            response = await client.post("/commands", json=body)
            assert error_of(response) == (422, "ValidationError")
            error = response.json()["error"]
            assert (error["index"], error["command"]) == (1, "test/named")
            assert await settled_head(app) == 0


GOOD = ("test/add", {"key": "a"})
GOOD_ITEM = {"name": "test/add", "payload": {"key": "a"}}


@pytest.mark.parametrize(
    ("body", "status", "kind", "index"),
    [
        pytest.param(b'{"commands": [', 400, "DecodeError", None, id="malformed-json"),
        pytest.param(b"[]", 400, "DecodeError", None, id="not-an-object"),
        pytest.param(b"{}", 400, "DecodeError", None, id="no-commands"),
        pytest.param(b'{"commands": {}}', 400, "DecodeError", None, id="commands-not-a-list"),
        pytest.param(
            b'{"commands": [], "more": 1}', 400, "DecodeError", None, id="extra-top-level-key"
        ),
        pytest.param(batch(GOOD, ("nope/none", {})), 400, "UnknownCommand", 1, id="unknown"),
        pytest.param(
            batch(("http-test/unregistered", {"n": 1}), GOOD),
            400,
            "UnknownCommand",
            0,
            id="not-registered",
        ),
        pytest.param(
            batch(GOOD, GOOD, ("test/add", {"key": 5})), 400, "DecodeError", 2, id="wrong-type"
        ),
        pytest.param(batch(GOOD, ("test/add", [1])), 400, "DecodeError", 1, id="payload-a-list"),
        pytest.param({"commands": [{"name": "test/add"}]}, 400, "DecodeError", 0, id="no-payload"),
        pytest.param(
            {"commands": [{"name": 5, "payload": {}}]}, 400, "DecodeError", 0, id="name-a-number"
        ),
        pytest.param({"commands": [GOOD_ITEM, 7]}, 400, "DecodeError", 1, id="item-not-an-object"),
        pytest.param(
            {"commands": [{"name": "test/add", "payload": {"key": "a"}, "x": 1}]},
            400,
            "DecodeError",
            0,
            id="extra-item-key",
        ),
        pytest.param(
            batch(GOOD, ("test/named", {"name": " "})), 422, "ValidationError", 1, id="invalid"
        ),
        pytest.param(
            batch(GOOD, ("test/note", {"text": "x" * 300})),
            413,
            "PayloadTooLarge",
            1,
            id="payload-too-large",
        ),
        pytest.param(batch(GOOD, GOOD, GOOD, GOOD), 413, "BatchTooLarge", None, id="too-many"),
    ],
)
async def test_refused_batches_append_nothing(
    body: bytes | dict[str, Any], status: int, kind: str, index: int | None
) -> None:
    app, _ = build(max_payload_bytes=200, max_batch=3)
    async with api(app, max_body_bytes=10_000) as client:
        await client.post("/commands/test/add", json={"key": "before"})
        head = await settled_head(app)
        if isinstance(body, bytes):
            response = await client.post(
                "/commands", content=body, headers={"Content-Type": "application/json"}
            )
        else:
            response = await client.post("/commands", json=body)
        assert error_of(response) == (status, kind)
        assert response.json()["error"].get("index") == index
        assert await settled_head(app) == head
        assert app.state.totals == {"before": 1}


class TestLimitsAndGuards:
    """The batch endpoint is bounded and guarded exactly as the single one."""

    async def test_body_over_the_limit(self) -> None:
        app, _ = build()
        async with api(app, max_body_bytes=1000) as client:
            body = batch(*[("test/add", {"key": f"k{i}"}) for i in range(100)])
            response = await client.post("/commands", json=body)
            assert error_of(response) == (413, "PayloadTooLarge")
            assert await settled_head(app) == 0

    @pytest.mark.parametrize("authorization", [None, "Bearer wrong"])
    async def test_the_token(self, authorization: str | None) -> None:
        app, _ = build()
        headers = {} if authorization is None else {"Authorization": authorization}
        async with api(app, token=TOKEN) as client:
            response = await client.post("/commands", json=batch(GOOD), headers=headers)
            assert error_of(response) == (401, "Unauthorized")
            assert await settled_head(app) == 0
            good = {"Authorization": f"Bearer {TOKEN}"}
            response = await client.post("/commands", json=batch(GOOD), headers=good)
            assert response.status_code == 201

    async def test_cross_origin_is_refused(self) -> None:
        app, _ = build()
        async with api(app) as client:
            evil = {"Origin": "http://evil.example"}
            response = await client.post("/commands", json=batch(GOOD), headers=evil)
            assert error_of(response) == (403, "Forbidden")
            assert await settled_head(app) == 0

    async def test_not_serving(self) -> None:
        app, _ = build()
        async with api(app, serve=False) as client:
            response = await client.post("/commands", json=batch(GOOD))
            assert error_of(response) == (503, "NotRunning")
