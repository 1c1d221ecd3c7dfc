"""External services behind a circuit breaker, so their failures degrade instead of crash."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import attrs
import trio

from ._errors import ConfigurationError, ServiceUnavailable
from ._logging import get_logger, work_fields

__all__ = [
    "Circuit",
    "ExternalService",
    "ServiceStatistics",
    "check_service_names",
    "service_report",
]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("petrock_trio.service")

# Exceptions cannot be weakly referenced, so a failure is tagged with its service.
_MARK = "_petrock_service"


def _mark(exc: BaseException, service: ExternalService) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # an exception type with __slots__
        setattr(exc, _MARK, service)


class Circuit(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class ServiceStatistics:
    name: str
    circuit: Circuit
    calls: int
    failures: int
    rejected: int
    consecutive_failures: int
    opened: int
    retry_after: float | None
    # Calls that returned (late ones included); seconds since the circuit last opened.
    succeeded: int = 0
    last_opened_ago: float | None = None

    def to_dict(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data["circuit"] = self.circuit.value
        return data


class ExternalService:
    """A dependency that can fail, such as an HTTP API, with a circuit breaker and,
    with ``max_concurrent``, a bulkhead: at most that many calls in flight.

    After ``failure_threshold`` consecutive failures the circuit opens: calls raise
    :class:`ServiceUnavailable` at once, without touching the service, for
    ``reset_timeout`` seconds (Trio's clock). Then it is half-open: one call goes
    through as a probe; success closes the circuit, failure opens it again. Failures
    are exceptions of the types in ``failures`` (cancellation never counts), and calls
    that take longer than ``timeout`` seconds when one is given.

    Workers that declare the service (``PatternWorker(services=[...])``) skip periodic
    work while it is open, retry handlers later without burning attempts, and report
    degraded health naming it.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        timeout: float | None = None,
        failures: tuple[type[BaseException], ...] = (Exception,),
        max_concurrent: int | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout < 0:
            raise ConfigurationError("failure_threshold must be >= 1 and reset_timeout >= 0")
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigurationError("max_concurrent must be at least 1 (or None)")
        self.name = name
        self.max_concurrent = max_concurrent
        # The bulkhead: partitions of a worker (or several workers) share one service.
        self._limiter = None if max_concurrent is None else trio.CapacityLimiter(max_concurrent)
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.timeout = timeout
        self.failures = failures
        self._counted: tuple[type[BaseException], ...] = (*failures, trio.TooSlowError)
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._calls = 0
        self._failed = 0
        self._rejected = 0
        self._opened = 0
        self._succeeded = 0
        self._last_opened: float | None = None  # kept when the circuit closes

    def __repr__(self) -> str:
        return (
            f"<ExternalService {self.name!r} {self._circuit_name()} "
            f"consecutive_failures={self._consecutive}>"
        )

    def _circuit_name(self) -> str:
        try:
            return self.circuit.value
        except RuntimeError:  # outside trio: no clock to compare against
            return "open" if self._opened_at is not None else "closed"

    @property
    def circuit(self) -> Circuit:
        if self._opened_at is None:
            return Circuit.CLOSED
        if trio.current_time() >= self._opened_at + self.reset_timeout:
            return Circuit.HALF_OPEN
        return Circuit.OPEN

    @property
    def available(self) -> bool:
        """False while calls would be rejected (open, or half-open with a probe in flight)."""
        circuit = self.circuit
        return circuit is Circuit.CLOSED or (circuit is Circuit.HALF_OPEN and not self._probing)

    def retry_after(self) -> float | None:
        """Seconds until the circuit lets a probe through; ``None`` when closed."""
        if self._opened_at is None:
            return None
        return max(0.0, self._opened_at + self.reset_timeout - trio.current_time())

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` through the bulkhead and the breaker.

        With ``max_concurrent``, a call first waits until fewer than that many are in
        flight (the wait is not part of ``timeout``). Raises
        :class:`ServiceUnavailable` without calling ``fn`` while the circuit is open
        (checked once the call may go, so waiting calls see an opening at once).
        """
        if self._limiter is None:
            return await self._call(fn, *args, **kwargs)
        async with self._limiter:
            return await self._call(fn, *args, **kwargs)

    async def _call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        circuit = self.circuit
        probe = circuit is Circuit.HALF_OPEN
        if circuit is Circuit.OPEN or (probe and self._probing):
            self._rejected += 1
            raise ServiceUnavailable(self.name, self.retry_after())
        self._calls += 1
        if probe:
            self._probing = True
        started = trio.current_time()
        try:
            if self.timeout is None:
                result = await fn(*args, **kwargs)
            else:
                with trio.fail_after(self.timeout):
                    result = await fn(*args, **kwargs)
        except self._counted as exc:
            self._record_failure(exc, probe=probe, duration=trio.current_time() - started)
            raise
        finally:
            if probe:
                self._probing = False
        self._record_success(probe=probe)
        return result

    def _record_failure(self, exc: BaseException, *, probe: bool, duration: float) -> None:
        self._failed += 1
        self._consecutive += 1
        if probe or (self._opened_at is None and self._consecutive >= self.failure_threshold):
            # Every opening counts, a failed half-open probe's included.
            self._opened += 1
            # The service is shared: the worker named is the one whose call opened it.
            _log.warning(
                "petrock.circuit_opened",
                service=self.name,
                error_details=repr(exc),
                reset_timeout=self.reset_timeout,
                consecutive_failures=self._consecutive,
                reopened=probe,
                execution_time=round(duration * 1000, 3),  # of the call that failed
                **work_fields(),
                exc_info=exc,
            )
            self._opened_at = self._last_opened = trio.current_time()
        # (A call from before the opening that fails late leaves the circuit as it is.)
        if self._opened_at is not None:
            # Workers that declare this service wait for it instead of spending attempts.
            _mark(exc, self)

    def _record_success(self, *, probe: bool) -> None:
        self._succeeded += 1
        if self._opened_at is not None and not probe:
            # A call from before the circuit opened succeeded late: only a probe closes it.
            return
        if self._opened_at is not None:
            _log.info("petrock.circuit_closed", service=self.name, **work_fields())
        self._consecutive = 0
        self._opened_at = None

    def caused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure of this service raised while its circuit opened."""
        return getattr(exc, _MARK, None) is self

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            name=self.name,
            circuit=self.circuit,
            calls=self._calls,
            failures=self._failed,
            rejected=self._rejected,
            consecutive_failures=self._consecutive,
            opened=self._opened,
            retry_after=self.retry_after(),
            succeeded=self._succeeded,
            last_opened_ago=(
                None if self._last_opened is None else trio.current_time() - self._last_opened
            ),
        )


# --- the services an app's workers declare -------------------------------------------------


def _declared(worker: object) -> tuple[ExternalService, ...]:
    return tuple(getattr(worker, "services", ()))  # old-style workers declare none


def check_service_names(registered: Iterable[object], worker: object) -> None:
    """Refuse ``worker`` if one of its services has the name of a different service that
    a registered worker declares: reports, logs and metrics know services by name."""
    known = {s.name: s for w in registered for s in _declared(w)}
    for service in _declared(worker):
        if known.get(service.name, service) is not service:
            raise ConfigurationError(
                f"worker {getattr(worker, 'name', worker)!r} declares a service named "
                f"{service.name!r}, and another worker a different service of that name: "
                "share one ExternalService object, or give them different names"
            )


def service_report(workers: Iterable[object], wall: float) -> dict[str, dict[str, Any]]:
    """The circuit of every service that ``workers`` declare, by name: its statistics,
    when it last opened (``last_opened_at``, ISO 8601; ``wall`` is the wall time now)
    and the workers that declare it. Empty outside Trio, whose clock judges circuits."""
    if not trio.lowlevel.in_trio_run():
        return {}
    report: dict[str, dict[str, Any]] = {}
    for worker in workers:
        for service in _declared(worker):
            entry = report.get(service.name)
            if entry is None:
                stats = service.statistics()
                ago = stats.last_opened_ago
                opened = None if ago is None else datetime.fromtimestamp(wall - ago, UTC)
                entry = report[service.name] = {
                    **stats.to_dict(),
                    "last_opened_at": None if opened is None else opened.isoformat(),
                    "workers": [],
                }
            entry["workers"].append(getattr(worker, "name", ""))
    return report
