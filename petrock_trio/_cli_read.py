"""Command line: the commands that read an app (``inspect``, ``dead-letters``, ``log tail``).

They are attached to the ``petrock-trio`` group in ``_cli``.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import click
import httpx
import orjson
import trio
from rich.table import Table

from ._app import DeadLetter
from ._console import console
from ._errors import StoreError
from ._http_rows import describe, payload_text
from ._message import Row
from ._open import open_log
from ._retry import leaves

__all__ = [
    "EXIT_CODES",
    "CannotListen",
    "NotOnLoopback",
    "dead_letters",
    "inspect_command",
    "log_group",
    "run_trio",
]

EXIT_CODES: Final = """\b
Exit codes:
  0    done
  1    the operation failed: an error answer from the app, an app that cannot
       be reached, a re-drive that failed again, a demo that did not finish
  2    bad usage: unknown options, bad values, serving beyond loopback
       without a token
  3    the database failed: it cannot be opened, read or written (not a
       database, read-only, disk full)
  4    the HTTP API cannot listen on the address (serve)
  130  interrupted before serving started
"""


class _OneLine(click.ClickException):
    """``Error: ...`` on stderr, in one line, and the exit code of the subclass."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()) or "failed")


class NotOnLoopback(_OneLine):
    """Serving beyond loopback without what that needs (a token)."""

    exit_code = 2


class StoreFailed(_OneLine):
    """The database cannot be opened, read or written."""

    exit_code = 3


class CannotListen(_OneLine):
    """The HTTP API cannot listen on its address."""

    exit_code = 4


def _as_refusal(exc: BaseException) -> click.ClickException | None:
    """The one-line error for a failure of the database (or the system under it)."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, StoreError | sqlite3.Error):
        return StoreFailed(f"database error: {exc}")
    if isinstance(exc, OSError):
        return StoreFailed(str(exc) or type(exc).__name__)
    return None


def run_trio(fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.run(fn, *args)``; a store error ends the command in one line, exit 3.

    Store errors (:class:`StoreError` and its subclasses, ``sqlite3`` errors,
    ``OSError``), alone or grouped by nurseries, become ``Error: ...`` with no
    traceback; anything else is a bug and keeps its traceback.
    """
    try:
        return trio.run(fn, *args)
    except KeyboardInterrupt:  # before the app's own signal handling was in place
        sys.exit(130)
    except BaseException as exc:
        refusals = [_as_refusal(leaf) for leaf in leaves(exc)]
        if not refusals or any(r is None for r in refusals):
            raise
        first = refusals[0]
        assert first is not None
        raise first from None


_URL_HELP = "Base URL of a running app's HTTP API, e.g. http://127.0.0.1:8000."
_DATABASE_HELP = "SQLite file of an app, read directly (the app may be running or not)."


def _call(method: str, url: str, path: str, token: str | None = None) -> Any:
    """The JSON answer of a running app; its errors become a clean exit 1."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + path
    try:
        response = httpx.request(method, target, headers=headers, timeout=120.0)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {target}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_error:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        detail = error.get("message") or response.reason_phrase
        raise click.ClickException(f"{response.status_code} {error.get('type', '')}: {detail}")
    return body


def _one_source(url: str | None, database: Path | None) -> None:
    if (url is None) == (database is None):
        raise click.UsageError("give either --url or --database")


async def _offline_report(database: str, worker: str | None = None) -> dict[str, Any]:
    async with open_log(database) as log:
        head = await log.store.head()
        positions = await log.store.positions()
        letters = await log.store.dead_letters(worker)
    return {
        "database": database,
        "head": head,
        "positions": positions,
        "dead_letters": [DeadLetter.from_record(d).to_dict() for d in letters],
    }


def _echo_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _dead_letter_table(letters: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Dead letters ({len(letters)})")
    for column in ("worker", "message", "command", "attempts", "last failed", "error"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(
            d["worker"],
            str(d["message_id"]),
            d["command_name"],
            str(d["attempts"]),
            d["last_failed_at"],
            d["error"],
        )
    return table


def _live_tables(report: dict[str, Any], letters: list[dict[str, Any]]) -> list[Table]:
    health = report["health"]
    workers = Table(
        title=f"{report['database']}: head {report['head']}, "
        f"state at {report['projection']['position']}, {health['status']}"
    )
    workers.add_column("worker", no_wrap=True)
    for column in ("health", "position", "lag", "processed", "failed", "dead", "msg/s", "p95 ms"):
        workers.add_column(column)
    workers.add_column("last error", overflow="fold")
    for name, info in report["workers"].items():
        m = info["metrics"]
        reasons = info["health"]["reasons"]
        workers.add_row(
            name,
            info["health"]["status"] + (f" ({'; '.join(reasons)})" if reasons else ""),
            str(info["position"]),
            str(info["lag"]),
            str(m["processed"]),
            str(m["failed"]),
            str(m["dead_lettered"]),
            f"{m['messages_per_second']:.1f}",
            f"{m['handler_time_p95'] * 1000:.2f}",
            info.get("last_error") or "",
        )
    return [workers, _dead_letter_table(letters)]


def _offline_tables(report: dict[str, Any]) -> list[Table]:
    head = report["head"]
    letters = report["dead_letters"]
    workers = Table(title=f"{report['database']}: head {head} (read from the database)")
    for column in ("worker", "position", "lag", "dead letters"):
        workers.add_column(column)
    for name, position in sorted(report["positions"].items()):
        dead = sum(1 for d in letters if d["worker"] == name)
        workers.add_row(name, str(position), str(max(0, head - position)), str(dead))
    return [workers, _dead_letter_table(letters)]


@click.command("inspect")
@click.option("--url", help=_URL_HELP)
@click.option(
    "--database", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=_DATABASE_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect_command(url: str | None, database: Path | None, as_json: bool) -> None:
    """Show the log head, the workers' positions and the dead letters.

    With --url, a running app's full report (health, lag, rates, handler times, last
    errors); with --database, what the database holds: head, saved positions and dead
    letters.
    """
    _one_source(url, database)
    if url is not None:
        report = _call("GET", url, "/inspect")
        report["dead_letters"] = _call("GET", url, "/dead-letters")["dead_letters"]
        tables = _live_tables(report, report["dead_letters"])
    else:
        report = run_trio(_offline_report, str(database))
        tables = _offline_tables(report)
    if as_json:
        _echo_json(report)
        return
    out = console()
    for table in tables:
        out.print(table)


@click.group("dead-letters")
def dead_letters() -> None:
    """List dead letters, or re-drive one through a running app."""


@dead_letters.command("list")
@click.option("--url", help=_URL_HELP)
@click.option(
    "--database", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=_DATABASE_HELP
)
@click.option("--worker", help="Only this worker's dead letters.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dead_letters_list(
    url: str | None, database: Path | None, worker: str | None, as_json: bool
) -> None:
    """List the messages workers gave up on, oldest failure first."""
    _one_source(url, database)
    if url is not None:
        query = "?" + str(httpx.QueryParams({"worker": worker})) if worker else ""
        letters = _call("GET", url, "/dead-letters" + query)["dead_letters"]
    else:
        letters = run_trio(_offline_report, str(database), worker)["dead_letters"]
    if as_json:
        _echo_json(letters)
    else:
        console().print(_dead_letter_table(letters))


@dead_letters.command("retry")
@click.argument("worker")
@click.argument("message_id", type=click.IntRange(min=1))
@click.option("--url", required=True, help=_URL_HELP)
@click.option(
    "--token",
    envvar="PETROCK_TRIO_TOKEN",
    help="The app's bearer token, if it has one (also read from PETROCK_TRIO_TOKEN).",
)
def dead_letters_retry(worker: str, message_id: int, url: str, token: str | None) -> None:
    """Have WORKER handle dead-lettered message MESSAGE_ID again, in a running app.

    Exits 0 when the worker handled it (the dead letter is gone) and 1 when it failed
    again (the dead letter stays, with its attempts added up).
    """
    path = f"/dead-letters/{quote(worker, safe='')}/{message_id}/redrive"
    result = _call("POST", url, path, token)
    if result["resolved"]:
        click.echo(f"message {message_id} handled by {worker}; dead letter resolved")
        return
    letter = result["dead_letter"]
    click.echo(
        f"message {message_id} failed again in {worker} "
        f"({letter['attempts']} attempts): {letter['error']}"
    )
    sys.exit(1)


# --- the log ----------------------------------------------------------------------------


@click.group("log")
def log_group() -> None:
    """Read an app's message log."""


def _print_row(row: Row, *, as_json: bool) -> None:
    # Rows another program wrote may not decode: shown, marked, and the tail goes on.
    data = describe(row)
    if as_json:
        click.echo(orjson.dumps(data).decode())
        return
    line = f"{row.id:>8}  {data['timestamp'] or '?'}  {data['name']}  {payload_text(row.payload)}"
    if "undecodable" in data:
        line += f"  [undecodable: {data['undecodable']}]"
    click.echo(line)


async def _tail(database: str, lines: int, follow: bool, as_json: bool, interval: float) -> None:
    async with open_log(database) as log:
        head = await log.store.head()
        last = max(0, head - lines)
        for row in await log.store.read_after(last, lines):
            _print_row(row, as_json=as_json)
            last = row.id
        if not follow:
            return
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                # Another process appends: nothing here is told, so look every interval.
                while True:
                    for row in await log.store.read_after(last, 1000):
                        _print_row(row, as_json=as_json)
                        last = row.id
                    await trio.sleep(interval)


@log_group.command("tail")
@click.option(
    "--database",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=_DATABASE_HELP,
)
@click.option(
    "-n", "--lines", default=20, show_default=True, type=click.IntRange(min=1), help="How many."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages until Ctrl-C.")
@click.option(
    "--interval", default=0.5, show_default=True, help="Seconds between looks (--follow)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def log_tail(database: Path, lines: int, follow: bool, interval: float, as_json: bool) -> None:
    """Print the last messages of a database: id, time (UTC), command name and payload.

    A row that does not decode (written by another program: a timestamp that is not a
    time, a payload that is not JSON) is printed with ``[undecodable: reason]``
    (``"undecodable"`` in JSON), and the tail goes on.
    """
    run_trio(_tail, str(database), lines, follow, as_json, interval)
