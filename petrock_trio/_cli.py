"""Command line: ``petrock-trio``."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
import orjson
import trio
from rich.console import Console
from rich.table import Table

from ._app import App, DeadLetter
from ._http import serve_http
from ._logging import configure_logging
from ._message import Row
from ._open import open_log
from ._serve import serve

__all__ = ["console", "main", "start_serving"]

_URL_HELP = "Base URL of a running app's HTTP API, e.g. http://127.0.0.1:8000."
_DATABASE_HELP = "SQLite file of an app, read directly (the app may be running or not)."


def console() -> Console:
    # Piped output (logs, CI) is not cut to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 140)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Structured log level (logs go to stderr).",
)
@click.option("--json-logs/--console-logs", default=None, help="Log format (default: by terminal).")
def main(log_level: str, json_logs: bool | None) -> None:
    """petrock-trio: background workers for command-sourced applications, on Trio."""
    configure_logging(level=log_level, json=json_logs)


# --- serving ----------------------------------------------------------------------------


class _Live(trio.TaskStatus[None]):
    """What ``serve`` reports to: unlike ``nursery.start``, it lets ``serve`` end first."""

    def __init__(self) -> None:
        self.live = False
        self.settled = trio.Event()

    def started(self, value: None = None) -> None:  # noqa: ARG002 - the protocol's signature
        self.live = True
        self.settled.set()


async def start_serving(
    nursery: trio.Nursery, app: App, out: Console, *, then: Callable[[], None] | None = None
) -> bool:
    """Start ``serve(app)`` in ``nursery`` and show replay progress until it is live.

    ``then`` runs when ``serve`` returns (after a signal or ``app.stop()``). Returns
    False when ``serve`` ended during start-up, stopped by a signal before it was live.
    """
    status = _Live()

    async def run() -> None:
        try:
            await serve(app, task_status=status)
        finally:
            status.settled.set()
            if not status.live:
                out.print("stopped during start-up")
            if then is not None:
                then()

    started = trio.current_time()
    with out.status("opening the log…") as spinner:
        async with trio.open_nursery() as progress:
            progress.start_soon(_show_replay, app, out, spinner.update, started)
            nursery.start_soon(run)
            await status.settled.wait()
            progress.cancel_scope.cancel()
    if not status.live:
        return False
    head = app.inspect()["head"]
    out.print(f"replayed the log (head {head}) in {trio.current_time() - started:.1f} s")
    return True


async def _show_replay(
    app: App, out: Console, update: Callable[[str], None], started: float
) -> None:
    printed = started
    while True:
        report = app.inspect()
        head = report["head"]
        if head is not None:
            slowest = min(report["positions"].values(), default=head)
            line = (
                f"replaying the log: state at {report['projection']['position']}/{head}, "
                f"slowest worker at {slowest}/{head}"
            )
            update(line)
            # Off a terminal the spinner draws nothing: a line now and then instead.
            now = trio.current_time()
            if not out.is_terminal and now - printed >= 1.0:
                out.print(line)
                printed = now
        await trio.sleep(0.1)


def _load_app(target: str) -> App:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:APP, e.g. myproject.app:app", param_hint="APP")
    # Like other servers' loaders: modules in the current directory are importable.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise click.BadParameter(
                f"{module_name!r} has no attribute {attribute!r}", param_hint="APP"
            ) from None
    if callable(found) and not isinstance(found, (App, type)):
        found = found()
    if not isinstance(found, App):
        raise click.BadParameter(
            f"{target} is {type(found).__name__}, not an App or a function returning one",
            param_hint="APP",
        )
    return found


async def _serve_with_http(app: App, host: str, port: int, token: str | None) -> None:
    out = console()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_http, app, host, port, token=token))
        out.print(f"HTTP API and dashboard at {url}/")
        if await start_serving(nursery, app, out, then=nursery.cancel_scope.cancel):
            out.print(f"serving {app.database}; Ctrl-C or SIGTERM stops gracefully")


def _host_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address the HTTP API listens on (loopback unless you mean otherwise).",
    )(fn)


def _port_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--port",
        default=8000,
        show_default=True,
        type=click.IntRange(0, 65535),
        help="Port of the HTTP API; 0 picks a free one.",
    )(fn)


@main.command("serve")
@click.argument("target", metavar="MODULE:APP")
@click.option(
    "--database",
    help="Database (SQLite path or postgresql:// URL) to serve instead of the app's own.",
)
@_host_option
@_port_option
@click.option(
    "--token",
    envvar="PETROCK_TRIO_TOKEN",
    help="Bearer token required to submit commands and re-drive dead letters "
    "(also read from PETROCK_TRIO_TOKEN). Reads stay open.",
)
def serve_command(
    target: str, database: str | None, host: str, port: int, token: str | None
) -> None:
    """Serve an app with its HTTP API and dashboard until SIGINT or SIGTERM.

    MODULE:APP names an App object, or a function taking no arguments that returns one
    (e.g. myproject.app:app or myproject.app:create_app); modules in the current
    directory can be imported. Start-up shows replay progress; the first signal stops
    gracefully, a second one at once.
    """
    app = _load_app(target)
    if database is not None:
        if app.store is not None:
            raise click.UsageError(f"{target} brings its own store; --database cannot replace it")
        app.database = database
    try:
        trio.run(_serve_with_http, app, host, port, token)
    except KeyboardInterrupt:  # before the app's own signal handling was in place
        sys.exit(130)


@main.command()
@click.option(
    "--database",
    default="petrock-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file; kept between runs, so a second run replays the first.",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for summaries.")
@click.option(
    "--serve",
    "serve_http_too",
    is_flag=True,
    help="Serve the HTTP API and dashboard too, and keep running after the summaries until Ctrl-C.",
)
@_host_option
@_port_option
@click.option(
    "--flaky",
    is_flag=True,
    help="Make the local summariser fail for the first 5 seconds, to show degraded "
    "health and recovery.",
)
def demo(
    *, database: Path, timeout: float, serve_http_too: bool, host: str, port: int, flaky: bool
) -> None:
    """Run the items example: create items, watch the summary worker, show the results.

    Starts the local summariser on 127.0.0.1, serves the app on a SQLite file, creates
    sample items, shows progress while the worker summarises them, then prints the
    items, each worker's metrics and health, and exits (0 when every item has its
    summary). With --serve the HTTP API and dashboard run from the start, and the demo
    keeps serving after the summaries until Ctrl-C.
    """
    from ._demo import run_demo  # noqa: PLC0415 - the demo's dependencies load only for it

    http = (host, port) if serve_http_too else None
    try:
        ok = trio.run(partial(run_demo, str(database), timeout, http=http, flaky=5.0 * flaky))
    except KeyboardInterrupt:  # before the app's own signal handling was in place
        sys.exit(130)
    sys.exit(0 if ok else 1)


# --- reading an app ---------------------------------------------------------------------


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


@main.command("inspect")
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
        report = trio.run(_offline_report, str(database))
        tables = _offline_tables(report)
    if as_json:
        _echo_json(report)
        return
    out = console()
    for table in tables:
        out.print(table)


@main.group("dead-letters")
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
        letters = trio.run(_offline_report, str(database), worker)["dead_letters"]
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


@main.group("log")
def log_group() -> None:
    """Read an app's message log."""


def _row_json(row: Row) -> dict[str, Any]:
    try:
        payload: Any = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        payload = row.payload.decode("utf-8", errors="replace")
    return {
        "id": row.id,
        "timestamp": datetime.fromtimestamp(row.timestamp, UTC).isoformat(),
        "name": row.name,
        "payload": payload,
    }


def _print_row(row: Row, *, as_json: bool) -> None:
    data = _row_json(row)
    if as_json:
        click.echo(orjson.dumps(data).decode())
    else:
        payload = row.payload.decode("utf-8", errors="replace")
        click.echo(f"{row.id:>8}  {data['timestamp']}  {row.name}  {payload}")


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
    """Print the last messages of a database: id, time (UTC), command name and payload."""
    trio.run(_tail, str(database), lines, follow, as_json, interval)


def run(argv: list[str] | None = None) -> Any:
    return main.main(args=argv, prog_name="petrock-trio", standalone_mode=False)
