"""The HTTP API's endpoints, and how they refuse a request: JSON errors, bounded bodies.

:func:`petrock_trio._http.http_app` routes to them.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Final

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from . import _tracing
from ._app import App
from ._errors import (
    BatchTooLarge,
    DecodeError,
    NotRunning,
    OutcomeUnknown,
    PayloadTooLarge,
    PetrockError,
    StoreError,
    UnknownCommand,
    ValidationError,
)
from ._health import Health
from ._http_batch import answer, read_batch
from ._http_dashboard import DASHBOARD_MESSAGES, MAX_DASHBOARD_MESSAGES, dashboard_snapshot
from ._http_guard import AllowedHosts
from ._http_metrics import CollectorRegistry, app_registry, exposition
from ._http_rows import LISTED_PAYLOAD_BYTES, Listing, describe_letter, letter_rows
from ._logging import get_logger
from ._worker import PatternWorker

__all__ = ["EXCEPTION_HANDLERS", "MAX_MESSAGES", "Api"]

MAX_MESSAGES: Final = 500
"""The most messages one ``GET /messages`` returns, whatever ``limit`` asks for."""

_DEFAULT_MESSAGES: Final = 50
_READ_BATCH: Final = 50  # rows read from the store at a time while a page fills
_INT64: Final = (1 << 63) - 1
_INTEGER: Final = re.compile(r"-?[0-9]+")

_log = get_logger("petrock_trio.http")

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
    (BatchTooLarge, 413),
    (NotRunning, 503),
    (OutcomeUnknown, 500),  # the commit may have landed: retrying could append it twice
    (StoreError, 503),
)


async def _on_refused(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refused)
    return _error(exc.status, exc.kind, exc.message, exc.headers)


async def _on_petrock_error(_: Request, exc: Exception) -> Response:
    status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    # A refused command names itself (CommandError.command_name): a client that
    # sends commands in bulk learns which one was refused.
    if (name := getattr(exc, "command_name", None)) is not None:
        error["command"] = name
    # In a batch (POST /commands), which of its commands: nothing of it was appended.
    if (index := getattr(exc, "index", None)) is not None:
        error["index"] = index
    return _JSON({"error": error}, status)


async def _on_http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return _error(exc.status_code, kind, exc.detail, exc.headers)


async def _on_disconnect(request: Request, _: Exception) -> Response:
    # The client went away while sending its request: nobody reads this answer.
    _log.debug("petrock.http.disconnected", method=request.method, path=request.url.path)
    return _error(400, "ClientDisconnect", "the client disconnected")


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    # Starlette logs nothing itself; the server logs the traceback after this answer.
    message = f"unexpected {type(exc).__name__}; the server's log has the details"
    return _error(500, "InternalError", message)


# What http_app hands to Starlette, which copies it into each application.
EXCEPTION_HANDLERS: Final[
    Mapping[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]
] = {
    _Refused: _on_refused,
    PetrockError: _on_petrock_error,
    HTTPException: _on_http_exception,
    ClientDisconnect: _on_disconnect,
    Exception: _on_unexpected,
}


def _int_param(request: Request, name: str, minimum: int) -> int | None:
    """A query parameter between ``minimum`` and the largest 64-bit integer, or None."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):
        shown = raw if len(raw) <= 40 else raw[:37] + "..."  # noqa: PLR2004 - enough to see
        raise _Refused(400, "BadRequest", f"{name} must be an integer, not {shown!r}")
    # Compared as text first: no huge number is ever built from a query string.
    if len(raw.lstrip("-")) > len(str(_INT64)) or int(raw) > _INT64:
        if raw.startswith("-"):
            raise _Refused(400, "BadRequest", f"{name} must be at least {minimum}")
        raise _Refused(400, "BadRequest", f"{name} must be at most {_INT64}")
    value = int(raw)
    if value < minimum:
        raise _Refused(400, "BadRequest", f"{name} must be at least {minimum}")
    return value


def _flag_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").lower()
    if raw in {"", "0", "false", "no"}:
        return False
    if raw in {"1", "true", "yes"}:
        return True
    raise _Refused(400, "BadRequest", f"{name} must be true or false, not {raw[:40]!r}")


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


def _dashboard_html() -> str:
    return resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")


class Api:
    """The endpoints of one app; :func:`~petrock_trio._http.http_app` routes to them."""

    def __init__(
        self,
        app: App,
        token: str | None,
        body_limit: int,
        *,
        hosts: AllowedHosts,
        page_bytes: int,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.hosts = hosts
        self.page_bytes = page_bytes
        self._expected = f"Bearer {token}".encode() if token is not None else None
        self._registry = app_registry(app, registry)
        self._page = _dashboard_html()

    def guard(self, request: Request) -> None:
        """Refuse changes from other sites' pages, and without the token when one is set."""
        # A page elsewhere can make a browser POST here without reading the answer;
        # browsers always name the page's origin on such requests. The origin is
        # checked against the allowed names, not against Host: under DNS rebinding
        # both name the attacker's site.
        origin = request.headers.get("origin")
        if origin is not None and not self.hosts.allows_origin(origin, request.headers.get("host")):
            raise _Refused(403, "Forbidden", f"cross-origin request from {origin[:200]} refused")
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
        cls = registry.registered(name)
        body = await _read_body(request, self.body_limit)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"{name}: body is not valid JSON: {exc}", command_name=name) from exc
        cmd = registry.structure(name, cls, data)
        # The caller's trace (a traceparent header) is the parent of execute's span.
        with _tracing.remote_parent(request.headers):
            message = await self.app.execute(cmd)
        return _JSON(answer(message), 201)

    async def post_commands(self, request: Request) -> Response:
        """A batch, ``{"commands": [{"name", "payload"}, ...]}``, appended in one
        transaction or not at all; its body is bounded as one command's is."""
        self.guard(request)
        body = await _read_body(request, self.body_limit)
        commands = read_batch(self.app.registry, body, self.app.max_batch)
        with _tracing.remote_parent(request.headers):
            messages = await self.app.execute_many(commands)
        return _JSON({"messages": [answer(m) for m in messages]}, 201)

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

    async def metrics(self, request: Request) -> Response:
        body, content_type = exposition(self._registry, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def messages(self, request: Request) -> Response:
        """A page of messages: after ``after`` in id order, or the newest without it.

        At most ``limit`` messages and ``max_bytes`` bytes (both capped by the server);
        payloads cut to a preview unless ``full=true``. ``next_after`` continues.
        """
        after = _int_param(request, "after", 0)
        asked = _int_param(request, "limit", 1)
        max_bytes = _int_param(request, "max_bytes", 1)
        whole = _flag_param(request, "full")
        limit = _DEFAULT_MESSAGES if asked is None else min(asked, MAX_MESSAGES)
        budget = self.page_bytes if max_bytes is None else min(max_bytes, self.page_bytes)
        log = self.app.log
        head = log.head.value
        page = Listing(budget, whole_payloads=whole, newest=after is None)
        cursor = max(0, head - limit) if after is None else after
        # Read a few rows at a time: a page of large payloads stops long before 500.
        while limit > 0 and not page.full:
            rows = await log.store.read_after(cursor, min(limit, _READ_BATCH))
            for row in rows:
                if not page.add(row):
                    break
            if len(rows) < min(limit, _READ_BATCH):
                break
            cursor = rows[-1].id
            limit -= len(rows)
        return Response(page.render(head), media_type="application/json")

    async def dead_letters(self, request: Request) -> Response:
        """Every dead letter (``?worker=`` for one worker's), with its traceback and its
        message's payload, cut to a preview as ``GET /messages`` cuts it."""
        letters = await self.app.dead_letters(request.query_params.get("worker") or None)
        rows = await letter_rows(self.app.log.store, letters)
        shown = [describe_letter(d, rows.get(d.message_id), LISTED_PAYLOAD_BYTES) for d in letters]
        return _JSON({"dead_letters": shown})

    async def dead_letter(self, request: Request) -> Response:
        """One dead letter, with its traceback and its message's whole payload."""
        worker: str = request.path_params["worker"]
        message_id: int = request.path_params["message_id"]
        letters = [d for d in await self.app.dead_letters(worker) if d.message_id == message_id]
        if not letters:
            raise _Refused(
                404, "NotFound", f"worker {worker!r} has no dead letter for message {message_id}"
            )
        rows = await letter_rows(self.app.log.store, letters)
        return _JSON(describe_letter(letters[0], rows.get(message_id), None))

    async def dashboard_json(self, request: Request) -> Response:
        """Everything one refresh of the dashboard shows, taken at one moment
        (:func:`~petrock_trio._http_dashboard.dashboard_snapshot`); ``messages`` (at most 100) and
        ``max_bytes`` bound its message table."""
        asked = _int_param(request, "messages", 0)
        max_bytes = _int_param(request, "max_bytes", 1)
        count = DASHBOARD_MESSAGES if asked is None else min(asked, MAX_DASHBOARD_MESSAGES)
        budget = self.page_bytes if max_bytes is None else min(max_bytes, self.page_bytes)
        body = await dashboard_snapshot(self.app, messages=count, max_bytes=budget)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def snapshot(self, request: Request) -> Response:
        """Have a worker save its state now (``petrock-trio workers snapshot``): each
        partition served here, as inspect shows its snapshot."""
        self.guard(request)
        name: str = request.path_params["name"]
        worker = self.app.workers.get(name)
        if not isinstance(worker, PatternWorker):
            raise _Refused(404, "NotFound", f"no pattern worker named {name!r}")
        if worker.snapshots is None:
            raise _Refused(
                409,
                "NoSnapshots",
                f"worker {name!r} takes no snapshots: declare snapshot_every= or "
                "snapshot_interval=",
            )
        return _JSON({"worker": name, "snapshots": await worker.snapshot_now()})

    async def dashboard(self, _: Request) -> Response:
        return HTMLResponse(
            self._page,
            headers={"Content-Security-Policy": _DASHBOARD_POLICY, "Cache-Control": "no-store"},
        )
