"""One place that configures structlog for petrock_trio applications."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["configure_logging"]


def _dumps(data: Any, **_: Any) -> str:
    return orjson.dumps(data, default=repr).decode()


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
    ``execution_time`` (ms) and ``error_details``.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *processors,
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
