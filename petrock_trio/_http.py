"""The HTTP API and the live dashboard: a Starlette app served by Hypercorn's Trio worker.

Commands come in as ``POST /commands/{name}`` with a JSON body; everything else is read
only, except re-driving a dead letter. Errors are always JSON::

    {"error": {"type": "DecodeError", "message": "items/create: name: expected str, got int"}}

An optional bearer token guards the two endpoints that change something; reads stay
open. The server binds loopback by default.
"""

from __future__ import annotations

from functools import partial

import trio

# Starlette and prometheus_client are required dependencies, not optional exporters, so
# they load with the package (about 25 ms); only Hypercorn waits until serve_http.
from starlette.applications import Starlette
from starlette.routing import Route

from ._app import App
from ._http_api import EXCEPTION_HANDLERS, MAX_MESSAGES, Api

__all__ = ["MAX_MESSAGES", "http_app", "serve_http"]


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
    api = Api(app, token, limit)
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
        exception_handlers=EXCEPTION_HANDLERS,
    )


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
