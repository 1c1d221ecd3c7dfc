"""The HTTP API and the live dashboard: a Starlette app served by Hypercorn's Trio worker.

Commands come in as ``POST /commands/{name}`` with a JSON body; everything else is read
only, except re-driving a dead letter. Errors are always JSON::

    {"error": {"type": "DecodeError", "message": "items/create: name: expected str, got int"}}

An optional bearer token guards the two endpoints that change something; reads stay
open. The server binds loopback by default.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any, Final

import orjson
import trio

# Starlette and prometheus_client are required dependencies, not optional exporters, so
# they load with the package (about 25 ms); only Hypercorn waits until serve_http.
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ._app import App
from ._errors import (
    DecodeError,
    NotRunning,
    PayloadTooLarge,
    PetrockError,
    UnknownCommand,
    ValidationError,
)
from ._health import Health
from ._message import Row

__all__ = ["MAX_MESSAGES", "http_app", "serve_http"]

MAX_MESSAGES: Final = 500
"""The most messages one ``GET /messages`` returns, whatever ``limit`` asks for."""

_DEFAULT_MESSAGES: Final = 50

# The page is inline-only: the policy makes the browser refuse anything fetched from
# elsewhere, so the dashboard cannot quietly start depending on a CDN.
_DASHBOARD_POLICY: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _Refused(Exception):
    """An HTTP error answered with the JSON error body."""

    def __init__(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers


def _error(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return _JSON({"error": {"type": kind, "message": message}}, status, headers=headers)


# Most specific first: the first match decides the status.
_STATUS: Final[tuple[tuple[type[PetrockError], int], ...]] = (
    (UnknownCommand, 400),
    (DecodeError, 400),
    (ValidationError, 422),
    (PayloadTooLarge, 413),
    (NotRunning, 503),
)


async def _on_refused(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return _error(exc.status, exc.kind, exc.message, exc.headers)


async def _on_petrock_error(_: Request, exc: Exception) -> Response:
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
    return _error(status, type(exc).__name__, str(exc))


async def _on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return _error(exc.status_code, kind, exc.detail, exc.headers)


def _int_param(request: Request, name: str, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(400, "BadRequest", f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise _Refused(400, "BadRequest", f"{name} must be at least {minimum}")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _Refused(400, "BadRequest", "Content-Length is not a number") from None
        if size > limit:
            raise _Refused(413, "PayloadTooLarge", f"body of {size} bytes exceeds {limit}")
    # A chunked body, or a client that lied: count what actually arrives.
    chunks: list[bytes] = []
    received = 0
    # Closed here, not by the garbage collector, when the loop stops early.
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise _Refused(413, "PayloadTooLarge", f"body exceeds {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _last_error(app: App, worker: str) -> str | None:
    return app.workers[worker].metrics().last_error


class _AppCollector:
    """Prometheus metrics built from ``app.inspect()`` at each scrape."""

    _COUNTERS: Final = {
        "processed": "Messages handled live",
        "failed": "Failed handler or periodic runs",
        "retried": "Retries scheduled",
        "dead_lettered": "Messages given up on",
        "replayed": "Messages replayed at start-up",
        "timeouts": "Handler or periodic runs that timed out",
        "periodic_runs": "Periodic work runs",
        "periodic_failures": "Periodic work runs that failed",
        "periodic_skipped": "Periodic work runs skipped while a service was unavailable",
    }
    _GAUGES: Final = {
        "messages_per_second": "Live messages handled per second (sliding window)",
        "errors_per_minute": "Errors per minute (sliding window)",
        "lag": "Messages between the worker's position and the log head",
        "position": "Id of the last message the worker is done with",
    }

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        report = self.app.inspect()
        yield _gauge("petrock_up", "1 while the app is serving", 1.0 if report["running"] else 0.0)
        yield _gauge("petrock_log_head", "Id of the last committed message", report["head"] or 0)
        projection = report["projection"]
        yield _gauge(
            "petrock_projection_position",
            "Id of the last message applied to state",
            projection["position"],
        )
        errors = CounterMetricFamily("petrock_projection_errors", "Apply functions that raised")
        errors.add_metric([], projection["errors"])
        yield errors
        yield _health_family("petrock_health", "1 for the app's current health status", [], report)

        workers: dict[str, Any] = report["workers"]
        counters = {
            key: CounterMetricFamily(f"petrock_worker_{key}", text, labels=["worker"])
            for key, text in self._COUNTERS.items()
        }
        gauges = {
            key: GaugeMetricFamily(f"petrock_worker_{key}", text, labels=["worker"])
            for key, text in self._GAUGES.items()
        }
        average = GaugeMetricFamily(
            "petrock_worker_handler_time_avg_seconds",
            "Mean handler time over recent runs",
            labels=["worker"],
        )
        quantiles = GaugeMetricFamily(
            "petrock_worker_handler_time_seconds",
            "Handler time quantiles over recent runs",
            labels=["worker", "quantile"],
        )
        health = GaugeMetricFamily(
            "petrock_worker_health",
            "1 for the worker's current health status",
            labels=["worker", "status"],
        )
        for name, info in workers.items():
            metrics = info["metrics"]
            for key, family in counters.items():
                family.add_metric([name], metrics[key])
            for key, gauge in gauges.items():
                gauge.add_metric([name], metrics[key])
            average.add_metric([name], metrics["handler_time_avg"])
            quantiles.add_metric([name, "0.5"], metrics["handler_time_p50"])
            quantiles.add_metric([name, "0.95"], metrics["handler_time_p95"])
            for status in Health:
                current = info["health"]["status"] == status.value
                health.add_metric([name, status.value], 1.0 if current else 0.0)
        yield from counters.values()
        yield from gauges.values()
        yield average
        yield quantiles
        yield health
        leases = report.get("leases")
        if leases is not None:
            # With several processes, which of them runs each worker: 1 here, 0 elsewhere.
            held = GaugeMetricFamily(
                "petrock_worker_lease_held",
                "1 while this process holds the worker's lease (runs it)",
                labels=["worker"],
            )
            for name in workers:
                held.add_metric([name], 1.0 if name in leases["held"] else 0.0)
            yield held


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _health_family(
    name: str, text: str, labels: list[str], report: Mapping[str, Any]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[*labels, "status"])
    for status in Health:
        current = report["health"]["status"] == status.value
        family.add_metric([status.value], 1.0 if current else 0.0)
    return family


def _dashboard_html() -> str:
    return resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")


class _Api:
    """The endpoints of one app; :func:`http_app` routes to them."""

    def __init__(self, app: App, token: str | None, body_limit: int) -> None:
        self.app = app
        self.body_limit = body_limit
        self._expected = f"Bearer {token}".encode() if token is not None else None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_AppCollector(app))
        self._page = _dashboard_html()

    def guard(self, request: Request) -> None:
        """Refuse changes from other sites' pages, and without the token when one is set."""
        # A page elsewhere can make a browser POST here without reading the answer;
        # browsers always name the page's origin on such requests.
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise _Refused(403, "Forbidden", f"cross-origin request from {origin} refused")
        if self._expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise _Refused(
                401,
                "Unauthorized",
                "a valid bearer token is required",
                {"WWW-Authenticate": 'Bearer realm="petrock-trio"'},
            )

    async def post_command(self, request: Request) -> Response:
        self.guard(request)
        registry = self.app.registry
        name: str = request.path_params["name"]
        if not registry.is_registered(name):
            raise UnknownCommand(
                f"command {name!r} is not registered with this app", command_name=name
            )
        body = await _read_body(request, self.body_limit)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"{name}: body is not valid JSON: {exc}", command_name=name) from exc
        cmd = registry.structure(name, registry.lookup(name), data)
        message = await self.app.execute(cmd)
        return _JSON(
            {"id": message.id, "name": message.name, "timestamp": message.timestamp.isoformat()},
            201,
        )

    async def inspect(self, _: Request) -> Response:
        report = self.app.inspect()
        for name, info in report["workers"].items():
            info["last_error"] = _last_error(self.app, name)
        return _JSON(report)

    async def health(self, _: Request) -> Response:
        if not self.app.running:
            reasons = ["the app is not serving"]
            return _JSON({"status": Health.UNHEALTHY.value, "reasons": reasons}, 503)
        report = self.app.health()
        return _JSON(report.to_dict(), 503 if report.status is Health.UNHEALTHY else 200)

    async def metrics(self, _: Request) -> Response:
        text = generate_latest(self._registry)
        return Response(text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def messages(self, request: Request) -> Response:
        after = _int_param(request, "after", 0)
        asked = _int_param(request, "limit", 1)
        limit = _DEFAULT_MESSAGES if asked is None else min(asked, MAX_MESSAGES)
        log = self.app.log
        head = log.head.value
        rows = await log.store.read_after(max(0, head - limit) if after is None else after, limit)
        return _JSON({"head": head, "messages": [_message(row) for row in rows]})

    async def dead_letters(self, request: Request) -> Response:
        letters = await self.app.dead_letters(request.query_params.get("worker") or None)
        return _JSON({"dead_letters": [letter.to_dict() for letter in letters]})

    async def redrive(self, request: Request) -> Response:
        self.guard(request)
        worker: str = request.path_params["worker"]
        message_id: int = request.path_params["message_id"]
        # Only dead letters: re-driving any other message would handle it a second time.
        if not any(d.message_id == message_id for d in await self.app.dead_letters(worker)):
            raise _Refused(
                404, "NotFound", f"worker {worker!r} has no dead letter for message {message_id}"
            )
        try:
            await self.app.redrive(worker, message_id)
        except LookupError as exc:
            raise _Refused(404, "NotFound", str(exc)) from exc
        left = [d for d in await self.app.dead_letters(worker) if d.message_id == message_id]
        return _JSON(
            {
                "worker": worker,
                "message_id": message_id,
                "resolved": not left,
                "dead_letter": left[0].to_dict() if left else None,
            }
        )

    async def dashboard(self, _: Request) -> Response:
        return HTMLResponse(
            self._page,
            headers={"Content-Security-Policy": _DASHBOARD_POLICY, "Cache-Control": "no-store"},
        )


def http_app(app: App, *, token: str | None = None, max_body_bytes: int | None = None) -> Starlette:
    """The ASGI application serving ``app``'s HTTP API and dashboard.

    ``token``, when given, must come as ``Authorization: Bearer <token>`` on command
    submission and re-drive. ``max_body_bytes`` bounds a command's request body; it
    defaults to the app's ``max_payload_bytes``.

    Status codes: 201 for an appended command; 400 for a body that is not JSON, a
    payload of the wrong shape or types, an unknown command or bad query parameters;
    401 for a missing or wrong token; 403 for a cross-origin browser request; 404 for
    an unknown path, worker or dead letter; 413 for a body or payload over the limit;
    422 when the command's ``validate`` refuses it; 503 when the app is not serving
    (and from ``/health`` when it is unhealthy). Nothing is appended on any error.
    """
    limit = app.registry.max_payload_bytes if max_body_bytes is None else max_body_bytes
    api = _Api(app, token, limit)
    return Starlette(
        routes=[
            Route("/", api.dashboard, methods=["GET"]),
            Route("/commands/{name:path}", api.post_command, methods=["POST"]),
            Route("/inspect", api.inspect, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.metrics, methods=["GET"]),
            Route("/messages", api.messages, methods=["GET"]),
            Route("/dead-letters", api.dead_letters, methods=["GET"]),
            # Worker names are free text and may hold a slash.
            Route(
                "/dead-letters/{worker:path}/{message_id:int}/redrive",
                api.redrive,
                methods=["POST"],
            ),
        ],
        exception_handlers={
            _Refused: _on_refused,
            PetrockError: _on_petrock_error,
            HTTPException: _on_http_exception,
        },
    )


def _message(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": datetime.fromtimestamp(row.timestamp, UTC).isoformat(),
        "name": row.name,
        "payload": _payload(row.payload),
    }


def _payload(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Not written by this engine; show it rather than fail the whole page.
        return raw.decode("utf-8", errors="replace")


async def serve_http(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve :func:`http_app` on ``host:port``; ``task_status.started(url)``.

    Never returns unless cancelled. Binds loopback by default; port 0 picks a free
    port, which the started URL names. It serves whether or not ``app`` is serving:
    endpoints that need a running app answer 503 meanwhile, so it can start first and
    show start-up.

    Error handling: a port that cannot be bound raises ``OSError`` before ``started``;
    an unexpected error in a request is answered with 500 and logged by Hypercorn.
    """
    from hypercorn.config import Config  # noqa: PLC0415 - the server loads only when serving
    from hypercorn.trio import serve  # noqa: PLC0415

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"  # errors only; the caller says where it listens
    asgi = http_app(app, token=token, max_body_bytes=max_body_bytes)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, asgi, config))  # type: ignore[arg-type]
        task_status.started(binds[0].rstrip("/"))
