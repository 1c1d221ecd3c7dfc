"""``app.execute_many``: one transaction, validated in order, all or nothing."""

from __future__ import annotations

import copy
import threading
import types
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import petrock_trio as pt
from petrock_trio import _execute
from petrock_trio.testing import serving
from tests.support import Add, Calls, Named, Note, apply_add, apply_named, make_app


@pt.command("batch-test/rename")
@attrs.frozen
class Rename:
    """Valid only while ``old`` is taken and ``new`` is free."""

    old: str
    new: str

    def validate(self, state: Any) -> None:
        if self.old not in state.names:
            raise pt.ValidationError(f"no name {self.old!r}")
        if self.new in state.names:
            raise pt.ValidationError(f"name {self.new!r} is taken")


def apply_rename(state: Any, cmd: Rename, message: pt.Message) -> None:
    state.names.discard(cmd.old)
    state.names.add(cmd.new)


@attrs.define
class Seats:
    taken: set[str] = attrs.Factory(set)


@pt.command("batch-test/reserve")
@attrs.frozen
class Reserve:
    """A command whose state is not ``app.state``."""

    seat: str

    def validate(self, state: Seats) -> None:
        if self.seat in state.taken:
            raise pt.ValidationError(f"seat {self.seat!r} is taken")


def apply_reserve(state: Seats, cmd: Reserve, message: pt.Message) -> None:
    state.taken.add(cmd.seat)


@pt.command("batch-test/unregistered")
@attrs.frozen
class Unregistered:
    n: int = 0


def build(database: str = ":memory:", **kw: Any) -> tuple[pt.App, Calls, Seats]:
    """The support app (its ``tally`` worker echoes each Add) with Rename and Reserve."""
    app, _, calls = make_app(database, hooks=[], **kw)
    app.register_command(Rename, apply=apply_rename)
    seats = Seats()
    app.register_command(Reserve, apply=apply_reserve, state=seats)
    return app, calls, seats


async def stored(app: pt.App) -> list[tuple[str, bytes]]:
    rows = await app.log.store.read_after(0, 10_000)
    return [(r.name, r.payload) for r in rows]


class TestBatch:
    """A batch lands in one transaction, its messages in order, state applied."""

    async def test_messages_in_order_and_applied(self) -> None:
        app, _, seats = build()
        async with serving(app):
            batch = [Add("a"), Named("ada"), Note("hi"), Reserve("1A"), Add("a", 2)]
            transactions = app.log.store.statistics().transactions
            messages = await app.execute_many(batch)
            assert app.log.store.statistics().transactions == transactions + 1
            assert [m.id for m in messages] == [1, 2, 3, 4, 5]
            assert [m.command for m in messages] == batch
            assert len({m.timestamp for m in messages}) == 1
            # Returned once state had every message of it.
            assert app.state.totals == {"a": 3}
            assert app.state.names == {"ada"}
            assert seats.taken == {"1A"}

    async def test_empty_batch(self) -> None:
        app, _, _ = build()
        async with serving(app):
            assert await app.execute_many([]) == []
            assert app.log.head.value == 0

    async def test_not_serving(self) -> None:
        app, _, _ = build()
        with pytest.raises(pt.NotRunning):
            await app.execute_many([Add("a")])

    async def test_the_callers_list_may_change_meanwhile(self) -> None:
        app, _, _ = build()
        async with serving(app):
            batch: list[object] = [Named("ada"), Named("bob")]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(app.execute_many, batch)
                await trio.testing.wait_all_tasks_blocked()
                batch.append(Named("ada"))
            assert app.state.names == {"ada", "bob"}

    @pytest.mark.parametrize("size", [3, 4])
    async def test_max_batch(self, size: int) -> None:
        app, _, _ = build(max_batch=3)
        async with serving(app):
            batch = [Add(f"k{i}") for i in range(size)]
            if size <= app.max_batch:
                assert len(await app.execute_many(batch)) == size
                return
            with pytest.raises(pt.BatchTooLarge) as refused:
                await app.execute_many(batch)
            assert (refused.value.size, refused.value.limit) == (4, 3)
            assert refused.value.index is None
            assert isinstance(refused.value, pt.CommandError)
            assert app.log.head.value == 0

    def test_max_batch_must_be_positive(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="max_batch"):
            pt.App(max_batch=0)


# Each kind of refusal: the command refused, and the error it raises.
REFUSALS = [
    pytest.param(Unregistered(), pt.UnknownCommand, id="unknown-command"),
    pytest.param(object(), pt.UnknownCommand, id="not-a-command"),
    pytest.param(Add(key=5), pt.DecodeError, id="decode-error"),  # type: ignore[arg-type]
    pytest.param(Note("x" * 500), pt.PayloadTooLarge, id="payload-too-large"),
    pytest.param(Named("  "), pt.ValidationError, id="validation-error"),
    pytest.param(Named("before"), pt.ValidationError, id="taken-before-the-batch"),
]


class TestAllOrNothing:
    """A refused command refuses its batch: nothing appended, applied or handled."""

    @pytest.mark.parametrize("position", ["first", "middle", "last"])
    @pytest.mark.parametrize(("bad", "error"), REFUSALS)
    async def test_refusal(
        self, bad: object, error: type[pt.CommandError], position: str, tmp_path: Any
    ) -> None:
        app, calls, seats = build(str(tmp_path / "log.db"), max_payload_bytes=200)
        good: list[object] = [Add("a"), Named("ada"), Reserve("1A"), Add("b")]
        index = {"first": 0, "middle": 2, "last": len(good)}[position]
        batch = [*good[:index], bad, *good[index:]]
        async with serving(app):
            await app.execute(Named("before"))
            await app.caught_up()
            head, rows = app.log.head.value, await stored(app)
            with pytest.raises(error) as refused:
                await app.execute_many(batch)
            assert refused.value.index == index
            assert any(f"command {index} of a batch of 5" in n for n in refused.value.__notes__)
            await app.caught_up()
            assert app.log.head.value == head
            assert await app.log.store.head() == head
            assert await stored(app) == rows
            assert app.state.names == {"before"}
            assert app.state.totals == {}
            assert seats.taken == set()
            assert calls.live == []

    async def test_the_first_refusal_is_the_one_raised(self) -> None:
        app, _, _ = build()
        async with serving(app):
            with pytest.raises(pt.ValidationError) as refused:
                await app.execute_many([Add("a"), Named(" "), Unregistered(), Add(key=5)])  # type: ignore[arg-type]
            assert refused.value.index == 1

    async def test_a_refusal_without_validate_methods(self) -> None:
        app, _, _ = build()
        async with serving(app):
            with pytest.raises(pt.DecodeError) as refused:
                await app.execute_many([Add("a"), Note("n"), Add(key=5)])  # type: ignore[arg-type]
            assert refused.value.index == 2
            assert app.log.head.value == 0

    async def test_execute_alone_has_no_index(self) -> None:
        app, _, _ = build()
        async with serving(app):
            with pytest.raises(pt.ValidationError) as refused:
                await app.execute(Named(" "))
            assert refused.value.index is None


class TestValidationInOrder:
    """Each command is validated against state with the batch's earlier commands applied."""

    async def test_the_same_unique_name_twice(self) -> None:
        app, _, _ = build()
        async with serving(app):
            with pytest.raises(pt.ValidationError, match="'ada' is taken") as refused:
                await app.execute_many([Named("ada"), Add("a"), Named("ada")])
            assert refused.value.index == 2
            assert refused.value.command_name == "test/named"
            assert app.state.names == set()
            assert app.log.head.value == 0

    async def test_valid_only_after_an_earlier_command(self) -> None:
        app, _, _ = build()
        async with serving(app):
            with pytest.raises(pt.ValidationError, match="no name 'ada'"):
                await app.execute(Rename("ada", "grace"))
            # Renamed away, ada is free again later in the same batch.
            batch = [Named("ada"), Rename("ada", "grace"), Named("ada")]
            messages = await app.execute_many(batch)
            assert [m.id for m in messages] == [1, 2, 3]
            assert app.state.names == {"ada", "grace"}

    async def test_each_state_object_on_its_own(self) -> None:
        app, _, seats = build()
        async with serving(app):
            with pytest.raises(pt.ValidationError, match="seat '1A'") as refused:
                await app.execute_many([Reserve("1A"), Named("1A"), Reserve("1A")])
            assert refused.value.index == 2
            await app.execute_many([Reserve("1A"), Named("1A"), Reserve("1B")])
            assert seats.taken == {"1A", "1B"}
            assert app.state.names == {"1A"}

    @pytest.mark.parametrize(
        ("batch", "copies"),
        [
            pytest.param([Add("a"), Note("n"), Add("b")], 0, id="no-validate-methods"),
            pytest.param([Named("ada")], 0, id="one-validated-command"),
            pytest.param([Named("ada"), Add("a"), Note("n")], 0, id="validated-first"),
            pytest.param([Reserve("1A"), Named("ada")], 0, id="other-state-before"),
            pytest.param([Named("ada"), Named("bob"), Named("eve")], 1, id="same-state-before"),
            pytest.param([Reserve("1A"), Named("a"), Reserve("1B"), Named("b")], 2, id="two"),
        ],
    )
    async def test_state_is_copied_only_where_needed(
        self, batch: list[object], copies: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made: list[object] = []
        real = _execute._copy

        def counted(state: Any, name: str) -> Any:
            made.append(state)
            return real(state, name)

        monkeypatch.setattr(_execute, "_copy", counted)
        app, _, _ = build()
        async with serving(app):
            await app.execute_many(batch)
        assert len(made) == copies

    async def test_state_that_does_not_copy(self) -> None:
        app, _, _ = build()
        app.state.lock = threading.Lock()  # deepcopy refuses it (it cannot be pickled)
        async with serving(app):
            with pytest.raises(pt.ConfigurationError, match="cannot be copied"):
                await app.execute_many([Named("ada"), Named("bob")])
            assert app.log.head.value == 0
            await app.execute_many([Named("ada")])  # nothing before it: no copy

    async def test_concurrent_execute_and_execute_many(self) -> None:
        app, _, _ = build()
        accepted: list[str] = []

        async def one(i: int) -> None:
            try:
                message = await app.execute(Named(f"n{i % 7}"))
            except pt.ValidationError:
                return
            accepted.append(message.command.name)

        async def many(i: int) -> None:
            batch = [Add("a"), *(Named(f"n{(i + j) % 7}") for j in range(3)), Add("b")]
            try:
                messages = await app.execute_many(batch)
            except pt.ValidationError:
                return
            accepted.extend(m.command.name for m in messages if isinstance(m.command, Named))

        async with serving(app):
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(one, i)
                    nursery.start_soon(many, i)
            rows = await app.log.store.read_after(0, 10_000, names=["test/named"])
        logged = [app.registry.decode(r.name, r.payload).name for r in rows]
        assert len(logged) == len(set(logged)) == 7
        assert sorted(logged) == sorted(accepted)
        assert app.state.names == set(logged)


class TestStores:
    """The same on every store: one transaction, or nothing written."""

    async def test_accepted_and_refused(self, store_url: str) -> None:
        app, calls, _ = build(store_url)
        async with serving(app):
            messages = await app.execute_many([Add("a"), Named("ada"), Add("b")])
            await app.caught_up()
            head = app.log.head.value
            with pytest.raises(pt.ValidationError) as refused:
                await app.execute_many([Add("c"), Named("ada")])
            assert refused.value.index == 1
            await app.caught_up()
            assert await app.log.store.head() == head
            assert [c for c, _ in calls.live] == ["a", "b"]
        assert [m.id for m in messages] == [1, 2, 3]
        if store_url == ":memory:":
            return
        # Read again by a new serving: the batch is in the log as it was appended.
        again, _, _ = build(store_url)
        async with serving(again):
            assert again.state.names == {"ada"}
            assert again.state.totals == {"a": 1, "b": 1}


# --- the property: batches give what executing the commands one by one gives -------

NAMES = st.sampled_from(["ada", "bob", " "])
COMMANDS = st.one_of(
    st.builds(Named, name=NAMES),
    st.builds(Rename, old=NAMES, new=NAMES),
    st.builds(Add, key=st.sampled_from(["a", "b"]), amount=st.integers(-3, 3)),
    st.builds(Note, text=st.text(max_size=3)),
)
APPLY: dict[type[Any], Any] = {Named: apply_named, Rename: apply_rename, Add: apply_add}


def plain_app() -> pt.App:
    """The commands and their state, no workers: the log holds only what is executed."""
    app = pt.App(hooks=[])
    app.state.names = set()
    app.state.totals = {}
    app.register_command(Named, apply=apply_named)
    app.register_command(Rename, apply=apply_rename)
    app.register_command(Add, apply=apply_add)
    app.register_command(Note)
    return app


def one_by_one(batches: Sequence[Sequence[Any]]) -> tuple[list[int | None], list[Any], Any]:
    """What each batch should come to, by running each command's own validate and
    apply in order: the refused index (None: accepted), the accepted commands, state."""
    state = types.SimpleNamespace(names=set(), totals={})
    refusals: list[int | None] = []
    accepted: list[Any] = []
    for batch in batches:
        trial = copy.deepcopy(state)
        refused = None
        for index, cmd in enumerate(batch):
            try:
                if hasattr(cmd, "validate"):
                    cmd.validate(trial)
            except pt.ValidationError:
                refused = index
                break
            if type(cmd) in APPLY:
                APPLY[type(cmd)](trial, cmd, None)
        refusals.append(refused)
        if refused is None:
            state = trial
            accepted.extend(batch)
    return refusals, accepted, state


async def compare(batches: list[list[Any]]) -> None:
    refusals, accepted, expected = one_by_one(batches)
    batched, single = plain_app(), plain_app()
    async with serving(batched), serving(single):
        got: list[int | None] = []
        for batch in batches:
            try:
                await batched.execute_many(batch)
            except pt.ValidationError as exc:
                got.append(exc.index)
            else:
                got.append(None)
        for cmd in accepted:
            await single.execute(cmd)
        assert got == refusals
        assert await stored(batched) == await stored(single)
        for app in (batched, single):
            assert app.state.names == expected.names
            assert app.state.totals == expected.totals


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(COMMANDS, max_size=6), max_size=6))
def test_batches_give_what_one_by_one_gives(batches: list[list[Any]]) -> None:
    trio.run(compare, batches)
