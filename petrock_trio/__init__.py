"""petrock_trio: background workers for command-sourced applications, on Trio."""

import contextlib as _contextlib
import importlib as _importlib
import typing as _typing
from typing import Any as _Any

from ._app import App as App
from ._app import DeadLetter as DeadLetter
from ._app import Feature as Feature
from ._app import LegacyWorker as LegacyWorker
from ._clock import SystemClock as SystemClock
from ._clock import TrioWallClock as TrioWallClock
from ._clock import WallClock as WallClock
from ._commands import Command as Command
from ._commands import CommandRegistry as CommandRegistry
from ._commands import command as command
from ._commands import command_name as command_name
from ._context import HandlerContext as HandlerContext
from ._context import PeriodicContext as PeriodicContext
from ._errors import BadPosition as BadPosition
from ._errors import BatchTooLarge as BatchTooLarge
from ._errors import CommandError as CommandError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DecodeError as DecodeError
from ._errors import ForeignDatabase as ForeignDatabase
from ._errors import HandlerError as HandlerError
from ._errors import HandlerTimeout as HandlerTimeout
from ._errors import LeaseLost as LeaseLost
from ._errors import NotPaused as NotPaused
from ._errors import NotRunning as NotRunning
from ._errors import OperatorError as OperatorError
from ._errors import OutcomeUnknown as OutcomeUnknown
from ._errors import PayloadTooLarge as PayloadTooLarge
from ._errors import Permanent as Permanent
from ._errors import PetrockError as PetrockError
from ._errors import RedriveBacklog as RedriveBacklog
from ._errors import Retry as Retry
from ._errors import ServiceUnavailable as ServiceUnavailable
from ._errors import StoreError as StoreError
from ._errors import StoreGone as StoreGone
from ._errors import UnknownCommand as UnknownCommand
from ._errors import ValidationError as ValidationError
from ._errors import WorkerPaused as WorkerPaused
from ._events import DeadLettered as DeadLettered
from ._events import Event as Event
from ._events import HandlerCompleted as HandlerCompleted
from ._events import HandlerFailed as HandlerFailed
from ._events import Hook as Hook
from ._events import PeriodicCompleted as PeriodicCompleted
from ._events import PeriodicFailed as PeriodicFailed
from ._events import PeriodicSkipped as PeriodicSkipped
from ._events import Replayed as Replayed
from ._events import StructlogHook as StructlogHook
from ._events import WorkerCrashed as WorkerCrashed
from ._health import Health as Health
from ._health import HealthReport as HealthReport
from ._health import HealthThresholds as HealthThresholds
from ._legacy import WorkerInfo as WorkerInfo
from ._log import MessageLog as MessageLog
from ._logging import configure_logging as configure_logging
from ._message import Message as Message
from ._metrics import WorkerMetrics as WorkerMetrics
from ._open import open_log as open_log
from ._operator import BulkRedrive as BulkRedrive
from ._redrive import RedriveTicket as RedriveTicket
from ._reset import MessageRange as MessageRange
from ._reset import ResetPlan as ResetPlan
from ._retry import Backoff as Backoff
from ._serve import serve as serve
from ._services import Circuit as Circuit
from ._services import ExternalService as ExternalService
from ._services import ServiceStatistics as ServiceStatistics
from ._worker import PatternWorker as PatternWorker
from ._worker import WorkerStatistics as WorkerStatistics

__all__ = [
    "App",
    "Backoff",
    "BadPosition",
    "BatchTooLarge",
    "BulkRedrive",
    "Circuit",
    "Command",
    "CommandError",
    "CommandRegistry",
    "ConfigurationError",
    "DeadLetter",
    "DeadLettered",
    "DecodeError",
    "Event",
    "ExternalService",
    "Feature",
    "ForeignDatabase",
    "HandlerCompleted",
    "HandlerContext",
    "HandlerError",
    "HandlerFailed",
    "HandlerTimeout",
    "Health",
    "HealthReport",
    "HealthThresholds",
    "Hook",
    "LeaseLost",
    "LegacyWorker",
    "Message",
    "MessageLog",
    "MessageRange",
    "NotPaused",
    "NotRunning",
    "OperatorError",
    "OutcomeUnknown",
    "PatternWorker",
    "PayloadTooLarge",
    "PeriodicCompleted",
    "PeriodicContext",
    "PeriodicFailed",
    "PeriodicSkipped",
    "Permanent",
    "PetrockError",
    "RedriveBacklog",
    "RedriveTicket",
    "Replayed",
    "ResetPlan",
    "Retry",
    "ServiceStatistics",
    "ServiceUnavailable",
    "StoreError",
    "StoreGone",
    "StructlogHook",
    "SystemClock",
    "TrioWallClock",
    "UnknownCommand",
    "ValidationError",
    "WallClock",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerMetrics",
    "WorkerPaused",
    "WorkerStatistics",
    "command",
    "command_name",
    "configure_logging",
    "http_app",
    "open_log",
    "serve",
    "serve_http",
]

if _typing.TYPE_CHECKING:
    from ._http import http_app as http_app
    from ._http import serve_http as serve_http

# Names loaded on first use, with the extra that installs what they need: a program
# that only runs workers imports no HTTP server, web framework or Prometheus client.
_LAZY = {"http_app": ("._http", "http"), "serve_http": ("._http", "http")}
_EXTRA_MODULES = {"http": {"starlette", "hypercorn", "prometheus_client", "anyio"}}

# Tracebacks and reprs name the public path, not the private module.
for _name in (n for n in __all__ if n not in _LAZY):
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("petrock_trio._"):
        with _contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj


def __getattr__(name: str) -> _Any:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - only when asked

        return version("petrock-trio")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, extra = _LAZY[name]
    try:
        module = _importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _EXTRA_MODULES[extra]:
            raise  # a bug, not an installation without the extra
        raise ModuleNotFoundError(
            f"petrock_trio.{name} needs the {extra!r} extra ({missing} is not installed): "
            f"pip install 'petrock-trio[{extra}]'",
            name=missing,
        ) from exc
    obj = getattr(module, name)
    with _contextlib.suppress(AttributeError, TypeError):
        obj.__module__ = __name__
    globals()[name] = obj  # later look-ups find it without coming here
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
