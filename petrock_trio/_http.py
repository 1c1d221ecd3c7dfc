"""The HTTP API and the live dashboard: a Starlette app served by Hypercorn's Trio worker.

Commands come in as ``POST /commands/{name}`` with a JSON body, or as a batch appended
all or nothing, ``POST /commands``; everything else is read only, except the
operators' verbs. Errors are always JSON::

    {"error": {"type": "DecodeError", "message": "items/create: name: expected str, got int"}}

Requests naming a host that is not this server's are refused before anything else
(DNS rebinding), browser requests from other origins may change nothing, and an
optional bearer token guards the two endpoints that change something; reads stay
open. The server binds loopback by default, and beyond it only with a token unless
told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import trio

# Starlette and prometheus_client are required dependencies, not optional exporters, so
# they load with the package (about 25 ms); only Hypercorn waits until serve_http.
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from ._app import App
from ._errors import ConfigurationError
from ._http_api import EXCEPTION_HANDLERS, MAX_MESSAGES, Api
from ._http_guard import AllowedHosts, HostGuard, bound_hosts, check_exposure, warn_exposure
from ._http_ops import operator_routes
from ._http_rows import LISTED_PAYLOAD_BYTES, MAX_PAGE_BYTES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["LISTED_PAYLOAD_BYTES", "MAX_MESSAGES", "MAX_PAGE_BYTES", "http_app", "serve_http"]


def http_app(
    app: App,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    allowed_hosts: Iterable[str] = (),
    max_page_bytes: int = MAX_PAGE_BYTES,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """The ASGI application serving ``app``'s HTTP API and dashboard.

    ``token``, when given, must come as ``Authorization: Bearer <token>`` on command
    submission and re-drive. ``max_body_bytes`` bounds a command's request body, and
    a batch's; it defaults to the app's ``max_payload_bytes``. ``allowed_hosts`` names the hosts
    requests may be addressed to besides loopback's (``localhost``, ``127.0.0.1``,
    ``[::1]``, any port): ``name``, ``name:port``, an address, or ``"*"`` for any.
    ``max_page_bytes`` bounds one page of ``GET /messages``. The app's own
    ``App(routes=...)`` are served after the API's, behind the same Host check; they
    find the :class:`App` as ``request.app.state.petrock_app``.
    ``registry`` (a
    prometheus_client ``CollectorRegistry``) is what ``GET /metrics`` serves, with the
    app's metrics added to it (:class:`ConfigurationError` if it has an app's already):
    pass one that holds the application's own metrics and, say, a
    ``ProcessCollector``; by default the app gets a registry of its own (with
    the ``process_*`` and ``python_*`` series). ``GET /metrics`` answers OpenMetrics
    when the scraper's ``Accept`` asks for it, Prometheus text otherwise.

    Status codes: 201 for an appended command or batch; 400 for a body that is not JSON, a
    payload of the wrong shape or types, an unknown command or bad query parameters
    (not integers, out of range, beyond 64 bits); 401 for a missing or wrong token; 403
    ``HostNotAllowed`` for a Host not in the list and ``Forbidden`` for a browser
    request from an origin not in it; 404 for an unknown path, worker or dead letter;
    405 for a wrong method; 413 for a body, payload or batch over the limit; 422 when the
    command's ``validate`` refuses it; 503 when the app is not serving, when the store
    fails (and from ``/health`` when it is unhealthy); 500 ``OutcomeUnknown`` when a
    commit's outcome is unknown, ``InternalError`` for a bug (logged). Nothing is
    appended on any error but ``OutcomeUnknown``; a batch's error names the refused
    command's ``index``.
    """
    limit = app.registry.max_payload_bytes if max_body_bytes is None else max_body_bytes
    if max_page_bytes < 1:
        raise ConfigurationError("max_page_bytes must be at least 1")
    if token == "":
        raise ConfigurationError("token must not be empty: an empty token guards nothing")
    if isinstance(allowed_hosts, str):
        raise ConfigurationError("allowed_hosts is a list of names, not one string")
    hosts = AllowedHosts(allowed_hosts)
    api = Api(app, token, limit, hosts=hosts, page_bytes=max_page_bytes, registry=registry)
    routes = [
        Route("/", api.dashboard, methods=["GET"]),
        Route("/commands", api.post_commands, methods=["POST"]),
        Route("/commands/{name:path}", api.post_command, methods=["POST"]),
        Route("/inspect", api.inspect, methods=["GET"]),
        Route("/dashboard.json", api.dashboard_json, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/messages", api.messages, methods=["GET"]),
        Route("/dead-letters", api.dead_letters, methods=["GET"]),
        Route("/dead-letters/{worker:path}/{message_id:int}", api.dead_letter, methods=["GET"]),
        *operator_routes(api),
        Route("/workers/{name:path}/snapshot", api.snapshot, methods=["POST"]),
    ]
    asgi = Starlette(
        routes=[*routes, *_own_routes(app, routes)],
        exception_handlers=EXCEPTION_HANDLERS,
        # Outside the routes and their error handlers: a refused Host reaches nothing.
        middleware=[Middleware(HostGuard, hosts=hosts)],
    )
    # The app's own routes reach it (its resources, execute) from their request.
    asgi.state.petrock_app = app
    return asgi


def _own_routes(app: App, api: list[Route]) -> list[BaseRoute]:
    """The app's own routes (``App(routes=...)``), served after the API's; one whose
    path the API would answer instead is refused rather than never reached."""
    for route in app.routes:
        if not isinstance(route, BaseRoute):
            raise ConfigurationError(f"App(routes=...) takes Starlette routes, not {route!r}")
        path = getattr(route, "path", None)
        if isinstance(path, str) and any(r.path_regex.match(path) for r in api):
            raise ConfigurationError(
                f"the app's route {path!r} is a path of the HTTP API; give it another"
            )
    return list(app.routes)


async def serve_http(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    token: str | None = None,
    max_body_bytes: int | None = None,
    allowed_hosts: Iterable[str] = (),
    allow_no_token: bool = False,
    max_page_bytes: int = MAX_PAGE_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve :func:`http_app` on ``host:port``; ``task_status.started(url)``.

    Never returns unless cancelled. Binds loopback by default; port 0 picks a free
    port, which the started URL names. It serves whether or not ``app`` is serving:
    endpoints that need a running app answer 503 meanwhile, so it can start first and
    show start-up.

    A ``host`` other than loopback needs a ``token`` (reads stay open: a warning says
    so), or ``allow_no_token=True`` (a louder warning). Its own names are allowed as
    ``Host`` besides ``allowed_hosts``: the address, and for a wildcard (``0.0.0.0``,
    ``::``) this machine's host name, fully qualified name and their addresses.

    Error handling: a non-loopback ``host`` without a token or ``allow_no_token``
    raises :class:`ConfigurationError`, and a port that cannot be bound ``OSError``,
    both before ``started``; an unexpected error in a request is answered with 500
    JSON and logged by Hypercorn.
    """
    from hypercorn.config import Config  # noqa: PLC0415 - the server loads only when serving
    from hypercorn.trio import serve  # noqa: PLC0415

    warning = check_exposure(host, token, allow_no_token=allow_no_token)
    hosts = list(allowed_hosts)
    if warning is not None:
        hosts += await trio.to_thread.run_sync(bound_hosts, host)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"  # errors only; the caller says where it listens
    asgi = http_app(
        app,
        token=token,
        max_body_bytes=max_body_bytes,
        allowed_hosts=hosts,
        max_page_bytes=max_page_bytes,
    )
    started = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(serve, asgi, config))  # type: ignore[arg-type]
            url = binds[0].rstrip("/")
            if warning is not None:
                warn_exposure(warning, url)
            started = True
            task_status.started(url)
    except BaseExceptionGroup as group:
        # Hypercorn's nurseries wrap a failed bind several times over: the OSError alone.
        error = None if started else _only_os_error(group)
        if error is None:
            raise
        raise error from None


def _only_os_error(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], OSError) else None
