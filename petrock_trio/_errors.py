"""Every error petrock_trio raises on purpose.

The hierarchy::

    PetrockError
     ├── CommandError                   a command cannot be accepted; nothing was appended
     │    ├── UnknownCommand (LookupError)      no class is registered under that name
     │    ├── DecodeError (ValueError)          a payload does not decode into its class
     │    ├── ValidationError (ValueError)      the command is invalid against current state
     │    ├── PayloadTooLarge (ValueError)      the encoded payload exceeds the limit
     │    └── BatchTooLarge (ValueError)        a batch holds more commands than the limit
     ├── HandlerError                   raised *by* handlers to steer retries
     │    ├── Permanent                         do not retry; dead-letter at once
     │    └── Retry                             retry after `delay`, no error-level log
     ├── HandlerTimeout (TimeoutError)  a handler or periodic run overran its timeout
     ├── ServiceUnavailable             an external service's circuit is open
     ├── StoreError                     the database failed; wraps the driver's error
     │    ├── OutcomeUnknown                   a commit may or may not have landed
     │    ├── LeaseLost                        another process took over a worker
     │    ├── StoreGone                        the database file was deleted or replaced
     │    └── ForeignDatabase                  the database holds no petrock_trio log
     ├── NotRunning (RuntimeError)      the app is not serving (not started, or stopping)
     ├── OperatorError                  an operator's verb cannot be done as asked
     │    ├── WorkerPaused (RuntimeError)       the worker is paused: it handles nothing now
     │    ├── NotPaused (RuntimeError)          resetting a position needs the worker paused
     │    ├── RedriveBacklog                    too many re-drives are unfinished to add more
     │    └── BadPosition (ValueError)          a position outside the log
     └── ConfigurationError (ValueError)   a worker, command or app is set up wrongly

A command refused within a batch (``execute_many``) raises its own error, with
``index`` set to its position in the batch; nothing of the batch was appended.

All are ``Exception`` subclasses: none of them must slip past ``except Exception``,
which is reserved for trio's ``Cancelled`` and ``KeyboardInterrupt``.
"""

from __future__ import annotations

__all__ = [
    "BadPosition",
    "BatchTooLarge",
    "CommandError",
    "ConfigurationError",
    "DecodeError",
    "ForeignDatabase",
    "HandlerError",
    "HandlerTimeout",
    "LeaseLost",
    "NotPaused",
    "NotRunning",
    "OperatorError",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "Permanent",
    "PetrockError",
    "RedriveBacklog",
    "Retry",
    "ServiceUnavailable",
    "StoreError",
    "StoreGone",
    "UnknownCommand",
    "ValidationError",
    "WorkerPaused",
]


class PetrockError(Exception):
    """Base class of every error raised by petrock_trio."""


class ConfigurationError(PetrockError, ValueError):
    """A worker, a command class or the app is set up in a way that cannot work."""


class CommandError(PetrockError):
    """A command was refused; nothing was appended to the log.

    ``command_name`` names the command when it is known. ``index`` is the refused
    command's position in the batch given to ``execute_many`` (from 0; nothing of the
    batch was appended), ``None`` for a command executed alone.
    """

    def __init__(self, message: str, *, command_name: str | None = None) -> None:
        super().__init__(message)
        self.command_name = command_name
        self.index: int | None = None


class UnknownCommand(CommandError, LookupError):
    """No command class is registered under this name."""


class DecodeError(CommandError, ValueError):
    """A payload does not decode into its command class (bad JSON, wrong types, missing fields)."""


class ValidationError(CommandError, ValueError):
    """A command's ``validate(state)`` refused it against the current state."""


class PayloadTooLarge(CommandError, ValueError):
    """The encoded payload is larger than the app's ``max_payload_bytes``."""


class BatchTooLarge(CommandError, ValueError):
    """A batch for ``execute_many`` holds more than the app's ``max_batch`` commands;
    none of them was looked at, and nothing was appended. Split it."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a batch of {size} commands exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


class HandlerError(PetrockError):
    """Base class of the exceptions handlers raise to steer their own retries."""


class Permanent(HandlerError):
    """Raise from a handler: this message can never succeed; dead-letter it without retrying."""


class Retry(HandlerError):
    """Raise from a handler: try this message again after ``delay`` seconds.

    It counts as an attempt but is logged at info level, not as an error: use it for
    expected, transient conditions (a resource that is not ready yet).
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class HandlerTimeout(PetrockError, TimeoutError):
    """A handler or a periodic run did not finish within its timeout."""

    def __init__(self, worker: str, timeout: float, what: str) -> None:
        super().__init__(f"{what} of worker {worker!r} timed out after {timeout:g} s")
        self.worker = worker
        self.timeout = timeout
        self.what = what


class ServiceUnavailable(PetrockError):
    """An external service's circuit is open; the call was not attempted."""

    def __init__(self, service: str, retry_after: float | None = None) -> None:
        detail = f"; retry in {retry_after:g} s" if retry_after is not None else ""
        super().__init__(f"external service {service!r} is unavailable{detail}")
        self.service = service
        self.retry_after = retry_after


class StoreError(PetrockError):
    """The database failed; ``__cause__`` holds the driver's exception."""


class OutcomeUnknown(StoreError):
    """The connection failed during a commit: it may or may not have landed.

    The log does not retry such a commit (that could append twice); it fails every
    commit of the batch with this error.
    """


class LeaseLost(StoreError):
    """A commit was refused: these workers' leases now belong to another process.

    Nothing of the commit was written. The worker stops here; the process that holds
    the lease handles the message.
    """

    def __init__(self, workers: tuple[str, ...]) -> None:
        super().__init__(f"lease lost for worker(s) {', '.join(map(repr, workers))}")
        self.workers = workers


class StoreGone(StoreError):
    """The database is gone for good: its file was deleted or replaced under the app.

    Nothing more is written (what would be written there is lost with the file): every
    write from then on raises this, and no command is acknowledged. ``reason`` says
    which file and what happened; restart the app on a restored database.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; nothing more is written to it")
        self.reason = reason


class ForeignDatabase(StoreError):
    """A database opened read-only holds no petrock_trio log: its tables are missing.

    Opening read-only never creates them (that would change another program's
    database), so the opening stops here. ``missing`` names the tables not found.
    """

    def __init__(self, database: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            f"{database} is not a petrock_trio database (no {', '.join(missing)} "
            f"table{'s' if len(missing) > 1 else ''}); nothing was changed"
        )
        self.database = database
        self.missing = missing


class NotRunning(PetrockError, RuntimeError):
    """The app is not serving: ``serve`` has not started it yet, or it is shutting down."""


class OperatorError(PetrockError):
    """An operator's verb (pause, resume, reset, re-drive, discard) cannot be done as
    asked; nothing was changed. ``worker`` names the worker it was asked of, if any."""

    def __init__(self, message: str, *, worker: str | None = None) -> None:
        super().__init__(message)
        self.worker = worker


class WorkerPaused(OperatorError, RuntimeError):
    """The worker is paused by an operator, so it handles nothing now (a re-drive, a
    periodic run asked for); resume it first."""


class NotPaused(OperatorError, RuntimeError):
    """A worker's position is reset only while it is paused, so that nothing it is
    doing races the new position; pause it first."""


class RedriveBacklog(OperatorError):
    """So many re-drives are unfinished that their tickets would not be kept: wait for
    some to finish, or re-drive fewer at once."""


class BadPosition(OperatorError, ValueError):
    """A position that is not in the log: negative, or beyond its head."""
