"""What handlers and periodic work receive besides the command and the state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from . import _tracing
from ._commands import Command
from ._logging import EngineLogger, get_logger
from ._message import Message

__all__ = ["Emitter", "HandlerContext", "PeriodicContext"]


class Emitter(Protocol):
    """What a context needs of the serving app: checking a command, the wall clock, and
    what the app's lifespan yielded."""

    resources: Any

    def encode_valid(self, cmd: object) -> tuple[str, bytes]:
        """Encode ``cmd`` after checking it against current state; raises the typed errors."""
        ...

    def clock(self) -> float: ...


def _needs_validation(cmd: object) -> bool:
    return getattr(cmd, "validate", None) is not None


class HandlerContext:
    """The message being handled and the ways a handler acts on the log.

    ``emit(cmd)`` queues a command; it is appended in the same transaction that records
    this message as handled, so it lands exactly once. During replay
    (``is_replay=True``) ``emit`` does nothing: those commands are already in the log.
    ``idempotency_key`` is stable across retries and restarts: pass it to external
    services so that a repeated call has no second effect.
    """

    __slots__ = (
        "_log",
        "_rt",
        "_tracing",
        "attempt",
        "emitted",
        "emitted_metadata",
        "is_replay",
        "message",
        "partition",
        "to_validate",
        "worker_name",
    )

    def __init__(
        self,
        rt: Emitter,
        worker_name: str,
        message: Message,
        *,
        is_replay: bool,
        attempt: int,
        partition: int = 0,
    ) -> None:
        self._rt = rt
        self.worker_name = worker_name
        # Which partition of the worker handles the message (0 when unpartitioned).
        self.partition = partition
        self.message = message
        self.is_replay = is_replay
        self.attempt = attempt
        self.emitted: list[tuple[str, bytes]] = []
        # With tracing, each emitted command's metadata: the span current at its emit
        # (the attempt's, or one the handler opened) becomes its handlers' parent.
        self._tracing = _tracing.ACTIVE
        self.emitted_metadata: list[str | None] = []
        # Emitted commands with a validate method: checked again when they commit,
        # one at a time with execute, against the state they will be appended to.
        self.to_validate: list[object] = []
        self._log: EngineLogger | None = None

    def __repr__(self) -> str:
        mode = "replay" if self.is_replay else f"live attempt={self.attempt}"
        return (
            f"<HandlerContext {self.worker_name!r} message={self.message.id} "
            f"{self.message.name!r} {mode} emitted={len(self.emitted)}>"
        )

    @property
    def resources(self) -> Any:
        """What the app's ``lifespan`` yielded (``None`` without one): shared clients and
        pools, opened before the workers start and closed after they stop. Typed
        ``Any``: annotate it where it is read (``client: httpx.AsyncClient = ...``)."""
        return self._rt.resources

    @property
    def idempotency_key(self) -> str:
        return f"{self.worker_name}:{self.message.id}"

    @property
    def log(self) -> Any:
        if self._log is None:
            self._log = get_logger("petrock_trio.worker").bind(
                worker_name=self.worker_name,
                command_type=self.message.name,
                message_id=self.message.id,
                attempt=self.attempt,
                is_replay=self.is_replay,
            )
        return self._log

    def emit(self, cmd: Command) -> None:
        """Append ``cmd`` together with this message's position (no-op during replay).

        Raises :class:`UnknownCommand`, :class:`PayloadTooLarge` or
        :class:`ValidationError` at once, inside the handler, if ``cmd`` is not valid now.
        An unknown command is a programming error: its message is dead-lettered at
        once, not retried. Type checkers refuse names and other non-commands (see
        :class:`Command`).
        """
        if self.is_replay:
            return
        self.emitted.append(self._rt.encode_valid(cmd))
        if self._tracing is not None:
            self.emitted_metadata.append(self._tracing.current())
        if _needs_validation(cmd):
            self.to_validate.append(cmd)

    def now(self) -> datetime:
        """The app's wall-clock time (a ``TrioWallClock`` under test)."""
        return datetime.fromtimestamp(self._rt.clock(), UTC)


class PeriodicContext:
    """What periodic work receives: emit, a bound logger, the run number and the time."""

    __slots__ = ("_log", "_rt", "emitted", "partition", "run", "to_validate", "worker_name")

    def __init__(self, rt: Emitter, worker_name: str, run: int, *, partition: int = 0) -> None:
        self._rt = rt
        self.worker_name = worker_name
        self.run = run
        # Periodic work runs once per partition, with that partition's state.
        self.partition = partition
        self.emitted: list[tuple[str, bytes]] = []
        self.to_validate: list[object] = []
        self._log: Any = None

    def __repr__(self) -> str:
        return f"<PeriodicContext {self.worker_name!r} run={self.run} emitted={len(self.emitted)}>"

    @property
    def log(self) -> Any:
        if self._log is None:
            self._log = get_logger("petrock_trio.worker").bind(
                worker_name=self.worker_name, command_type="periodic", run=self.run
            )
        return self._log

    @property
    def resources(self) -> Any:
        """What the app's ``lifespan`` yielded (see :attr:`HandlerContext.resources`)."""
        return self._rt.resources

    def emit(self, cmd: Command) -> None:
        """Append ``cmd`` when this run ends, with the run's other emits (also when the
        run fails or times out afterwards: what was emitted is a result it has)."""
        self.emitted.append(self._rt.encode_valid(cmd))
        if _needs_validation(cmd):
            self.to_validate.append(cmd)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._rt.clock(), UTC)
