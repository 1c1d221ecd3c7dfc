"""Command line: ``petrock-trio``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import trio

from ._logging import configure_logging

__all__ = ["main"]


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


@main.command()
@click.option(
    "--database",
    default="petrock-demo.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file; kept between runs, so a second run replays the first.",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for summaries.")
def demo(database: Path, timeout: float) -> None:
    """Run the items example: create items, watch the summary worker, show the results.

    Starts the local summariser on 127.0.0.1, serves the app on a SQLite file, creates
    sample items, shows progress while the worker summarises them, then prints the
    items, each worker's metrics and health, and exits (0 when every item has its
    summary).
    """
    from ._demo import run_demo  # noqa: PLC0415 - the demo's dependencies load only for it

    ok = trio.run(run_demo, str(database), timeout)
    sys.exit(0 if ok else 1)


def run(argv: list[str] | None = None) -> Any:
    return main.main(args=argv, prog_name="petrock-trio", standalone_mode=False)
