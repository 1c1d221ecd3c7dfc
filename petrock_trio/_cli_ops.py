"""Command line: the operator's verbs, against a running app (``--url``) or, for those
that only write what every process obeys, its database (``--database``).

``dead-letters retry`` (returns at once with a ticket; ``--wait`` follows it),
``dead-letters status``, ``dead-letters retry-all`` and ``dead-letters discard``;
``workers pause``, ``workers resume`` and ``workers reset``. Attached to their groups
in ``_cli``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import click
import httpx

from ._cli_errors import EXIT_CODES, run_trio
from ._cli_options import call_app, database_option, json_option, one_source, url_option
from ._cli_read import _echo_json
from ._dead_letter import DeadLetter
from ._open import open_log
from ._partition import split_name
from .stores import open_store

__all__ = [
    "discard_command",
    "pause_command",
    "reset_command",
    "resume_command",
    "retry_all_command",
    "retry_command",
    "status_command",
]

# How often --wait asks a running app how a re-drive goes.
_POLL: Final = 0.2


def _token_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--token",
        envvar="PETROCK_TRIO_TOKEN",
        help="The app's bearer token, if it has one (also read from PETROCK_TRIO_TOKEN).",
    )(fn)


def _filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--all", "every", is_flag=True, help="Every dead letter.")(fn)
    fn = click.option("--command", help="Only the dead letters of this command.")(fn)
    return click.option("--worker", help="Only this worker's dead letters.")(fn)


def _letter_filter(worker: str | None, command: str | None, every: bool) -> dict[str, Any]:
    if worker is None and command is None and not every:
        raise click.UsageError("give --worker, --command or --all")
    return {"worker": worker, "command": command, "all": every}


# --- re-drive ---------------------------------------------------------------------------


def _follow(url: str, ticket: dict[str, Any]) -> dict[str, Any]:
    """The ticket asked about every _POLL seconds until it is resolved or failed."""
    while ticket["status"] not in {"resolved", "failed"}:
        time.sleep(_POLL)
        ticket = call_app("GET", url, f"/redrives/{quote(ticket['ticket'], safe='')}")
    return ticket


def _ticket_line(ticket: dict[str, Any]) -> str:
    where = f"message {ticket['message_id']} of {ticket['worker']}"
    if ticket["status"] == "resolved":
        return f"{where} handled; dead letter resolved"
    if ticket["status"] == "failed":
        letter = ticket.get("dead_letter")
        if letter is not None:
            return f"{where} failed again ({letter['attempts']} attempts): {letter['error']}"
        return f"{where} not re-driven: {ticket['error']}"
    return f"{where} {ticket['status']}: ticket {ticket['ticket']} ({ticket['url']})"


def _finish(tickets: list[dict[str, Any]], *, wait: bool, as_json: bool, answer: Any) -> None:
    """Print the tickets (followed to their end with ``wait``); exit 1 when one failed."""
    if as_json:
        _echo_json(answer)
    else:
        for ticket in tickets:
            click.echo(_ticket_line(ticket))
    if wait and any(t["status"] == "failed" for t in tickets):
        raise SystemExit(1)


@click.command("retry", epilog=EXIT_CODES)
@click.argument("worker")
@click.argument("message_id", type=click.IntRange(min=1))
@url_option(required=True)
@_token_option
@click.option("--wait", is_flag=True, help="Follow the re-drive until it is done.")
@json_option("Print the app's answer (the ticket) as JSON.")
def retry_command(
    *, worker: str, message_id: int, url: str, token: str | None, wait: bool, as_json: bool
) -> None:
    """Have WORKER handle dead-lettered message MESSAGE_ID again, in a running app.

    Returns at once with the re-drive's ticket (its status: queued or running; follow
    it with `dead-letters status`). With --wait, follows it until it is done, which can
    take the worker's whole retry schedule: exits 0 when the worker handled it (the
    dead letter is gone) and 1 when it failed again (the dead letter stays, with its
    attempts added up).
    """
    path = f"/dead-letters/{quote(worker, safe='')}/{message_id}/redrive"
    ticket = call_app("POST", url, path, token)
    if wait:
        ticket = _follow(url, ticket)
    _finish([ticket], wait=wait, as_json=as_json, answer=ticket)


@click.command("status", epilog=EXIT_CODES)
@click.argument("ticket")
@url_option(required=True)
@click.option("--wait", is_flag=True, help="Follow the re-drive until it is done.")
@json_option("Print the ticket as JSON.")
def status_command(ticket: str, url: str, wait: bool, as_json: bool) -> None:
    """Show how the re-drive of TICKET goes: queued, running, resolved or failed.

    The app keeps its tickets in memory (the newest 10000): they are gone once it
    restarts. With --wait, exits 1 when it failed.
    """
    answer = call_app("GET", url, f"/redrives/{quote(ticket, safe='')}")
    if wait:
        answer = _follow(url, answer)
    _finish([answer], wait=wait, as_json=as_json, answer=answer)


@click.command("retry-all", epilog=EXIT_CODES)
@_filter_options
@url_option(required=True)
@_token_option
@click.option("--wait", is_flag=True, help="Follow every re-drive until it is done.")
@json_option("Print the app's answer (count, tickets, skipped) as JSON.")
def retry_all_command(
    *,
    worker: str | None,
    command: str | None,
    every: bool,
    url: str,
    token: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Re-drive every dead letter of a worker (--worker), of a command (--command), or
    all of them (--all), in a running app; returns at once with a ticket each.

    Dead letters of a worker the app does not run, or that is paused, are left as they
    are (listed as skipped). With --wait, exits 1 when any of them failed again.
    """
    answer = call_app(
        "POST", url, "/dead-letters/redrive", token, _letter_filter(worker, command, every)
    )
    tickets = [_follow(url, t) for t in answer["tickets"]] if wait else answer["tickets"]
    answer["tickets"] = tickets
    if not as_json:
        click.echo(f"{answer['count']} re-drive(s) started")
        for skipped in answer["skipped"]:
            click.echo(f"skipped {skipped['worker']}/{skipped['message_id']}: {skipped['reason']}")
    _finish(tickets, wait=wait, as_json=as_json, answer=answer)


async def _discard_offline(database: str, chosen: dict[str, Any], yes: bool) -> list[Any]:
    async with open_log(database, read_only=True) as log:  # a log, or refused untouched
        letters = await log.store.dead_letters(chosen["worker"])
    picked = [
        (d.worker, d.message_id)
        for d in letters
        if chosen["command"] is None or d.command_name == chosen["command"]
    ]
    if not _confirm_discard(len(picked), yes):
        return []
    store = open_store(database)
    await store.open()
    try:
        records = await store.discard_dead_letters(picked, now=time.time())
    finally:
        await store.aclose()
    return [DeadLetter.from_record(d).to_dict() for d in records]


def _confirm_discard(count: int, yes: bool) -> bool:
    if count == 0 or yes:
        return count > 0
    click.confirm(
        f"discard {count} dead letter(s)? Their messages stay done for their worker: never handled",
        abort=True,
        err=True,
    )
    return True


@click.command("discard", epilog=EXIT_CODES)
@_filter_options
@url_option()
@database_option(writes="the discards")
@_token_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option("Print the dead letters discarded as JSON.")
def discard_command(
    *,
    worker: str | None,
    command: str | None,
    every: bool,
    url: str | None,
    database: str | None,
    token: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Remove dead letters without handling them: a worker's (--worker), a command's
    (--command), or all of them (--all).

    Their messages stay done for their worker: its position stays past them, replay
    skips them, they never take effect. Asks first (--yes does not). Through a running
    app (--url), or written straight to its database (--database), which every app
    serving it follows.
    """
    chosen = _letter_filter(worker, command, every)
    url, database = one_source(url, database)
    if url is not None:
        query = "?" + str(httpx.QueryParams({"worker": worker})) if worker else ""
        listed = call_app("GET", url, "/dead-letters" + query)["dead_letters"]
        count = sum(1 for d in listed if command is None or d["command_name"] == command)
        gone = []
        if _confirm_discard(count, yes):
            gone = call_app("POST", url, "/dead-letters/discard", token, chosen)["discarded"]
    else:
        assert database is not None
        gone = run_trio(_discard_offline, database, chosen, yes)
    if as_json:
        _echo_json(gone)
        return
    click.echo(f"{len(gone)} dead letter(s) discarded")
    for d in gone:
        click.echo(f"  {d['worker']}/{d['message_id']} ({d['command_name']}): {d['error']}")


# --- workers ------------------------------------------------------------------------------


async def _set_paused_offline(database: str, worker: str, paused: bool) -> dict[str, Any]:
    async with open_log(database, read_only=True) as log:  # a log, or refused untouched
        names = {split_name(n)[0] for n in await log.store.positions()}
        names |= {r.worker for r in await log.store.controls()}
    if worker not in names:
        raise click.ClickException(f"{database} has no worker named {worker!r} (no position)")
    store = open_store(database)
    await store.open()
    try:
        record = await store.set_paused(worker, paused=paused, now=time.time())
    finally:
        await store.aclose()
    return {"worker": record.worker, "paused": record.paused, "resets": record.generation}


def _pause_verb(paused: bool) -> click.Command:
    verb = "pause" if paused else "resume"

    @click.command(verb, epilog=EXIT_CODES)
    @click.argument("name")
    @url_option()
    @database_option(writes=f"the worker's {'pause' if paused else 'resumption'}")
    @_token_option
    @json_option("Print the worker's controls as JSON.")
    def command(
        name: str, url: str | None, database: str | None, token: str | None, as_json: bool
    ) -> None:
        url, database = one_source(url, database)
        if url is not None:
            answer = call_app("POST", url, f"/workers/{quote(name, safe='')}/{verb}", token)
        else:
            assert database is not None
            answer = run_trio(_set_paused_offline, database, name, paused)
        if as_json:
            _echo_json(answer)
        elif paused:
            click.echo(f"{name} paused: it finishes the message it is on, then handles nothing")
        else:
            click.echo(f"{name} resumed where it stopped")

    command.help = (
        "Pause worker NAME in every process serving the log: each of its runs finishes "
        "the message it is on, then handles nothing (position kept, re-drives waiting, "
        "periodic work skipped, health degraded) until it is resumed. Through a running "
        "app (--url) or written to its database (--database); every app serving the "
        "database follows within its watch (at once on Linux and PostgreSQL)."
        if paused
        else "Resume worker NAME where it stopped, in every process serving the log "
        "(--url or --database, as for pause)."
    )
    return command


pause_command = _pause_verb(paused=True)
resume_command = _pause_verb(paused=False)


@click.command("reset", epilog=EXIT_CODES)
@click.argument("name")
@click.option(
    "--to", "to", required=True, type=click.IntRange(min=0), help="The new position (an id)."
)
@url_option(required=True)
@_token_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option("Print the plan (what is replayed, what is handled live again) as JSON.")
def reset_command(
    *, name: str, to: int, url: str, token: str | None, yes: bool, as_json: bool
) -> None:
    """Reset the position of worker NAME to --to, in a running app; only while it is
    paused (`workers pause` first).

    Prints what it means, from the current positions: the messages replayed to rebuild
    its state, those handled live again (handled before, after the new position),
    those that will never be handled live (not handled yet, up to it), and asks (--yes
    does not). Its runs start again from the store; once resumed, they handle live
    everything after the new position.
    """
    path = f"/workers/{quote(name, safe='')}/reset"
    plan = call_app("GET", url, f"{path}?to={to}")
    if not as_json:
        click.echo("\n".join(plan["summary"]))
    if not yes:
        click.confirm("reset?", abort=True, err=True)
    done = call_app("POST", url, path, token, {"to": to})
    if as_json:
        _echo_json(done)
    else:
        click.echo(f"{name} reset to {to}; resume it to handle what comes after")
