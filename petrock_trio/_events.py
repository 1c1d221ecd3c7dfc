"""Instrumentation: frozen event records handed to hooks.

The engine reports what workers do as events; hooks turn them into logs, test
recordings or anything else. ``StructlogHook`` is installed on every app and writes
the structured log lines, each with ``worker_name``, ``command_type``,
``message_id`` (where there is one), ``execution_time`` (ms) and, on failure,
``error_details`` and the exception itself as ``exc_info``, so that the log
renderer shows its traceback.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import attrs
import structlog

from ._logging import get_logger
from ._message import Message

__all__ = [
    "DeadLettered",
    "Event",
    "HandlerCompleted",
    "HandlerFailed",
    "Hook",
    "PeriodicCompleted",
    "PeriodicFailed",
    "PeriodicSkipped",
    "Replayed",
    "StructlogHook",
    "WorkerCrashed",
    "event_fields",
]


@attrs.frozen
class HandlerCompleted:
    """A live handler succeeded; ``emitted`` are the (name, payload) pairs it committed."""

    worker: str
    message: Message
    attempt: int
    duration: float
    emitted: tuple[tuple[str, bytes], ...]
    redrive: bool = False


@attrs.frozen
class HandlerFailed:
    """A live attempt failed. ``delay`` is the wait before the next attempt, ``None`` when
    the message is dead-lettered instead."""

    worker: str
    message_id: int
    command_type: str
    attempt: int
    duration: float
    error: BaseException
    delay: float | None
    timed_out: bool = False
    retry_requested: bool = False  # raised pt.Retry: expected, logged at info level
    service_unavailable: bool = False  # an open circuit: this attempt did not count


@attrs.frozen
class DeadLettered:
    """A message was given up on. ``duration`` is its last attempt's, ``None`` when no
    handler ran (its payload did not decode)."""

    worker: str
    message_id: int
    command_type: str
    attempts: int
    error: BaseException
    duration: float | None = None


@attrs.frozen
class Replayed:
    """A handler ran in replay (``is_replay=True``); ``error`` if it raised."""

    worker: str
    message: Message
    duration: float
    error: BaseException | None = None


@attrs.frozen
class PeriodicCompleted:
    worker: str
    run: int
    duration: float
    emitted: tuple[tuple[str, bytes], ...]


@attrs.frozen
class PeriodicFailed:
    worker: str
    run: int
    duration: float
    error: BaseException
    timed_out: bool = False


@attrs.frozen
class PeriodicSkipped:
    worker: str
    services: tuple[str, ...]


@attrs.frozen
class WorkerCrashed:
    """The worker's own loop failed (a bug, not a handler error).

    It restarts after ``restart_in`` seconds."""

    worker: str
    error: BaseException
    restart_in: float


Event = (
    HandlerCompleted
    | HandlerFailed
    | DeadLettered
    | Replayed
    | PeriodicCompleted
    | PeriodicFailed
    | PeriodicSkipped
    | WorkerCrashed
)


class Hook(Protocol):
    def __call__(self, event: Event, /) -> None: ...


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def event_fields(event: Event) -> dict[str, Any]:
    """``worker_name`` and, where the event has them, ``command_type`` and ``message_id``:
    the fields that say which work a line about ``event`` is about."""
    fields: dict[str, Any] = {"worker_name": event.worker}
    match event:
        case HandlerCompleted() | Replayed():
            fields["command_type"] = event.message.name
            fields["message_id"] = event.message.id
        case HandlerFailed() | DeadLettered():
            fields["command_type"] = event.command_type
            fields["message_id"] = event.message_id
        case PeriodicCompleted() | PeriodicFailed() | PeriodicSkipped():
            fields["command_type"] = "periodic"
        case WorkerCrashed():
            pass
    return fields


class StructlogHook:
    """Writes every event as a structured log line (``petrock.<what>`` event names)."""

    def __init__(self, logger: Any = None) -> None:
        self._log = logger or get_logger("petrock_trio.worker")

    def __repr__(self) -> str:
        return "<StructlogHook>"

    def debug_enabled(self) -> bool:
        return _debug_enabled(self._log)

    def __call__(self, event: Event) -> None:  # noqa: C901, PLR0912 - one branch per event type
        log = self._log
        match event:
            case HandlerCompleted():
                # The hot path: skip building the line when debug is filtered out.
                if _debug_enabled(log):
                    log.debug(
                        "petrock.handler.complete",
                        worker_name=event.worker,
                        command_type=event.message.name,
                        message_id=event.message.id,
                        attempt=event.attempt,
                        execution_time=_ms(event.duration),
                        emitted=len(event.emitted),
                    )
            case HandlerFailed():
                fields = {
                    "worker_name": event.worker,
                    "command_type": event.command_type,
                    "message_id": event.message_id,
                    "attempt": event.attempt,
                    "execution_time": _ms(event.duration),
                    "error_details": repr(event.error),
                }
                if event.delay is not None:
                    fields["delay"] = event.delay
                if event.service_unavailable or event.retry_requested:
                    # Expected (asked for, or an open circuit): no traceback.
                    log.info("petrock.retry_scheduled", **fields)
                elif event.timed_out:
                    log.error("petrock.handler.timeout", **fields, exc_info=event.error)
                else:
                    log.error("petrock.handler.failed", **fields, exc_info=event.error)
            case DeadLettered():
                fields = {
                    "worker_name": event.worker,
                    "command_type": event.command_type,
                    "message_id": event.message_id,
                    "attempts": event.attempts,
                    "error_details": repr(event.error),
                }
                if event.duration is not None:
                    fields["execution_time"] = _ms(event.duration)
                log.error("petrock.dead_lettered", **fields, exc_info=event.error)
            case Replayed():
                if event.error is not None:
                    log.warning(
                        "petrock.replay.failed",
                        worker_name=event.worker,
                        command_type=event.message.name,
                        message_id=event.message.id,
                        execution_time=_ms(event.duration),
                        error_details=repr(event.error),
                        exc_info=event.error,
                    )
            case PeriodicCompleted():
                if _debug_enabled(log):
                    log.debug(
                        "petrock.periodic.complete",
                        worker_name=event.worker,
                        command_type="periodic",
                        run=event.run,
                        execution_time=_ms(event.duration),
                        emitted=len(event.emitted),
                    )
            case PeriodicFailed():
                log.error(
                    "petrock.periodic.timeout" if event.timed_out else "petrock.periodic.failed",
                    worker_name=event.worker,
                    command_type="periodic",
                    run=event.run,
                    execution_time=_ms(event.duration),
                    error_details=repr(event.error),
                    exc_info=event.error,
                )
            case PeriodicSkipped():
                log.warning(
                    "petrock.periodic.skipped",
                    worker_name=event.worker,
                    command_type="periodic",
                    reason=f"external service unavailable: {', '.join(event.services)}",
                )
            case WorkerCrashed():
                log.error(
                    "petrock.worker_crashed",
                    worker_name=event.worker,
                    error_details=repr(event.error),
                    restart_in=event.restart_in,
                    exc_info=event.error,
                )


_levels: dict[type[Any], int] = {}


def _debug_enabled(log: Any) -> bool:
    """Whether debug lines would be written, without building a logger (hot path)."""
    if not isinstance(log, structlog._config.BoundLoggerLazyProxy):  # noqa: SLF001
        check = getattr(log, "is_enabled_for", None)
        return True if check is None else bool(check(logging.DEBUG))
    wrapper = structlog.get_config()["wrapper_class"]
    level = _levels.get(wrapper)
    if level is None:
        # Filtering wrappers know their level; anything else lets everything through.
        check = getattr(log.bind(), "get_effective_level", None)
        level = _levels[wrapper] = int(check()) if check is not None else logging.NOTSET
    return level <= logging.DEBUG
