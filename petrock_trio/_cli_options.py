"""Command line: where the reading commands read from (``--url`` or ``--database``).

Both options also come from the environment (``PETROCK_TRIO_URL``,
``PETROCK_TRIO_DATABASE``); one given on the command line wins over the other's
variable, so a shell that exports both can still say which it means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import click
import httpx
import orjson
from click.core import ParameterSource
from click.shell_completion import CompletionItem

__all__ = [
    "DATABASE_ENV",
    "URL_ENV",
    "app_url",
    "call_app",
    "complete_file",
    "database",
    "database_option",
    "json_option",
    "one_source",
    "url_option",
]

URL_ENV: Final = "PETROCK_TRIO_URL"
DATABASE_ENV: Final = "PETROCK_TRIO_DATABASE"

_POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def app_url(_: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--url``: the base URL of a running app's HTTP API, ``http(s)://`` and a host."""
    if value is None:
        return None
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}", param=param) from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise click.BadParameter(
            f"{value!r} is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000",
            param=param,
        )
    return value


def database(*, exists: bool = True) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """``--database``: a SQLite file (a path, or ``sqlite:///path``) or a ``postgresql://``
    URL, passed on as the store takes it.

    A file is checked here (not a directory; with ``exists``, there), so that a typo is
    bad usage (exit 2) rather than a database failure. Whether it can be read is the
    store's to find out: a file that is there but unreadable is a database failure
    (exit 3), as documented, not bad usage.
    """
    file = click.Path(exists=exists, dir_okay=False, readable=False)

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None or value.startswith(_POSTGRES_SCHEMES):
            return value
        return str(file.convert(value.removeprefix("sqlite:///"), param, ctx))

    return check


def complete_file(_: click.Context, __: click.Parameter, incomplete: str) -> list[CompletionItem]:
    # The shell completes file names; a postgresql:// URL is typed out.
    return [CompletionItem(incomplete, type="file")]


def url_option(*, required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--url",
        callback=app_url,
        envvar=URL_ENV,
        required=required,
        help=f"Base URL of a running app's HTTP API, e.g. http://127.0.0.1:8000 (or {URL_ENV}).",
    )


def database_option(
    *, required: bool = False, writes: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--database`` of a command that reads; one that writes says what (``writes``)."""
    use = "read directly and never written" if writes is None else f"into which it writes {writes}"
    return click.option(
        "--database",
        callback=database(),
        shell_complete=complete_file,
        envvar=DATABASE_ENV,
        required=required,
        help=f"An app's database, {use} (the app may be running "
        f"or not): a SQLite file or a postgresql:// URL (or {DATABASE_ENV}).",
    )


def json_option(what: str = "Print JSON instead of tables.") -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help=what)


def one_source(url: str | None, database: str | None) -> tuple[str | None, str | None]:
    """Exactly one of ``--url`` and ``--database``: the one on the command line when the
    other only comes from its environment variable."""
    if url is not None and database is not None:
        source = click.get_current_context().get_parameter_source
        from_env = {
            name
            for name in ("url", "database")
            if source(name) in {ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP}
        }
        if from_env == {"url"}:
            url = None
        elif from_env == {"database"}:
            database = None
        elif from_env:
            raise click.UsageError(
                f"{URL_ENV} and {DATABASE_ENV} are both set: give --url or --database"
            )
    if (url is None) == (database is None):
        raise click.UsageError("give either --url or --database")
    return url, database


def call_app(
    method: str, url: str, path: str, token: str | None = None, body: Any = None
) -> dict[str, Any]:
    """The JSON object a running app answers to ``method path`` (``body`` sent as JSON);
    its errors become a clean exit 1. Every command that asks a running app goes here."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + path
    content = None if body is None else orjson.dumps(body)
    if content is not None:
        headers["Content-Type"] = "application/json"
    try:
        response = httpx.request(method, target, headers=headers, content=content, timeout=120.0)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise click.ClickException(f"cannot reach {target}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.is_error:
        error = answer.get("error") if isinstance(answer, dict) else None
        error = error if isinstance(error, dict) else {}
        detail = error.get("message") or response.reason_phrase
        raise click.ClickException(f"{response.status_code} {error.get('type', '')}: {detail}")
    if not isinstance(answer, dict):
        raise click.ClickException(
            f"{target} answered {response.status_code} without a JSON object: "
            "is it a petrock-trio app's HTTP API?"
        )
    return answer
