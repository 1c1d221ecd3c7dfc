"""GET /dashboard.json: everything one refresh of the dashboard shows, at one moment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import petrock_trio as pt
from petrock_trio._http_dashboard import dashboard_snapshot
from petrock_trio.testing import serving
from tests.test_dashboard import Count, Poke, build, served


def arm(
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    name: str,
    meanwhile: Callable[[], Awaitable[None]],
    *,
    after: bool = False,
) -> list[int]:
    """Make the next call of ``target.name`` run ``meanwhile`` (before it reads, or after);
    later calls go through untouched. The list counts the calls made."""
    real = getattr(target, name)
    calls: list[int] = []

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            return await real(*args, **kwargs)
        if not after:
            await meanwhile()
        result = await real(*args, **kwargs)
        if after:
            await meanwhile()
        return result

    monkeypatch.setattr(target, name, wrapped)
    return calls


async def snapshot(client: httpx.AsyncClient, query: str = "") -> dict[str, Any]:
    response = await client.get("/dashboard.json" + query)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


class TestOneMoment:
    """The report, the messages and the dead letters agree on one head."""

    @pytest.mark.parametrize(
        ("during", "included"),
        [
            pytest.param("dead_letters", True, id="append-while-dead-letters-are-read"),
            pytest.param("read_after", False, id="append-while-messages-are-read"),
        ],
    )
    async def test_an_append_meanwhile_is_in_all_of_it_or_none(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, during: str, *, included: bool
    ) -> None:
        app, _ = build(str(tmp_path / "log.db"))
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            for n in range(3):
                await app.execute(Count(n))
            await app.caught_up()

            async def another_writer() -> None:
                await app.log.append(Count(99))

            # The pump is idle (caught up): the next read is the snapshot's.
            calls = arm(monkeypatch, app.log.store, during, another_writer)
            body = await snapshot(client)
            assert calls
            await app.caught_up()
            assert app.log.head.value == 4
        head = body["inspect"]["head"]
        assert head == (4 if included else 3)
        assert body["messages"]["head"] == head
        assert [m["id"] for m in body["messages"]["messages"]] == list(range(1, head + 1))
        assert body["inspect"]["positions"]["counter"] <= head

    async def test_a_dead_letter_written_during_the_read_is_listed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker dead-letters a message after the store answered but before the report:
        the letters are read again, so that the count agrees with the worker's."""
        app, _ = build(str(tmp_path / "log.db"))
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            outstanding = app.totals.dead_letter_ids

            async def worker_dead_letters() -> None:
                message = await app.execute(Poke(1))
                with trio.fail_after(10):
                    while message.id not in outstanding.get("fragile", ()):  # noqa: ASYNC110
                        await trio.sleep(0.01)

            calls = arm(monkeypatch, app.log.store, "dead_letters", worker_dead_letters, after=True)
            body = await snapshot(client)
        assert len(calls) == 2  # read again, once
        assert [d["message_id"] for d in body["dead_letters"]] == [1]
        assert body["dead_letter_counts"] == {"fragile": 1}
        assert body["inspect"]["workers"]["fragile"]["metrics"]["dead_lettered"] == 1

    async def test_the_clock_moves_between_snapshots(self) -> None:
        app, _ = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            first = await snapshot(client)
            await trio.sleep(0.05)
            second = await snapshot(client)
        assert second["clock"] - first["clock"] >= 0.05
        assert first["taken_at"] <= second["taken_at"]


class TestDeadLetters:
    """Dead letters are counted as they are outstanding, not as they happened."""

    async def test_a_redriven_letter_is_no_longer_counted(self) -> None:
        app, switch = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            first = await app.execute(Poke(1))
            await app.execute(Poke(2))
            await app.caught_up()
            switch.broken = False
            await app.redrive("fragile", first.id)
            body = await snapshot(client)
        assert body["inspect"]["workers"]["fragile"]["metrics"]["dead_lettered"] == 2
        assert body["dead_letter_counts"] == {"fragile": 1}
        assert body["dead_letters_total"] == 1
        [letter] = body["dead_letters"]
        assert letter["message_id"] == 2
        assert letter["payload"] == {"n": 2}
        assert letter["has_traceback"] is True
        assert "traceback" not in letter  # the detail has it: GET /dead-letters/{w}/{id}

    async def test_many_are_counted_and_the_oldest_listed(self) -> None:
        app, _ = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            for n in range(60):
                await app.execute(Poke(n))
            await app.caught_up()
            body = await snapshot(client)
        assert body["dead_letters_total"] == 60
        assert body["dead_letter_counts"] == {"fragile": 60}
        assert [d["message_id"] for d in body["dead_letters"]] == list(range(1, 51))


class TestBounds:
    """The message table is bounded; bad parameters are refused."""

    async def test_messages_are_the_newest_and_capped(self) -> None:
        app, _ = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            await app.log.append(*(Count(i) for i in range(130)))
            five = await snapshot(client, "?messages=5")
            many = await snapshot(client, "?messages=1000")
            none = await snapshot(client, "?messages=0")
        assert [m["id"] for m in five["messages"]["messages"]] == [126, 127, 128, 129, 130]
        assert len(many["messages"]["messages"]) == 100
        assert many["messages"]["messages"][-1]["id"] == 130
        assert none["messages"]["messages"] == []

    @pytest.mark.parametrize(
        "query", ["?messages=-1", "?messages=many", "?max_bytes=0", "?max_bytes=1e9"]
    )
    async def test_bad_parameters(self, query: str) -> None:
        app, _ = build()
        async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/dashboard.json" + query)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "BadRequest"


async def test_while_the_app_is_not_serving_the_report_alone() -> None:
    app, _ = build()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(pt.serve_http, app, port=0))
        async with httpx.AsyncClient(base_url=url) as client:
            body = await snapshot(client)
        nursery.cancel_scope.cancel()
    assert body["inspect"]["running"] is False
    assert body["dead_letters"] is None
    assert body["dead_letter_counts"] is None
    assert body["messages"] is None


@pytest.mark.parametrize("running", [True, False], ids=["serving", "not-serving"])
async def test_a_snapshot_is_a_checkpoint(
    autojump_clock: trio.testing.MockClock, *, running: bool
) -> None:
    app, _ = build()
    if not running:
        with trio.testing.assert_checkpoints():
            await dashboard_snapshot(app, messages=5, max_bytes=1 << 16)
        return
    async with serving(app):
        await app.execute(Count(1))
        await app.caught_up()
        with trio.testing.assert_checkpoints():
            await dashboard_snapshot(app, messages=5, max_bytes=1 << 16)
