"""An external integration: an HTTP service behind a circuit breaker, failing and recovering.

Run it:  python examples/external_integration.py   (takes about three seconds)

A small mail service runs on 127.0.0.1 (Starlette on Hypercorn, in this process). The
``welcome-mailer`` worker sends a welcome mail for every registered user, through
``pt.ExternalService``. The program takes the mail service down for a moment: two
failures open the circuit, the worker reports degraded health naming the service, and
the waiting message is retried without spending its attempts. When the service is
back, the next probe closes the circuit and the waiting mails go out, each exactly
once thanks to the idempotency key. A mail the service refuses for good (an address
without "@") is dead-lettered at once instead of being retried.

Warnings and errors are logged to stderr as they happen; the story is on stdout.
"""

from __future__ import annotations

from functools import partial

import attrs
import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import petrock_trio as pt

OUTAGE = 1.5  # seconds the mail service is down

# --- the external service (a stand-in for a real mail API) -------------------------------


@attrs.define
class MailService:
    down: bool = False
    sent: dict[str, str] = attrs.Factory(dict)  # idempotency key -> address

    def asgi(self) -> Starlette:
        async def send(request: Request) -> JSONResponse:
            if self.down:
                return JSONResponse({"error": "try again later"}, status_code=503)
            body = await request.json()
            if "@" not in body["to"]:
                return JSONResponse({"error": "not an address"}, status_code=422)
            # A repeated key is acknowledged without sending again.
            self.sent.setdefault(request.headers["Idempotency-Key"], body["to"])
            return JSONResponse({"status": "sent"})

        return Starlette(routes=[Route("/send", send, methods=["POST"])])


async def serve_mail(
    service: MailService, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``service`` on a free loopback port; ``task_status.started(base_url)``."""
    from hypercorn.config import Config  # noqa: PLC0415 - only this stand-in needs it
    from hypercorn.trio import serve  # noqa: PLC0415

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, service.asgi(), config))  # type: ignore[arg-type]
        task_status.started(binds[0].rstrip("/"))


# --- the client and the worker -----------------------------------------------------------


class MailUnavailable(Exception):
    """The mail service answered 5xx: an outage, counted by the circuit breaker."""


@attrs.frozen
class MailClient:
    http: httpx.AsyncClient

    async def send(self, to: str, subject: str, key: str) -> None:
        response = await self.http.post(
            "/send", json={"to": to, "subject": subject}, headers={"Idempotency-Key": key}
        )
        if response.status_code >= 500:  # noqa: PLR2004
            raise MailUnavailable(f"HTTP {response.status_code}")
        if response.is_error:
            # Retrying cannot help; Permanent is not in the breaker's `failures`, so bad
            # input does not open the circuit for everyone else either.
            raise pt.Permanent(f"mail to {to!r} refused: HTTP {response.status_code}")


@pt.command("users/register")
@attrs.frozen
class RegisterUser:
    name: str
    email: str


async def send_welcome(
    mail: MailClient,
    service: pt.ExternalService,
    ctx: pt.HandlerContext,
    cmd: RegisterUser,
    _: None,
) -> None:
    if ctx.is_replay:
        return  # sent when this message was live
    # ServiceUnavailable (open circuit) propagates: the engine waits for the circuit
    # without counting an attempt.
    await service.call(mail.send, cmd.email, f"Welcome, {cmd.name}", ctx.idempotency_key)


def mailer_worker(mail: MailClient, service: pt.ExternalService) -> pt.PatternWorker[None]:
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "welcome-mailer",
        "Sends a welcome mail to every new user",
        services=[service],
        retry=pt.Backoff(initial=0.2, max_delay=1.0),
        # A short outage is expected; only a sustained error rate degrades health.
        health=pt.HealthThresholds(degraded_errors_per_minute=10),
    )
    worker.on_command(pt.command_name(RegisterUser), partial(send_welcome, mail, service))
    return worker


def show(label: str, worker: pt.PatternWorker[None], service: pt.ExternalService) -> None:
    health = worker.health()
    reasons = f" ({'; '.join(health.reasons)})" if health.reasons else ""
    stats = service.statistics()
    print(f"{label}: circuit {stats.circuit.value}, health {health.status.value}{reasons}")


async def main() -> None:
    pt.configure_logging(level="warning")
    mail_service = MailService()
    breaker = pt.ExternalService(
        "mail",
        failure_threshold=2,
        reset_timeout=1.0,
        timeout=5.0,
        failures=(httpx.TransportError, MailUnavailable),
    )
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve_mail, mail_service)
        async with httpx.AsyncClient(base_url=base_url) as http:
            worker = mailer_worker(MailClient(http), breaker)
            app = pt.App()
            app.register_command(RegisterUser)
            app.register_worker(worker)
            await nursery.start(pt.serve, app)

            await app.execute(RegisterUser("Ada", "ada@example.org"))
            await app.caught_up()
            show("service up", worker, breaker)

            mail_service.down = True
            await app.execute(RegisterUser("Bob", "bob@example.org"))
            await app.execute(RegisterUser("Cy", "cy@example.org"))
            await trio.sleep(0.6)  # two attempts fail; the circuit opens
            show("service down", worker, breaker)

            await trio.sleep(OUTAGE - 0.6)
            mail_service.down = False
            await app.caught_up()  # the next probe succeeds; the waiting mails go out
            show("service back", worker, breaker)
            stats = breaker.statistics()
            print(f"mails sent: {len(mail_service.sent)}, circuit opened {stats.opened} time(s)")

            await app.execute(RegisterUser("Nobody", "not-an-address"))
            await app.caught_up()
            for letter in await app.dead_letters():
                print(f"dead letter: message {letter.message_id} after {letter.attempts} attempt")
            app.stop()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
