"""Items commands validate against state; apply functions and queries keep and read it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import petrock_trio as pt
from features.items import (
    CreateItem,
    DeleteItem,
    FailSummaryGeneration,
    ItemsState,
    RequestSummaryGeneration,
    SetGeneratedSummary,
    UpdateItem,
)


def message(id_: int, cmd: object, ts: float = 1000.0) -> pt.Message:
    return pt.Message(id_, datetime.fromtimestamp(ts, UTC), pt.command_name(cmd), cmd)


def state_with(*names: str) -> ItemsState:
    state = ItemsState()
    for i, name in enumerate(names, 1):
        cmd = CreateItem(name, f"about {name}", f"content of {name}")
        state.apply_create(cmd, message(i, cmd))
    return state


class TestValidation:
    """Empty names, duplicates and unknown items are refused."""

    @pytest.mark.parametrize(
        ("cmd", "match"),
        [
            pytest.param(CreateItem(""), "empty", id="empty-name"),
            pytest.param(CreateItem("   "), "empty", id="blank-name"),
            pytest.param(CreateItem("x" * 201), "longer", id="long-name"),
            pytest.param(CreateItem("a"), "exists", id="duplicate"),
            pytest.param(UpdateItem("nope"), "no item", id="update-unknown"),
            pytest.param(DeleteItem("nope"), "no item", id="delete-unknown"),
            pytest.param(RequestSummaryGeneration("nope", "r"), "no item", id="request-unknown"),
            pytest.param(SetGeneratedSummary("nope", "r", "s"), "no item", id="set-unknown"),
        ],
    )
    def test_refused(self, cmd: object, match: str) -> None:
        with pytest.raises(pt.ValidationError, match=match):
            cmd.validate(state_with("a"))  # type: ignore[attr-defined]

    def test_results_only_for_the_request_the_item_waits_for(self) -> None:
        # A result lands once, for the item it was asked for: not for an item of the
        # same name created again since, nor a second time.
        state = state_with("a")
        request = RequestSummaryGeneration("a", "r1")
        state.apply_request(request, message(2, request))
        SetGeneratedSummary("a", "r1", "s").validate(state)
        FailSummaryGeneration("a", "r1", "timeout").validate(state)
        for stale in (SetGeneratedSummary("a", "r0", "s"), FailSummaryGeneration("a", "r0", "x")):
            with pytest.raises(pt.ValidationError, match="not waiting for summary request 'r0'"):
                stale.validate(state)
        done = SetGeneratedSummary("a", "r1", "s")
        state.apply_summary(done, message(3, done))
        assert not state.awaits("a", "r1")
        with pytest.raises(pt.ValidationError, match="not waiting"):
            done.validate(state)
        recreated = state_with("a")  # deleted and created again: no request yet
        assert not recreated.awaits("a", "r1")

    def test_accepted(self) -> None:
        state = state_with("a")
        CreateItem("b").validate(state)
        UpdateItem("a", content="new").validate(state)
        DeleteItem("a").validate(state)


class TestApply:
    """Apply functions keep versions, times and summary status."""

    def test_lifecycle(self) -> None:
        state = state_with("a")
        update = UpdateItem("a", "d2", "c2")
        state.apply_update(update, message(2, update, 2000.0))
        item = state.get("a")
        assert item is not None
        assert (item.version, item.content, item.updated_at.timestamp()) == (2, "c2", 2000.0)
        request = RequestSummaryGeneration("a", "r1")
        state.apply_request(request, message(3, request))
        assert (item.summary_status, item.summary_request) == ("pending", "r1")
        done = SetGeneratedSummary("a", "r1", "short")
        state.apply_summary(done, message(4, done))
        assert (item.summary, item.summary_status) == ("short", "ready")
        delete = DeleteItem("a")
        state.apply_delete(delete, message(5, delete))
        assert state.get("a") is None
        assert item.to_dict()["created_at"] == "1970-01-01T00:16:40+00:00"

    def test_requested_content_is_the_content_as_of_the_request(self) -> None:
        state = state_with("a")
        request = RequestSummaryGeneration("a", "r1")
        state.apply_request(request, message(2, request))
        update = UpdateItem("a", "about a", "newer")
        state.apply_update(update, message(3, update))
        assert state.requested_content == {"a": "content of a"}
        assert "requested_content" not in state.items["a"].to_dict()
        again = RequestSummaryGeneration("a", "r2")
        state.apply_request(again, message(4, again))
        assert state.requested_content == {"a": "newer"}
        delete = DeleteItem("a")
        state.apply_delete(delete, message(5, delete))
        assert state.requested_content == {}


class TestQueries:
    """list() pages and filters by name, description or content."""

    def test_paging(self) -> None:
        state = state_with(*(f"item-{i:02}" for i in range(25)))
        first = state.list(page=1, page_size=10)
        last = state.list(page=3, page_size=10)
        assert [i.name for i in first.items][:2] == ["item-00", "item-01"]
        assert (first.total, first.pages, len(last.items)) == (25, 3, 5)
        assert state.list(page=4, page_size=10).items == []

    def test_filter(self) -> None:
        state = state_with("apple", "banana", "cherry")
        assert [i.name for i in state.list(query="AN").items] == ["banana"]
        assert [i.name for i in state.list(query="content of c").items] == ["cherry"]

    @pytest.mark.parametrize(("page", "page_size"), [(0, 20), (1, 0), (1, 1001)])
    def test_bad_paging(self, page: int, page_size: int) -> None:
        with pytest.raises(pt.ValidationError):
            state_with().list(page=page, page_size=page_size)
