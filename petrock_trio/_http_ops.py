"""The HTTP API's operator endpoints: re-drive (answered at once, a ticket to poll),
bulk re-drive and discard, pause, resume and reset a worker.

Every POST here is guarded as command submission is (token, origin). A refusal is
JSON like every other: 404 for a worker, dead letter or ticket that does not exist,
400 for a bad body, 409 when the worker's state forbids it (``WorkerPaused``,
``NotPaused``), 429 when too many re-drives are unfinished (``RedriveBacklog``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._errors import BadPosition, NotPaused, OperatorError, RedriveBacklog, WorkerPaused
from ._http_api import _JSON, Api, _read_body, _Refused
from ._redrive import RedriveTicket
from .stores import ControlRecord

__all__ = ["operator_routes"]

# A filter's body is a few short strings; anything longer is not one.
_BODY_LIMIT: Final = 64 * 1024
_FILTER_KEYS: Final = frozenset({"worker", "command", "all"})

S = TypeVar("S")


def _refusing(
    handler: Callable[[S, Request], Awaitable[Response]],
) -> Callable[[S, Request], Awaitable[Response]]:
    """``handler``, with the operator's refusals answered as JSON errors."""

    async def answer(self: S, request: Request) -> Response:
        try:
            return await handler(self, request)
        except LookupError as exc:
            raise _Refused(404, "NotFound", str(exc).strip("'\"")) from exc
        except (WorkerPaused, NotPaused) as exc:
            raise _Refused(409, type(exc).__name__, str(exc)) from exc
        except RedriveBacklog as exc:
            raise _Refused(429, "RedriveBacklog", str(exc)) from exc
        except (BadPosition, OperatorError) as exc:
            raise _Refused(400, "BadRequest", str(exc)) from exc

    return answer


async def _json_body(request: Request) -> dict[str, Any]:
    body = await _read_body(request, _BODY_LIMIT)
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise _Refused(400, "BadRequest", f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _Refused(400, "BadRequest", "body must be a JSON object")
    return data


async def _letter_filter(request: Request) -> dict[str, Any]:
    """``{"worker": ..., "command": ..., "all": true}`` as keyword arguments."""
    data = await _json_body(request)
    unknown = sorted(set(data) - _FILTER_KEYS)
    if unknown:
        raise _Refused(400, "BadRequest", f"unknown field(s) {', '.join(unknown)}")
    for key in ("worker", "command"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _Refused(400, "BadRequest", f"{key} must be a string")
    every = data.get("all", False)
    if not isinstance(every, bool):
        raise _Refused(400, "BadRequest", "all must be true or false")
    return {"worker": data.get("worker"), "command": data.get("command"), "every": every}


def _control(record: ControlRecord) -> dict[str, Any]:
    return {
        "worker": record.worker,
        "paused": record.paused,
        "resets": record.generation,
        "reset_to": record.reset_to,
        "updated_at": datetime.fromtimestamp(record.updated_at, UTC).isoformat(),
    }


class Ops:
    """The operator endpoints of one app, guarded by its :class:`Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.app = api.app

    def _ticket(self, request: Request, ticket: RedriveTicket) -> dict[str, Any]:
        url = str(request.url_for("redrive_ticket", ticket=ticket.id))
        return {**ticket.to_dict(), "url": url}

    @_refusing
    async def redrive(self, request: Request) -> Response:
        """Start a re-drive; 202 at once, with the ticket's URL to poll."""
        self.api.guard(request)
        worker: str = request.path_params["worker"]
        message_id: int = request.path_params["message_id"]
        answer = self._ticket(request, await self.app.start_redrive(worker, message_id))
        return _JSON(answer, 202, headers={"Location": answer["url"]})

    async def ticket(self, request: Request) -> Response:
        ticket = self.app.redrive_tickets.get(request.path_params["ticket"])
        if ticket is None:
            raise _Refused(
                404, "NotFound", "no such re-drive ticket (tickets are kept in memory, bounded)"
            )
        return _JSON(self._ticket(request, ticket))

    @_refusing
    async def redrive_many(self, request: Request) -> Response:
        self.api.guard(request)
        bulk = await self.app.start_redrives(**await _letter_filter(request))
        answer = bulk.to_dict()
        answer["tickets"] = [self._ticket(request, t) for t in bulk.tickets]
        return _JSON(answer, 202)

    @_refusing
    async def discard(self, request: Request) -> Response:
        self.api.guard(request)
        gone = await self.app.discard_dead_letters(**await _letter_filter(request))
        return _JSON({"count": len(gone), "discarded": [d.to_dict() for d in gone]})

    @_refusing
    async def pause(self, request: Request) -> Response:
        self.api.guard(request)
        return _JSON(_control(await self.app.pause_worker(request.path_params["worker"])))

    @_refusing
    async def resume(self, request: Request) -> Response:
        self.api.guard(request)
        return _JSON(_control(await self.app.resume_worker(request.path_params["worker"])))

    @_refusing
    async def reset_plan(self, request: Request) -> Response:
        """What a reset to ``?to=`` would replay and handle live again; changes nothing."""
        to = request.query_params.get("to")
        if to is None or not to.lstrip("-").isdigit() or len(to) > 20:  # noqa: PLR2004
            raise _Refused(400, "BadRequest", "to must be given, as a position (an integer)")
        plan = await self.app.reset_plan(request.path_params["worker"], to=int(to))
        return _JSON(plan.to_dict())

    @_refusing
    async def reset(self, request: Request) -> Response:
        self.api.guard(request)
        data = await _json_body(request)
        to = data.get("to")
        if set(data) != {"to"} or not isinstance(to, int) or isinstance(to, bool):
            raise _Refused(400, "BadRequest", 'body must be {"to": <position>}')
        plan = await self.app.reset_position(request.path_params["worker"], to=to)
        return _JSON(plan.to_dict())


def operator_routes(api: Api) -> list[Route]:
    """The operator's routes, for :func:`~petrock_trio._http.http_app`."""
    ops = Ops(api)
    # Worker names are free text and may hold a slash.
    return [
        Route("/dead-letters/redrive", ops.redrive_many, methods=["POST"]),
        Route("/dead-letters/discard", ops.discard, methods=["POST"]),
        Route(
            "/dead-letters/{worker:path}/{message_id:int}/redrive", ops.redrive, methods=["POST"]
        ),
        Route("/redrives/{ticket}", ops.ticket, methods=["GET"], name="redrive_ticket"),
        Route("/workers/{worker:path}/pause", ops.pause, methods=["POST"]),
        Route("/workers/{worker:path}/resume", ops.resume, methods=["POST"]),
        Route("/workers/{worker:path}/reset", ops.reset_plan, methods=["GET"]),
        Route("/workers/{worker:path}/reset", ops.reset, methods=["POST"]),
    ]
