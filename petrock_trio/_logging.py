"""One place that configures structlog for petrock_trio applications, and the worker
fields of the code running now."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog
from structlog.dev import RichTracebackFormatter
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["WORKING", "EngineLogger", "configure_logging", "get_logger", "work_fields"]

WORKING: ContextVar[tuple[str, str, int | None] | None] = ContextVar(
    "petrock_trio_working", default=None
)
"""(worker, command type, message id) of the handler or periodic work running now.

Set around each call of user code, so that code which does not know who calls it (an
external service's circuit breaker) can name the worker in its log lines.
"""


def work_fields() -> dict[str, Any]:
    """``worker_name``, ``command_type`` and ``message_id`` of the work running now, if any."""
    working = WORKING.get()
    if working is None:
        return {}
    worker, command_type, message_id = working
    fields: dict[str, Any] = {"worker_name": worker, "command_type": command_type}
    if message_id is not None:
        fields["message_id"] = message_id
    return fields


def _dumps(data: Any, **_: Any) -> str:
    return orjson.dumps(data, default=repr).decode()


def _console_tracebacks(*, colors: bool) -> structlog.typing.ExceptionRenderer:
    """rich's rendering where rich is installed (the `cli` extra). structlog's rich
    formatter fails on the first traceback without it, so the engine alone gets plain text."""
    if getattr(structlog.dev, "rich", None) is None:
        return structlog.dev.plain_traceback
    return RichTracebackFormatter(color_system="truecolor" if colors else None, show_locals=False)


def configure_logging(
    *,
    level: str | int = "info",
    json: bool | None = None,
    processors: Sequence[structlog.typing.Processor] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog: JSON lines when not on a terminal, console rendering on one.

    ``level`` filters (``"debug"`` … ``"critical"``); ``processors`` run before
    rendering (add fields, redact, forward elsewhere); ``stream`` defaults to stderr so
    that a program's own output stays on stdout. Every worker log line carries
    ``worker_name``, ``command_type`` and, where they apply, ``message_id``,
    ``execution_time`` (ms) and ``error_details``. A failure's line carries its
    traceback: in JSON as a structured ``exception`` field (structlog's
    ``dict_tracebacks``), on the console rendered by rich (plain text without it).
    Neither shows the frames' local variables: they hold payloads and secrets, and
    would swamp the line.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    # https://no-color.org: set and not empty turns colour off; the layout stays.
    colors = stream.isatty() and not os.environ.get("NO_COLOR")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=_console_tracebacks(colors=colors),
        )
    )
    tracebacks: list[structlog.typing.Processor] = [structlog.processors.StackInfoRenderer()]
    if json:
        tracebacks.append(ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *processors,
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


# --- the engine's loggers -----------------------------------------------------------
#
# A library that embeds in other programs must not write to their output unasked, and
# structlog's defaults print every event to stdout. The engine's loggers therefore
# drop events while structlog is unconfigured, and are plain structlog loggers once
# anything configures it: configure_logging, the command line, the application's own
# structlog.configure, or the testing kit's structlog.testing.capture_logs. A bridge
# to the standard library's logging with a NullHandler would be quiet too, but it
# would route every event through logging's handlers, leave capture_logs and an
# application's structlog processors blind to them unless each wired the bridge up,
# and cost more per line; one check of structlog.is_configured() costs next to nothing.

_LEVEL_METHODS = ("debug", "info", "warning", "warn", "error", "exception", "critical", "fatal")
_SYNC_METHODS = frozenset({*_LEVEL_METHODS, "msg", "log"})
_ASYNC_METHODS = frozenset(f"a{name}" for name in _SYNC_METHODS)
# Per wrapper class: the least level it writes (filtering wrappers know theirs).
_least_levels: dict[type[Any], int] = {}
# The hot path asks for the configured wrapper class once per handled message, and
# structlog.get_config() copies the whole configuration to answer: read the one field
# where structlog keeps it, and fall back on get_config() should that ever move.
_CONFIG = getattr(structlog._config, "_CONFIG", None)  # noqa: SLF001


def _wrapper_class() -> Any:
    wrapper = getattr(_CONFIG, "default_wrapper_class", None)
    return wrapper if wrapper is not None else structlog.get_config()["wrapper_class"]


def _drop(*_: Any, **__: Any) -> None:
    return None


async def _adrop(*_: Any, **__: Any) -> None:
    return None


def get_logger(name: str, **context: Any) -> EngineLogger:
    """The engine's logger ``name``: structlog's, silent while structlog is unconfigured."""
    return EngineLogger(name, context)


class EngineLogger:
    """A structlog logger that drops events while structlog is unconfigured.

    It is resolved at each call, so it follows configuration made after it was
    created; ``bind``, ``new``, ``unbind`` and ``try_unbind`` keep it lazy and quiet.
    """

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context: dict[str, Any] = dict(context or {})

    def __repr__(self) -> str:
        return f"<EngineLogger {self._name!r} context={self._context!r}>"

    def bind(self, **new_values: Any) -> EngineLogger:
        return EngineLogger(self._name, {**self._context, **new_values})

    def new(self, **new_values: Any) -> EngineLogger:
        return EngineLogger(self._name, new_values)

    def unbind(self, *keys: str) -> EngineLogger:
        missing = [key for key in keys if key not in self._context]
        if missing:
            raise KeyError(missing[0])  # as structlog's own unbind does
        return self.try_unbind(*keys)

    def try_unbind(self, *keys: str) -> EngineLogger:
        return EngineLogger(self._name, {k: v for k, v in self._context.items() if k not in keys})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be written: the hot path asks before building one."""
        if not structlog.is_configured():
            return False
        wrapper = _wrapper_class()
        least = _least_levels.get(wrapper)
        if least is None:
            check = getattr(structlog.get_logger(self._name).bind(), "get_effective_level", None)
            least = _least_levels[wrapper] = int(check()) if check is not None else logging.NOTSET
        return level >= least

    def __getattr__(self, name: str) -> Any:
        if not structlog.is_configured():
            if name in _SYNC_METHODS:
                return _drop
            if name in _ASYNC_METHODS:
                return _adrop
        return getattr(structlog.get_logger(self._name, **self._context), name)
