"""Command line: ``petrock-trio workers``, what an operator asks of a running app's workers.

Attached to the ``petrock-trio`` group in ``_cli``.
"""

from __future__ import annotations

from urllib.parse import quote

import click

from ._cli_errors import EXIT_CODES
from ._cli_options import call_app, json_option, url_option
from ._cli_read import _echo_json

__all__ = ["workers_group"]


@click.group("workers")
def workers_group() -> None:
    """Act on the workers of a running app."""


@workers_group.command("snapshot", epilog=EXIT_CODES)
@click.argument("name")
@url_option(required=True)
@click.option(
    "--token",
    envvar="PETROCK_TRIO_TOKEN",
    help="The app's bearer token, if it has one (also read from PETROCK_TRIO_TOKEN).",
)
@json_option("Print the app's answer as JSON.")
def workers_snapshot(name: str, url: str, token: str | None, as_json: bool) -> None:
    """Have worker NAME save a snapshot of its state now, in a running app.

    Each partition served there saves its state after the message it is handling; one
    whose message waits to retry saves it when that message is done. The next start
    replays only what came after. Exits 1 when the worker takes no snapshots
    (``snapshot_every`` or ``snapshot_interval`` not declared) or is not running.
    """
    result = call_app("POST", url, f"/workers/{quote(name, safe='')}/snapshot", token)
    if as_json:
        _echo_json(result)
        return
    for snapshot in result["snapshots"]:
        where = f"{name} (partition {snapshot['partition']})" if snapshot["name"] != name else name
        if snapshot["pending"]:
            click.echo(f"{where}: snapshot requested; taken once its retrying message is done")
        else:
            click.echo(f"{where}: snapshot at message {snapshot['position']}")
