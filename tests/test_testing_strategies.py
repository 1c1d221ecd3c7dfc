"""petrock_trio.testing.strategies: per-field strategies, and commands that pass
``validate`` unless asked otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck

import petrock_trio as pt
from features.items import CreateItem, Item, ItemsFeature, ItemsState, UpdateItem
from petrock_trio.testing import serving
from petrock_trio.testing.strategies import command_sequences, commands, commands_from
from tests.support import Add, Note

DRAWS = 200


@attrs.define
class Stock:
    available: dict[str, int] = attrs.Factory(lambda: {"apple": 3, "pear": 1})


@pt.command("strategies/reserve")
@attrs.frozen
class Reserve:
    sku: str
    qty: int

    def validate(self, state: Stock) -> None:
        if self.qty < 1:
            raise pt.ValidationError("qty must be at least 1")
        if state.available.get(self.sku, 0) < self.qty:
            raise pt.ValidationError(f"not enough {self.sku}")


def passes(cmd: Any, state: Any) -> bool:
    try:
        cmd.validate(state)
    except pt.ValidationError:
        return False
    return True


def items_app(*names: str) -> pt.App:
    """An app with the items commands (not served) and items ``names`` in its state."""
    app = pt.App()
    feature = ItemsFeature()
    feature.register_commands(app)
    for name in names:
        feature.state.items[name] = _item(name)
    return app


def _item(name: str) -> Item:
    now = datetime.now(UTC)
    return Item(name, "", "", now, now)


def drawn(strategy: st.SearchStrategy[Any], count: int = DRAWS) -> list[Any]:
    """``count`` examples of ``strategy``, the way a property test sees them."""
    seen: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    @given(strategy)
    def collect(cmd: Any) -> None:
        seen.append(cmd)

    collect()
    return seen


class TestFieldStrategies:
    """fields= gives a field its own strategy (or a fixed value), for every class
    that has the field; a name no class has is refused."""

    @given(commands(Reserve, fields={"qty": st.integers(1, 3), "sku": "apple"}, state=Stock()))
    def test_fields_are_drawn_from_the_given_strategies(self, cmd: Reserve) -> None:
        assert cmd.sku == "apple"
        assert 1 <= cmd.qty <= 3

    @given(commands(Add, Note, fields={"key": "k", "text": st.just("t")}))
    def test_each_class_takes_the_fields_it_has(self, cmd: Add | Note) -> None:
        assert cmd == Note("t") if isinstance(cmd, Note) else cmd.key == "k"

    def test_unknown_field_is_refused(self) -> None:
        with pytest.raises(pt.ConfigurationError, match=r"\['quantity'\].*\['qty', 'sku'\]"):
            commands(Reserve, fields={"quantity": st.integers()}, state=Stock())

    def test_not_a_command_class(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="not an attrs command class"):
            commands(int)
        with pytest.raises(pt.ConfigurationError, match="at least one"):
            commands()


class TestValidByDefault:
    """Drawn commands pass validate against the state given; valid=False draws any."""

    def test_a_validating_class_needs_a_state(self) -> None:
        with pytest.raises(pt.ConfigurationError, match="Reserve validate against a state"):
            commands(Reserve)
        with pytest.raises(pt.ConfigurationError, match="state="):
            command_sequences(Reserve)

    @given(
        commands(
            Reserve,
            fields={"sku": st.sampled_from(["apple", "pear", "fig"]), "qty": st.integers(-1, 5)},
            state=Stock(),
        )
    )
    def test_drawn_commands_pass(self, cmd: Reserve) -> None:
        assert passes(cmd, Stock())

    def test_valid_false_draws_refused_ones_too(self) -> None:
        refused = find(commands(Reserve, valid=False), lambda c: not passes(c, Stock()))
        assert not passes(refused, Stock())

    @given(
        command_sequences(
            Reserve, fields={"sku": "pear", "qty": st.integers(0, 2)}, state=Stock(), max_size=5
        )
    )
    def test_sequences_check_each_command_against_the_state_given(
        self, sequence: list[Reserve]
    ) -> None:
        assert all(c == Reserve("pear", 1) for c in sequence)

    def test_a_strategy_that_never_passes_fails_fast(self) -> None:
        @settings(max_examples=10, database=None)
        @given(commands(Reserve, fields={"qty": 0}, state=Stock()))
        def never(cmd: Reserve) -> None:
            raise AssertionError("a refused command was drawn")

        with pytest.raises(FailedHealthCheck, match="filter"):
            never()

    def test_commands_from_an_app_check_against_its_state_when_drawn(self) -> None:
        app = items_app("a", "b")
        names = st.sampled_from(["a", "b", "c"])
        for cmd in drawn(commands_from(app, fields={"name": names, "item_id": names}), 100):
            state = app.state_for(pt.command_name(cmd))
            assert passes(cmd, state), cmd
            if isinstance(cmd, CreateItem):
                assert cmd.name == "c"
            if isinstance(cmd, UpdateItem):
                assert cmd.name in {"a", "b"}

    def test_a_registry_with_a_state(self) -> None:
        state = ItemsState()
        for cmd in drawn(commands_from(items_app().registry, state=state), 50):
            assert isinstance(cmd, CreateItem)  # the only one that can pass on no items
            assert passes(cmd, state)

    @settings(max_examples=20, database=None)
    @given(st.data())
    def test_every_drawn_command_is_accepted_by_execute(self, data: st.DataObject) -> None:
        # Drawn one at a time from the serving app: each is checked against the
        # state the commands before it left.
        async def scenario() -> None:
            app = items_app()
            names = st.sampled_from(["a", "b", "c"])
            strategy = commands_from(app, fields={"name": names, "item_id": names})
            async with serving(app):
                for _ in range(10):
                    await app.execute(data.draw(strategy))
                assert app.log.head.value == 10

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


class TestMeasured:
    """How many of 200 drawn commands validate accepts: the items commands on an
    empty state, before and after (figures in docs/testing.md)."""

    def test_items_commands_on_an_empty_state(self) -> None:
        app = items_app()
        state = app.state_for("items/create")
        raw = drawn(commands_from(app, valid=False))
        accepted_raw = sum(passes(c, state) for c in raw)
        # Only a create can pass on no items, and only with a name that is not blank.
        assert len(raw) == DRAWS
        assert accepted_raw <= DRAWS // 4
        checked = drawn(commands_from(app))
        assert len(checked) == DRAWS
        assert sum(passes(c, state) for c in checked) == DRAWS

    def test_items_commands_with_names_that_exist(self) -> None:
        # Names drawn from those that exist let updates, deletes and requests pass too.
        app = items_app("a", "b")
        names = st.sampled_from(["a", "b", "c"])

        def accepted(strategy: st.SearchStrategy[Any]) -> int:
            return sum(passes(c, app.state_for(pt.command_name(c))) for c in drawn(strategy))

        without = accepted(commands_from(app, valid=False))
        given_names = accepted(
            commands_from(app, fields={"name": names, "item_id": names}, valid=False)
        )
        assert given_names > 2 * without
