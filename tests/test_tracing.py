"""OpenTelemetry tracing: spans recorded by the SDK's in-memory exporter, trace context
carried through the log (the messages' metadata) on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

import petrock_trio as pt
from petrock_trio import _tracing
from petrock_trio._message import NO_METADATA, Row, decode_metadata, encode_metadata
from petrock_trio.stores import Commit, ReadOnlySQLiteStore, SQLiteStore, open_store
from petrock_trio.stores._sqlitesql import SCHEMA
from petrock_trio.testing import serving

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed (dev)")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.util._once import Once

# A caller's span, as an HTTP client would send it.
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"


@pt.command("otel-test/order")
@attrs.frozen
class Order:
    n: int


@pt.command("otel-test/shipped")
@attrs.frozen
class Shipped:
    n: int


@attrs.define
class Script:
    """How the handlers behave: failures before the order succeeds, a span of its own."""

    failures: int = 0
    timeouts: int = 0
    own_span: bool = False
    shipped_metadata: list[dict[str, str]] = attrs.Factory(list)


def build(database: str, script: Script, *, max_attempts: int = 5) -> pt.App:
    """``orders`` handles an order and emits Shipped; ``shipping`` handles that."""
    app = pt.App(database=database, hooks=[])
    app.register_command(Order)
    app.register_command(Shipped)
    orders: pt.PatternWorker[None] = pt.PatternWorker(
        "orders",
        "ships orders",
        handler_timeout=1.0,
        retry=pt.Backoff(initial=0.5, factor=2.0, max_attempts=max_attempts),
    )
    shipping: pt.PatternWorker[None] = pt.PatternWorker("shipping", "records shipments")

    @orders.on_command("otel-test/order")
    async def on_order(ctx: pt.HandlerContext, cmd: Order, state: None) -> None:
        if ctx.attempt <= script.timeouts:
            await trio.sleep(5)
        if ctx.attempt <= script.failures:
            raise RuntimeError(f"order {cmd.n} failed on attempt {ctx.attempt}")
        if script.own_span:
            with trace.get_tracer("app").start_as_current_span("pack"):
                ctx.emit(Shipped(cmd.n))
        else:
            ctx.emit(Shipped(cmd.n))

    @shipping.on_command("otel-test/shipped")
    async def on_shipped(ctx: pt.HandlerContext, cmd: Shipped, state: None) -> None:
        script.shipped_metadata.append(dict(ctx.message.metadata))

    app.register_worker(orders)
    app.register_worker(shipping)
    return app


def _reset_trace_globals() -> None:
    # OpenTelemetry lets a process set its tracer provider once; its own test utilities
    # (opentelemetry-test-utils, reset_trace_globals) undo that the same way, so that
    # each test has a provider of its own and the other test files none.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A tracer provider recording every span in memory, set for this test only."""
    _reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    _reset_trace_globals()
    assert _tracing.refresh() is None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "traced.db")


def finished(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    """The finished spans by name, each list in the order they ended."""
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    return by_name


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_of(span: ReadableSpan) -> tuple[int, int] | None:
    return None if span.parent is None else (span.parent.trace_id, span.parent.span_id)


def traceparent(span: ReadableSpan) -> str:
    trace_id, span_id = ids(span)
    assert span.context is not None
    return f"00-{trace_id:032x}-{span_id:016x}-{int(span.context.trace_flags):02x}"


async def stored_rows(database: str) -> list[Row]:
    store = open_store(database, read_only=True)
    await store.open()
    try:
        return await store.read_after(0, 100)
    finally:
        await store.aclose()


@asynccontextmanager
async def api(app: pt.App) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``'s HTTP API on a loopback port, the app served."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(pt.serve_http, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client, serving(app):
                yield client
            nursery.cancel_scope.cancel()


class TestTrace:
    """A request's trace goes through execute, the log, each handler and what it emits."""

    async def test_request_execute_handler_emitted_command_its_handler(
        self, spans: InMemorySpanExporter, database: str
    ) -> None:
        script = Script()
        app = build(database, script)
        async with api(app) as client:
            response = await client.post(
                "/commands/otel-test/order", json={"n": 7}, headers={"traceparent": TRACEPARENT}
            )
            assert response.status_code == 201, response.text
            await app.caught_up()
        by_name = finished(spans)
        (execute,) = by_name["execute otel-test/order"]
        (order,) = by_name["handle otel-test/order"]
        (shipped,) = by_name["handle otel-test/shipped"]

        # One trace, the caller's; each span the child of the one before.
        assert parent_of(execute) == (CALLER_TRACE, CALLER_SPAN)
        assert parent_of(order) == ids(execute)
        assert parent_of(shipped) == ids(order)
        assert {ids(s)[0] for s in (execute, order, shipped)} == {CALLER_TRACE}
        assert execute.kind is trace.SpanKind.PRODUCER
        assert order.kind is shipped.kind is trace.SpanKind.CONSUMER

        assert dict(execute.attributes or {}) == {
            _tracing.COMMAND: "otel-test/order",
            _tracing.MESSAGE_ID: 1,
        }
        assert dict(order.attributes or {}) == {
            _tracing.WORKER: "orders",
            _tracing.COMMAND: "otel-test/order",
            _tracing.MESSAGE_ID: 1,
            _tracing.ATTEMPT: 1,
            _tracing.PARTITION: 0,
            _tracing.OUTCOME: "ok",
        }
        assert dict(shipped.attributes or {})[_tracing.WORKER] == "shipping"
        assert dict(shipped.attributes or {})[_tracing.MESSAGE_ID] == 2

        # The links are in the log: each row names the span that appended it.
        rows = await stored_rows(database)
        assert [(r.name, decode_metadata(r.metadata)) for r in rows] == [
            ("otel-test/order", {"traceparent": traceparent(execute)}),
            ("otel-test/shipped", {"traceparent": traceparent(order)}),
        ]
        assert script.shipped_metadata == [{"traceparent": traceparent(order)}]

    async def test_execute_continues_the_current_span(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        app = build(str(tmp_path / "log.db"), Script())
        async with serving(app):
            with trace.get_tracer("app").start_as_current_span("request") as request:
                message = await app.execute(Order(1))
            await app.caught_up()
        by_name = finished(spans)
        (execute,) = by_name["execute otel-test/order"]
        caller = request.get_span_context()
        assert parent_of(execute) == (caller.trace_id, caller.span_id)
        assert message.metadata == {"traceparent": traceparent(execute)}

    async def test_a_batch_is_one_span_and_each_message_carries_it(
        self, spans: InMemorySpanExporter, database: str
    ) -> None:
        app = build(database, Script())
        async with api(app) as client:
            body = {"commands": [{"name": "otel-test/order", "payload": {"n": n}} for n in (1, 2)]}
            response = await client.post(
                "/commands", json=body, headers={"traceparent": TRACEPARENT}
            )
            assert response.status_code == 201, response.text
            await app.caught_up()
        by_name = finished(spans)
        (batch,) = by_name["execute_many"]
        assert "execute otel-test/order" not in by_name
        assert parent_of(batch) == (CALLER_TRACE, CALLER_SPAN)
        assert dict(batch.attributes or {}) == {
            _tracing.BATCH_SIZE: 2,
            _tracing.COMMANDS: ("otel-test/order",),
            _tracing.FIRST_MESSAGE_ID: 1,
            _tracing.LAST_MESSAGE_ID: 2,
        }
        orders = by_name["handle otel-test/order"]
        assert sorted(parent_of(o) for o in orders) == [ids(batch)] * 2  # type: ignore[type-var]
        rows = await stored_rows(database)
        assert [decode_metadata(r.metadata) for r in rows[:2]] == [
            {"traceparent": traceparent(batch)}
        ] * 2

    async def test_a_refused_batch_records_the_index(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        app = build(str(tmp_path / "log.db"), Script())
        async with serving(app):
            with pytest.raises(pt.UnknownCommand):
                await app.execute_many([Order(1), object()])
        (batch,) = finished(spans)["execute_many"]
        assert dict(batch.attributes or {})[_tracing.INDEX] == 1
        assert batch.status.status_code is trace.StatusCode.ERROR

    async def test_a_span_the_handler_opens_is_the_parent_of_what_it_emits(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        app = build(str(tmp_path / "log.db"), Script(own_span=True))
        async with serving(app):
            await app.execute(Order(1))
            await app.caught_up()
        by_name = finished(spans)
        (order,) = by_name["handle otel-test/order"]
        (pack,) = by_name["pack"]
        (shipped,) = by_name["handle otel-test/shipped"]
        assert parent_of(pack) == ids(order)
        assert parent_of(shipped) == ids(pack)

    async def test_a_bad_traceparent_starts_a_trace_of_its_own(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        app = build(str(tmp_path / "log.db"), Script())
        async with api(app) as client:
            response = await client.post(
                "/commands/otel-test/order", json={"n": 1}, headers={"traceparent": "00-zz-01"}
            )
            assert response.status_code == 201
            await app.caught_up()
        (execute,) = finished(spans)["execute otel-test/order"]
        assert execute.parent is None

    async def test_a_span_already_current_wins_over_the_header(
        self, spans: InMemorySpanExporter
    ) -> None:
        # What middleware tracing the requests leaves: its server span, already the
        # header's child, is the parent, not the header itself.
        assert _tracing.refresh() is not None
        with (
            trace.get_tracer("asgi").start_as_current_span("POST") as server,
            _tracing.remote_parent({"traceparent": TRACEPARENT}),
        ):
            current = trace.get_current_span().get_span_context()
        assert current.span_id == server.get_span_context().span_id
        with _tracing.remote_parent({"traceparent": TRACEPARENT}):
            current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.span_id) == (CALLER_TRACE, CALLER_SPAN)
        assert not trace.get_current_span().get_span_context().is_valid


class TestAttempts:
    """One span per attempt, numbered, with the failure recorded on it."""

    async def test_retries_give_a_span_per_attempt(
        self, spans: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = build(":memory:", Script(failures=2))
        async with serving(app):
            await app.execute(Order(3))
            await app.caught_up()
        by_name = finished(spans)
        (execute,) = by_name["execute otel-test/order"]
        attempts = by_name["handle otel-test/order"]
        assert [dict(s.attributes or {})[_tracing.ATTEMPT] for s in attempts] == [1, 2, 3]
        assert [dict(s.attributes or {})[_tracing.OUTCOME] for s in attempts] == [
            "error",
            "error",
            "ok",
        ]
        assert {parent_of(s) for s in attempts} == {ids(execute)}
        assert [s.status.status_code for s in attempts] == [
            trace.StatusCode.ERROR,
            trace.StatusCode.ERROR,
            trace.StatusCode.UNSET,
        ]
        # The command emitted by the attempt that succeeded is that attempt's child.
        (shipped,) = by_name["handle otel-test/shipped"]
        assert parent_of(shipped) == ids(attempts[2])

    async def test_a_failure_records_the_exception(
        self, spans: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = build(":memory:", Script(failures=1), max_attempts=1)
        async with serving(app):
            await app.execute(Order(9))
            await app.caught_up()
            assert [d.message_id for d in await app.dead_letters()] == [1]
        (attempt,) = finished(spans)["handle otel-test/order"]
        assert attempt.status.status_code is trace.StatusCode.ERROR
        assert attempt.status.description == "RuntimeError: order 9 failed on attempt 1"
        (event,) = attempt.events
        assert event.name == "exception"
        assert dict(event.attributes or {})["exception.type"] == "RuntimeError"
        assert dict(event.attributes or {})["exception.message"] == "order 9 failed on attempt 1"
        assert "on_order" in str(dict(event.attributes or {})["exception.stacktrace"])

    async def test_a_timeout_is_an_outcome_of_its_own(
        self, spans: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
    ) -> None:
        app = build(":memory:", Script(timeouts=1))
        async with serving(app):
            await app.execute(Order(2))
            await app.caught_up()
        first, second = finished(spans)["handle otel-test/order"]
        assert dict(first.attributes or {})[_tracing.OUTCOME] == "timeout"
        assert (
            dict(first.events[0].attributes or {})["exception.type"]
            == "petrock_trio.HandlerTimeout"
        )
        assert dict(second.attributes or {})[_tracing.OUTCOME] == "ok"

    async def test_a_redrive_is_an_attempt_marked_so(
        self, spans: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
    ) -> None:
        script = Script(failures=1)
        app = build(":memory:", script, max_attempts=1)
        async with serving(app):
            await app.execute(Order(4))
            await app.caught_up()
            script.failures = 0
            await app.redrive("orders", 1)
            await app.caught_up()
        by_name = finished(spans)
        (execute,) = by_name["execute otel-test/order"]
        failed, redriven = by_name["handle otel-test/order"]
        assert _tracing.REDRIVE not in dict(failed.attributes or {})
        assert dict(redriven.attributes or {})[_tracing.REDRIVE] is True
        assert parent_of(redriven) == ids(execute)
        (shipped,) = by_name["handle otel-test/shipped"]
        assert parent_of(shipped) == ids(redriven)

    async def test_replay_makes_no_spans(self, spans: InMemorySpanExporter, tmp_path: Path) -> None:
        database = str(tmp_path / "log.db")
        app = build(database, Script())
        async with serving(app):
            await app.execute(Order(1))
            await app.caught_up()
        spans.clear()
        replayed = build(database, Script())
        async with serving(replayed):
            await replayed.caught_up()
        assert spans.get_finished_spans() == ()


class TestWithoutTracing:
    """No provider set: no spans, no metadata, nothing of OpenTelemetry loaded."""

    async def test_nothing_is_stored(self, tmp_path: Path) -> None:
        database = str(tmp_path / "log.db")
        script = Script()
        app = build(database, script)
        async with serving(app):
            assert _tracing.ACTIVE is None
            # A span of the application's, without a provider, is the API's no-op one.
            with trace.get_tracer("app").start_as_current_span("request"):
                message = await app.execute(Order(1))
            await app.caught_up()
        assert message.metadata == {}
        assert [r.metadata for r in await stored_rows(database)] == [None, None]
        assert script.shipped_metadata == [{}]

    async def test_rows_appended_outside_any_span_have_none(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        database = str(tmp_path / "log.db")
        script = Script()
        app = build(database, script)
        async with serving(app):
            (appended,) = await app.log.append(Order(1))  # workers' and tools' way
            await app.caught_up()
        assert appended.metadata == {}
        rows = await stored_rows(database)
        assert rows[0].metadata is None
        (order,) = finished(spans)["handle otel-test/order"]
        assert order.parent is None  # a trace of its own
        assert decode_metadata(rows[1].metadata) == {"traceparent": traceparent(order)}

    def test_import_and_serving_load_no_opentelemetry(self) -> None:
        code = """
            import sys
            import trio
            import petrock_trio as pt
            from petrock_trio import _tracing

            async def main():
                app = pt.App(hooks=[])
                async with trio.open_nursery() as nursery:
                    await nursery.start(pt.serve, app)
                    app.stop()

            trio.run(main)
            print(_tracing.ACTIVE, any(m.startswith("opentelemetry") for m in sys.modules))
        """
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["None", "False"]

    def test_serving_without_the_extra(self) -> None:
        code = """
            import sys
            sys.modules["opentelemetry"] = None  # makes the import fail, as when not installed
            import attrs, trio
            import petrock_trio as pt
            from petrock_trio import _tracing

            @pt.command("t/x")
            @attrs.frozen
            class X:
                n: int

            async def main():
                app = pt.App(hooks=[])
                app.register_command(X)
                async with trio.open_nursery() as nursery:
                    await nursery.start(pt.serve, app)
                    message = await app.execute(X(1))
                    print(_tracing.ACTIVE, dict(message.metadata))
                    app.stop()

            trio.run(main)
        """
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["None", "{}"]


class TestStoredMetadata:
    """Each append's metadata lands in its row, in one group commit or many."""

    async def test_group_commit_keeps_each_appends_metadata(self, database: str) -> None:
        store = open_store(database)
        await store.open()
        try:
            results = await store.commit_many(
                [
                    Commit(appends=[("a", b"{}")], metadata=['{"traceparent":"1"}']),
                    Commit(appends=[("b", b"{}"), ("c", b"{}")]),
                    Commit(appends=[("d", b"{}"), ("e", b"{}")], metadata=[None, '{"x":"y"}']),
                ]
            )
            expected = [
                ("a", '{"traceparent":"1"}'),
                ("b", None),
                ("c", None),
                ("d", None),
                ("e", '{"x":"y"}'),
            ]
            assert [(r.name, r.metadata) for rows in results for r in rows] == expected
            assert [(r.name, r.metadata) for r in await store.read_after(0, 10)] == expected
            # Without any metadata in the batch (the statement without the column).
            (rows,) = await store.commit_many([Commit(appends=[("f", b"{}")])])
            assert [(r.id, r.metadata) for r in rows] == [(6, None)]
            assert (await store.read_after(5, 10))[0].metadata is None
        finally:
            await store.aclose()

    def test_metadata_for_every_append_or_none(self) -> None:
        with pytest.raises(ValueError, match="a commit of 2 appends has metadata for 1"):
            Commit(appends=[("a", b"{}"), ("b", b"{}")], metadata=[None])

    def test_the_metadata_format(self) -> None:
        assert encode_metadata({}) is None
        text = encode_metadata({"traceparent": TRACEPARENT, "tracestate": "k=v"})
        assert text == f'{{"traceparent":"{TRACEPARENT}","tracestate":"k=v"}}'
        assert decode_metadata(text) == {"traceparent": TRACEPARENT, "tracestate": "k=v"}
        assert decode_metadata(None) is NO_METADATA

    @pytest.mark.parametrize(
        ("text", "read"),
        [
            pytest.param("not json", {}, id="not-json"),
            pytest.param('["traceparent"]', {}, id="not-an-object"),
            pytest.param(
                '{"traceparent": 3, "tracestate": "k=v"}', {"tracestate": "k=v"}, id="mixed"
            ),
        ],
    )
    def test_another_programs_metadata_never_makes_a_message_undecodable(
        self, text: str, read: dict[str, str]
    ) -> None:
        assert decode_metadata(text) == read
        message = pt.Message.from_row(Row(1, 0.0, "x", b"{}", text), None)
        assert message.metadata == read

    def test_message_keeps_its_constructor_and_hash(self) -> None:
        message = pt.Message(
            1, pt.Message.from_row(Row(1, 0.0, "x", b"{}"), None).timestamp, "x", 1
        )
        assert message.metadata == {}
        traced = attrs.evolve(message, metadata={"traceparent": TRACEPARENT})
        assert hash(traced) == hash(message)
        assert traced != message


# The schema as it was before messages kept metadata.
OLD_SCHEMA = SCHEMA.replace(
    "payload   BLOB    NOT NULL,\n    metadata  TEXT\n", "payload BLOB NOT NULL\n"
)


def old_sqlite_log(path: Path) -> None:
    """A log of one order, written before messages kept metadata."""
    assert "metadata" not in OLD_SCHEMA
    conn = sqlite3.connect(path)
    try:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO messages VALUES (1, 5.0, 'otel-test/order', ?)", (b'{"n":1}',))
        conn.commit()
    finally:
        conn.close()


def message_columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
    finally:
        conn.close()


class TestOlderLogs:
    """A log from before metadata: its rows read with none, new rows get some."""

    async def test_sqlite_gets_the_column_on_open(
        self, spans: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        path = tmp_path / "old.db"
        old_sqlite_log(path)
        script = Script()
        app = build(str(path), script)
        async with serving(app):
            await app.caught_up()
            message = await app.execute(Order(2))
            await app.caught_up()
        assert message_columns(path)[-1] == "metadata"
        rows = await stored_rows(str(path))
        assert [r.id for r in rows] == [1, 2, 3, 4]
        assert rows[0].metadata is None
        assert decode_metadata(rows[2].metadata) == message.metadata != {}
        # The old order was handled live, in a trace of its own; the new one in execute's.
        first, second = finished(spans)["handle otel-test/order"]
        assert first.parent is None
        (execute,) = finished(spans)["execute otel-test/order"]
        assert parent_of(second) == ids(execute)
        assert len(script.shipped_metadata) == 2

    async def test_sqlite_read_only_reads_an_old_log_and_leaves_it_old(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "old.db"
        old_sqlite_log(path)
        store = ReadOnlySQLiteStore(str(path))
        assert await store.open() == 1
        try:
            assert await store.read_after(0, 10) == [
                Row(1, 5.0, "otel-test/order", b'{"n":1}', None)
            ]
        finally:
            await store.aclose()
        assert "metadata" not in message_columns(path)
        # The writer's store adds it, once.
        writer = SQLiteStore(str(path))
        await writer.open()
        await writer.aclose()
        assert message_columns(path).count("metadata") == 1

    @pytest.mark.postgres
    async def test_postgres_gets_the_column_on_open(self, postgres_url: str) -> None:
        import psycopg  # noqa: PLC0415 - only where the server exists

        store = open_store(postgres_url)
        await store.open()
        await store.commit_many([Commit(appends=[("old", b"{}")], metadata=['{"a":"b"}'])])
        await store.aclose()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            # What a log made before the column looks like to the stores.
            conn.execute("ALTER TABLE messages DROP COLUMN metadata")
        reader = open_store(postgres_url, read_only=True)
        await reader.open()
        try:
            assert [(r.name, r.metadata) for r in await reader.read_after(0, 10)] == [("old", None)]
        finally:
            await reader.aclose()
        store = open_store(postgres_url)
        await store.open()
        try:
            await store.commit_many([Commit(appends=[("new", b"{}")], metadata=['{"c":"d"}'])])
            assert [(r.name, r.metadata) for r in await store.read_after(0, 10)] == [
                ("old", None),
                ("new", '{"c":"d"}'),
            ]
        finally:
            await store.aclose()


def test_tracing_follows_the_provider_set_when_serving_starts(
    spans: InMemorySpanExporter,
) -> None:
    active = _tracing.refresh()
    assert active is not None
    assert active.provider is trace.get_tracer_provider()
    assert _tracing.refresh() is active  # built once per provider
    _reset_trace_globals()
    assert _tracing.refresh() is None
