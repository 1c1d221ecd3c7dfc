"""OpenTelemetry tracing: a span per execute and per handler attempt, linked through the log.

A command carries its trace context in the log (the message's ``metadata``: W3C
``traceparent`` and ``tracestate``), so the handler that takes it up later, in
another task or another process, continues the trace of the code that appended it:
an HTTP request, its ``execute``, each attempt of each handler, the commands a
handler emitted, and their handlers in turn.

Tracing is on while a tracer provider is set (``opentelemetry.trace.set_tracer_provider``)
when the app starts serving, and the ``otel`` extra is installed. Otherwise
:data:`ACTIVE` is ``None`` and the engine's hot paths test only that: OpenTelemetry's
no-op tracer is not free (about 5 µs a span with its context, most of what the engine
spends on a message). Nothing of OpenTelemetry is imported unless the application has
imported it already (or names a provider in ``OTEL_PYTHON_TRACER_PROVIDER``). Replays make no spans:
they rebuild state from messages whose traces ended long ago.

This is the only module that touches OpenTelemetry, and only inside :func:`refresh`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol

from ._commands import command_name
from ._errors import HandlerTimeout, UnknownCommand
from ._message import Message, encode_metadata

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = [
    "ACTIVE",
    "ATTEMPT",
    "BATCH_SIZE",
    "COMMAND",
    "COMMANDS",
    "FIRST_MESSAGE_ID",
    "INDEX",
    "LAST_MESSAGE_ID",
    "MESSAGE_ID",
    "OUTCOME",
    "PARTITION",
    "REDRIVE",
    "WORKER",
    "Tracing",
    "refresh",
    "remote_parent",
]

# Span attributes.
WORKER: Final = "petrock_trio.worker"
COMMAND: Final = "petrock_trio.command"
MESSAGE_ID: Final = "petrock_trio.message_id"
ATTEMPT: Final = "petrock_trio.attempt"
PARTITION: Final = "petrock_trio.partition"
REDRIVE: Final = "petrock_trio.redrive"
# An execute_many span: its size, distinct command names, ids, and the refused index.
BATCH_SIZE: Final = "petrock_trio.batch_size"
COMMANDS: Final = "petrock_trio.commands"
FIRST_MESSAGE_ID: Final = "petrock_trio.first_message_id"
LAST_MESSAGE_ID: Final = "petrock_trio.last_message_id"
INDEX: Final = "petrock_trio.index"
# An attempt's end: "ok", "error", "timeout" or "cancelled" (a hard stop, a lost lease).
OUTCOME: Final = "petrock_trio.outcome"

_HEADERS: Final = ("traceparent", "tracestate")
_PROVIDER_VARIABLE: Final = "OTEL_PYTHON_TRACER_PROVIDER"


class Tracing(Protocol):
    """Spans of the tracer provider that was set when serving started."""

    @property
    def provider(self) -> object:
        """The tracer provider whose spans these are."""
        ...

    def current(self) -> str | None:
        """The metadata for a command appended now: the current span's trace context as
        a row's ``metadata`` text, or ``None`` without a valid span."""
        ...

    async def execute(
        self, fn: Callable[[object, Sequence[str | None]], Awaitable[Message]], cmd: object
    ) -> Message:
        """``await fn(cmd, metadata)`` in an ``execute`` span; ``metadata`` is that span's."""
        ...

    async def execute_many(
        self,
        fn: Callable[[Sequence[object], str | None], Awaitable[list[Message]]],
        commands: Sequence[object],
    ) -> list[Message]:
        """``await fn(commands, metadata)`` in one ``execute_many`` span; ``metadata``
        is that span's, carried by every message of the batch."""
        ...

    async def attempt(
        self,
        fn: Callable[[], Awaitable[BaseException | None]],
        message: Message,
        *,
        worker: str,
        attempt: int,
        partition: int,
        redrive: bool,
    ) -> BaseException | None:
        """``await fn()`` (one attempt at ``message``, which returns its error) in a
        ``handle`` span whose parent is the context ``message`` carries."""
        ...

    def remote_parent(self, headers: Mapping[str, str]) -> AbstractContextManager[None]:
        """Make the trace context of an HTTP request's headers current, unless a span
        already is (middleware that traces requests has made one from them)."""
        ...


ACTIVE: Tracing | None = None
"""The tracing in force, or ``None``: read once per message by the hot paths."""

_NOTHING: Final = contextlib.nullcontext()
_built: list[Tracing] = []  # the last one built, reused while its provider stays


def refresh() -> Tracing | None:
    """Trace from now on if a tracer provider is set and OpenTelemetry is installed;
    called when an app starts serving."""
    global ACTIVE  # noqa: PLW0603 - one switch, read as a module attribute by the hot paths
    ACTIVE = _resolve()
    return ACTIVE


def remote_parent(headers: Mapping[str, str]) -> AbstractContextManager[None]:
    """The trace context of ``headers`` (``traceparent``, ``tracestate``), current for the
    block; nothing without tracing or without a ``traceparent``."""
    active = ACTIVE
    if active is None or "traceparent" not in headers:
        return _NOTHING
    return active.remote_parent(headers)


def _resolve() -> Tracing | None:
    # A provider is set through the API, which the application has then imported; or
    # named in the environment, for the API to load on first use.
    if "opentelemetry.trace" not in sys.modules and _PROVIDER_VARIABLE not in os.environ:
        return None
    try:
        from opentelemetry import trace  # noqa: PLC0415 - only where tracing may be on
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    # The API's own providers until the application sets one: their spans cost
    # without ever being recorded.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _built and _built[0].provider is provider:
        return _built[0]
    tracing = _build(provider)
    if tracing is not None:
        _built[:] = [tracing]
    return tracing


def _version() -> str | None:
    try:
        return importlib.metadata.version("petrock-trio")
    except importlib.metadata.PackageNotFoundError:
        return None


def _name(cmd: object) -> str:
    try:
        return command_name(cmd)
    except UnknownCommand:
        return type(cmd).__qualname__  # execute refuses it, inside the span


def _build(provider: TracerProvider) -> Tracing | None:  # noqa: C901 - one class, built here
    """A :class:`Tracing` on ``provider``, or ``None`` if its tracer records nothing
    (``OTEL_SDK_DISABLED``)."""
    # Imported here, and so only once a provider is set: importing petrock_trio, or
    # serving without tracing, loads nothing of OpenTelemetry.
    from opentelemetry import context as otel_context  # noqa: PLC0415
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    tracer = provider.get_tracer("petrock_trio", _version())
    if isinstance(tracer, trace.NoOpTracer):
        return None
    # W3C trace context whatever propagators the process is configured with: the log's
    # format must not depend on the settings of whichever process wrote a row.
    propagator = TraceContextTextMapPropagator()
    attach, detach = otel_context.attach, otel_context.detach
    in_context = trace.set_span_in_context
    error = trace.StatusCode.ERROR

    def metadata_of(ctx: otel_context.Context | None = None) -> str | None:
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=ctx)
        return encode_metadata(carrier)

    def failed(span: trace.Span, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_status(trace.Status(error, f"{type(exc).__name__}: {exc}"))

    class _Tracing:
        def __init__(self) -> None:
            self.provider = provider

        def __repr__(self) -> str:
            return f"<Tracing {type(provider).__name__}>"

        def current(self) -> str | None:
            return metadata_of()

        async def execute(
            self, fn: Callable[[object, Sequence[str | None]], Awaitable[Message]], cmd: object
        ) -> Message:
            name = _name(cmd)
            span = tracer.start_span(
                f"execute {name}", kind=trace.SpanKind.PRODUCER, attributes={COMMAND: name}
            )
            ctx = in_context(span)
            token = attach(ctx)
            try:
                message = await fn(cmd, (metadata_of(ctx),))
                span.set_attribute(MESSAGE_ID, message.id)
            except Exception as exc:
                failed(span, exc)
                raise
            finally:
                detach(token)
                span.end()
            return message

        async def execute_many(
            self,
            fn: Callable[[Sequence[object], str | None], Awaitable[list[Message]]],
            commands: Sequence[object],
        ) -> list[Message]:
            names = list(dict.fromkeys(_name(cmd) for cmd in commands))
            span = tracer.start_span(
                "execute_many",
                kind=trace.SpanKind.PRODUCER,
                attributes={BATCH_SIZE: len(commands), COMMANDS: names},
            )
            ctx = in_context(span)
            token = attach(ctx)
            try:
                messages = await fn(commands, metadata_of(ctx))
                if messages:
                    span.set_attribute(FIRST_MESSAGE_ID, messages[0].id)
                    span.set_attribute(LAST_MESSAGE_ID, messages[-1].id)
            except Exception as exc:
                if (index := getattr(exc, "index", None)) is not None:
                    span.set_attribute(INDEX, index)
                failed(span, exc)
                raise
            finally:
                detach(token)
                span.end()
            return messages

        async def attempt(
            self,
            fn: Callable[[], Awaitable[BaseException | None]],
            message: Message,
            *,
            worker: str,
            attempt: int,
            partition: int,
            redrive: bool,
        ) -> BaseException | None:
            # Continues the trace of whoever appended the message; from an empty context,
            # not the worker task's, so that nothing else becomes its parent.
            parent = propagator.extract(message.metadata, context=otel_context.Context())
            attributes: dict[str, AttributeValue] = {
                WORKER: worker,
                COMMAND: message.name,
                MESSAGE_ID: message.id,
                ATTEMPT: attempt,
                PARTITION: partition,
            }
            if redrive:
                attributes[REDRIVE] = True
            span = tracer.start_span(
                f"handle {message.name}",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
            )
            token = attach(in_context(span, parent))
            outcome = "cancelled"
            try:
                result = await fn()
                if result is None:
                    outcome = "ok"
                else:
                    outcome = "timeout" if isinstance(result, HandlerTimeout) else "error"
                    failed(span, result)
            except Exception as exc:  # a lost lease: not the handler's failure, still an end
                outcome = "error"
                failed(span, exc)
                raise
            finally:
                span.set_attribute(OUTCOME, outcome)
                detach(token)
                span.end()
            return result

        @contextlib.contextmanager
        def remote_parent(self, headers: Mapping[str, str]) -> Iterator[None]:
            if trace.get_current_span().get_span_context().is_valid:
                yield
                return
            carrier = {key: headers[key] for key in _HEADERS if key in headers}
            token = attach(propagator.extract(carrier))
            try:
                yield
            finally:
                detach(token)

    return _Tracing()
