"""Command line: ``petrock-trio``.

The click group and the commands that run an app (``serve``, ``demo``) live here; the
commands that read one (``inspect``, ``dead-letters``, ``log tail``) are in ``_cli_read``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from ._app import App
from ._cli_errors import EXIT_CODES, CannotListen, NotOnLoopback, run_trio
from ._cli_ops import (
    discard_command,
    pause_command,
    reset_command,
    resume_command,
    retry_all_command,
    retry_command,
    status_command,
)
from ._cli_options import complete_file
from ._cli_options import database as database_value
from ._cli_read import dead_letters, inspect_command, log_group
from ._cli_workers import workers_group
from ._console import console, start_serving
from ._errors import ConfigurationError
from ._http import serve_http
from ._http_guard import AllowedHosts, is_loopback
from ._logging import configure_logging
from ._serve import check_routes

__all__ = ["console", "main", "start_serving"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(package_name="petrock-trio", prog_name="petrock-trio")
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


def _load_app(target: str) -> App | Awaitable[Any]:
    """The App ``target`` names, or what an ``async def`` factory returned, to be awaited
    inside Trio (where it may open what it needs)."""
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
    if inspect.isawaitable(found):
        return found
    return _an_app(target, found)


def _an_app(target: str, found: object) -> App:
    if not isinstance(found, App):
        raise click.BadParameter(
            f"{target} is {type(found).__name__}, not an App or a function returning one",
            param_hint="APP",
        )
    return found


async def _serve_with_http(
    loaded: App | Awaitable[Any],
    host: str,
    port: int,
    *,
    target: str,
    database: str | None,
    token: str | None,
    hosts: tuple[str, ...],
    insecure: bool,
) -> None:
    app = loaded if isinstance(loaded, App) else _an_app(target, await loaded)
    if database is not None:
        if app.store is not None:
            raise click.UsageError(f"{target} brings its own store; --database cannot replace it")
        app.database = database
    # Before the API listens: a refused app must not have been announced as served.
    check_routes(app)
    out = console()
    serving = partial(
        serve_http, app, host, port, token=token, allowed_hosts=hosts, allow_no_token=insecure
    )
    async with trio.open_nursery() as nursery:
        try:
            url = await nursery.start(serving)
        except OSError as exc:
            raise CannotListen(f"cannot listen on {host}:{port}: {exc}") from None
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


def _host_names(
    _: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--allowed-host`` entries, checked; commas separate several (as in the variable)."""
    names = tuple(n.strip() for value in values for n in value.split(",") if n.strip())
    try:
        AllowedHosts(names)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return names


@main.command("serve", epilog=EXIT_CODES)
@click.argument("target", metavar="MODULE:APP")
@click.option(
    "--database",
    callback=database_value(exists=False),
    shell_complete=complete_file,
    # No environment variable: what an app writes to is said where it is served.
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
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    callback=_host_names,
    envvar="PETROCK_TRIO_ALLOWED_HOSTS",
    help="A name requests may be addressed to (their Host header) besides localhost, "
    "127.0.0.1 and [::1]: NAME or NAME:PORT, or * for any; repeatable (or "
    "PETROCK_TRIO_ALLOWED_HOSTS, comma-separated). Other names are refused (DNS rebinding).",
)
@click.option(
    "--insecure-no-token",
    is_flag=True,
    help="Serve a non-loopback --host without a token: anyone who can reach it can "
    "submit commands.",
)
def serve_command(
    *,
    target: str,
    database: str | None,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    insecure_no_token: bool,
) -> None:
    """Serve an app with its HTTP API and dashboard until SIGINT or SIGTERM.

    MODULE:APP names an App object, or a function taking no arguments that returns one
    (e.g. myproject.app:app or myproject.app:create_app), or an async function that
    does (awaited once Trio runs); modules in the current directory can be imported.
    Its own routes (App(routes=...)) are served beside the API. Start-up shows replay
    progress; the first signal stops gracefully, a second one at once.

    Beyond loopback (--host 0.0.0.0, or any other address) it needs --token, or
    --insecure-no-token; reads stay open either way, and a warning says so.
    """
    if token == "":
        raise click.BadParameter("must not be empty", param_hint="--token")
    if not is_loopback(host) and token is None and not insecure_no_token:
        raise NotOnLoopback(
            f"refusing to serve on {host or 'every interface'} without a token: anyone who "
            "can reach it could submit commands; give --token (or PETROCK_TRIO_TOKEN), or "
            "--insecure-no-token to serve it open anyway"
        )
    loaded = _load_app(target)
    run_trio(
        partial(
            _serve_with_http,
            loaded,
            host,
            port,
            target=target,
            database=database,
            token=token,
            hosts=allowed_hosts,
            insecure=insecure_no_token,
        )
    )


@main.command(epilog=EXIT_CODES)
@click.option(
    "--database",
    default="petrock-demo.db",
    show_default=True,
    callback=database_value(exists=False),
    shell_complete=complete_file,
    help="SQLite file or postgresql:// URL; kept between runs, so a second run replays the first.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for summaries.",
)
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
    *, database: str, timeout: float, serve_http_too: bool, host: str, port: int, flaky: bool
) -> None:
    """Run the items example: create items, watch the summary worker, show the results.

    Starts the local summariser on 127.0.0.1, serves the app on a SQLite file, creates
    sample items, shows progress while the worker summarises them, then prints the
    items, each worker's metrics and health, and exits (0 when every item has its
    summary). With --serve the HTTP API and dashboard run from the start, and the demo
    keeps serving after the summaries until Ctrl-C.
    """
    from ._demo import run_demo  # noqa: PLC0415 - the demo's dependencies load only for it

    if serve_http_too and not is_loopback(host):
        raise NotOnLoopback(f"the demo serves loopback only (it has no token), not {host}")
    http = (host, port) if serve_http_too else None
    try:
        ok = run_trio(partial(run_demo, database, timeout, http=http, flaky=5.0 * flaky))
    except CannotListen as exc:
        # Only the dashboard listens on an address the user chose: name it.
        reason = exc.message.removeprefix("cannot listen: ")
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None
    sys.exit(0 if ok else 1)


# --- reading an app (the commands are defined in _cli_read) ----------------------------

main.add_command(inspect_command)
main.add_command(dead_letters)
main.add_command(log_group)
for _verb in (retry_command, status_command, retry_all_command, discard_command):
    dead_letters.add_command(_verb)
main.add_command(workers_group)
for _verb in (pause_command, resume_command, reset_command):
    workers_group.add_command(_verb)


def run(argv: list[str] | None = None) -> Any:
    return main.main(args=argv, prog_name="petrock-trio", standalone_mode=False)
