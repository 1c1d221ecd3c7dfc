"""Command line: the commands that read an app (``inspect``, ``dead-letters``, ``log tail``).

They are attached to the ``petrock-trio`` group in ``_cli``.
"""

from __future__ import annotations

import signal
from typing import Any
from urllib.parse import quote

import click
import httpx
import orjson
import trio
from rich.table import Table
from rich.text import Text

from ._app import DeadLetter
from ._cli_errors import EXIT_CODES, run_trio
from ._cli_options import call_app, database_option, json_option, one_source, url_option
from ._console import console
from ._http_rows import describe, describe_letter, letter_rows, payload_text
from ._message import Row
from ._open import open_log

__all__ = ["dead_letters", "inspect_command", "log_group"]


async def _offline_report(database: str, worker: str | None = None) -> dict[str, Any]:
    # Read-only: reading must never turn another program's database into a log.
    async with open_log(database, read_only=True) as log:
        head = await log.store.head()
        positions = await log.store.positions()
        letters = await log.store.dead_letters(worker)
        snapshots = await log.store.snapshots()
    return {
        "database": database,
        "head": head,
        "positions": positions,
        # The newest of each name (snapshots come newest first).
        "snapshots": {
            s.name: {"position": s.position, "taken_at": s.taken_at} for s in snapshots[::-1]
        },
        "dead_letters": [DeadLetter.from_record(d).to_dict() for d in letters],
    }


def _echo_json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


# Health at a glance; NO_COLOR (rich honours it) leaves the words.
_HEALTH_STYLES = {"healthy": "green", "degraded": "yellow", "unhealthy": "bold red"}


def _plain(*cells: str) -> list[Text]:
    """Cells shown as they are: names, paths and errors come from the app and its
    database, and rich would read ``[...]`` in them as markup (or fail on it)."""
    return [Text(cell) for cell in cells]


def _health(status: str, reasons: list[str]) -> Text:
    return Text.assemble(
        (status, _HEALTH_STYLES.get(status, "")), f" ({'; '.join(reasons)})" if reasons else ""
    )


def _snapshot_cell(snapshot: dict[str, Any] | None) -> Text:
    """Where a worker's latest snapshot is, and how old: a restart replays after it."""
    if snapshot is None or snapshot["position"] is None:
        return Text("" if snapshot is None else "none yet")
    return Text(f"{snapshot['position']} ({snapshot['age_seconds']:.0f} s ago)")


def _dead_letter_table(letters: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Dead letters ({len(letters)})")
    for column in ("worker", "message", "command", "attempts", "last failed", "error"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(
            *_plain(
                d["worker"],
                str(d["message_id"]),
                d["command_name"],
                str(d["attempts"]),
                d["last_failed_at"],
                d["error"],
            )
        )
    return table


def _live_tables(report: dict[str, Any], letters: list[dict[str, Any]]) -> list[Table]:
    health = report["health"]
    workers = Table(
        title=Text(
            f"{report['database']}: head {report['head']}, "
            f"state at {report['projection']['position']}, {health['status']}"
        )
    )
    workers.add_column("worker", no_wrap=True)
    for column in ("health", "position", "lag", "snapshot", "processed", "failed", "dead"):
        workers.add_column(column)
    for column in ("msg/s", "p95 ms"):
        workers.add_column(column)
    workers.add_column("last error", overflow="fold")
    for name, info in report["workers"].items():
        m = info["metrics"]
        reasons = info["health"]["reasons"]
        workers.add_row(
            Text(name),
            _health(info["health"]["status"], reasons),
            *_plain(str(info["position"]), str(info["lag"])),
            _snapshot_cell(info.get("snapshot")),
            *_plain(
                str(m["processed"]),
                str(m["failed"]),
                str(m["dead_lettered"]),
                f"{m['messages_per_second']:.1f}",
                f"{m['handler_time_p95'] * 1000:.2f}",
                info.get("last_error") or "",
            ),
        )
    return [workers, *_partition_tables(report), _dead_letter_table(letters)]


def _partition_tables(report: dict[str, Any]) -> list[Table]:
    """A table per partitioned worker: each partition's holder, health, position, lag."""
    tables = []
    for name, info in report["workers"].items():
        partitions = info.get("partitions")
        if not partitions:
            continue
        table = Table(title=Text(f"{name}: {len(partitions)} partitions"))
        for column in ("partition", "health", "position", "lag", "holder", "snapshot"):
            table.add_column(column, overflow="fold")
        for part in partitions:
            health = part["health"]
            table.add_row(
                Text(part["name"]),
                Text("elsewhere")
                if health is None
                else _health(health["status"], health["reasons"]),
                *_plain(str(part["position"]), str(part["lag"]), part["holder"] or ""),
                _snapshot_cell(part.get("snapshot")),
            )
        tables.append(table)
    return tables


_CIRCUIT_STYLES = {"closed": "green", "half_open": "yellow", "open": "red"}


def _services_table(services: dict[str, Any]) -> Table:
    """Each declared external service's circuit breaker."""
    table = Table(title=Text(f"External services ({len(services)})"))
    table.add_column("service", no_wrap=True)
    for column in ("circuit", "failures in a row", "failures", "openings", "last opened"):
        table.add_column(column)
    for column in ("calls", "rejected", "workers"):
        table.add_column(column, overflow="fold")
    for name, s in services.items():
        ago = s["last_opened_ago"]
        table.add_row(
            Text(name),
            Text(s["circuit"], _CIRCUIT_STYLES.get(s["circuit"], "")),
            *_plain(
                str(s["consecutive_failures"]),
                str(s["failures"]),
                str(s["opened"]),
                "never" if ago is None else f"{ago:.0f} s ago",
                str(s["calls"]),
                str(s["rejected"]),
                ", ".join(s["workers"]),
            ),
        )
    return table


def _offline_tables(report: dict[str, Any]) -> list[Table]:
    head = report["head"]
    letters = report["dead_letters"]
    workers = Table(title=Text(f"{report['database']}: head {head} (read from the database)"))
    for column in ("worker", "position", "lag", "snapshot", "dead letters"):
        workers.add_column(column)
    snapshots = report["snapshots"]
    for name, position in sorted(report["positions"].items()):
        dead = sum(1 for d in letters if d["worker"] == name)
        snapshot = str(snapshots[name]["position"]) if name in snapshots else ""
        workers.add_row(
            *_plain(name, str(position), str(max(0, head - position)), snapshot, str(dead))
        )
    return [workers, _dead_letter_table(letters)]


@click.command("inspect", epilog=EXIT_CODES)
@url_option()
@database_option()
@json_option()
def inspect_command(url: str | None, database: str | None, as_json: bool) -> None:
    """Show the log head, the workers' positions and the dead letters.

    With --url, a running app's full report (health, lag, rates, handler times, last
    errors, the circuits of its external services); with --database, what the
    database holds: head, saved positions and dead letters.
    """
    url, database = one_source(url, database)
    if url is not None:
        report = call_app("GET", url, "/inspect")
        report["dead_letters"] = call_app("GET", url, "/dead-letters")["dead_letters"]
        tables = _live_tables(report, report["dead_letters"])
        if report.get("services"):
            tables.insert(1, _services_table(report["services"]))
    else:
        report = run_trio(_offline_report, database)
        tables = _offline_tables(report)
    if as_json:
        _echo_json(report)
        return
    out = console()
    for table in tables:
        out.print(table)


@click.group("dead-letters")
def dead_letters() -> None:
    """List dead letters, show one with its payload and traceback, re-drive them
    through a running app, or discard them."""


@dead_letters.command("list", epilog=EXIT_CODES)
@url_option()
@database_option()
@click.option("--worker", help="Only this worker's dead letters.")
@json_option("Print JSON instead of a table.")
def dead_letters_list(
    url: str | None, database: str | None, worker: str | None, as_json: bool
) -> None:
    """List the messages workers gave up on, oldest failure first."""
    url, database = one_source(url, database)
    if url is not None:
        query = "?" + str(httpx.QueryParams({"worker": worker})) if worker else ""
        letters = call_app("GET", url, "/dead-letters" + query)["dead_letters"]
    else:
        letters = run_trio(_offline_report, database, worker)["dead_letters"]
    if as_json:
        _echo_json(letters)
    else:
        console().print(_dead_letter_table(letters))


async def _offline_letter(database: str, worker: str, message_id: int) -> dict[str, Any]:
    async with open_log(database, read_only=True) as log:
        found = [d for d in await log.store.dead_letters(worker) if d.message_id == message_id]
        if not found:
            raise click.ClickException(
                f"worker {worker!r} has no dead letter for message {message_id}"
            )
        letter = DeadLetter.from_record(found[0])
        rows = await letter_rows(log.store, [letter])
    return describe_letter(letter, rows.get(message_id), None)


def _letter_text(d: dict[str, Any]) -> str:
    payload = d["payload"]
    if not (isinstance(payload, str) and "payload_error" in d):  # else: text that is not JSON
        payload = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    lines = [
        (
            f"{d['worker']}: message {d['message_id']} ({d['command_name']}), "
            f"{d['attempts']} attempts, first failed {d['first_failed_at']}, "
            f"last failed {d['last_failed_at']}"
        ),
        f"error: {d['error']}",
        "",
        "payload:",
        payload,
    ]
    if "payload_error" in d:
        lines.append(f"[{d['payload_error']}]")
    # A dead letter from before tracebacks were kept has none.
    lines += ["", "traceback:", (d["traceback"] or "(not recorded)").rstrip("\n")]
    return "\n".join(lines)


@dead_letters.command("show", epilog=EXIT_CODES)
@click.argument("worker")
@click.argument("message_id", type=click.IntRange(min=1))
@url_option()
@database_option()
@json_option("Print the dead letter as JSON.")
def dead_letters_show(
    worker: str, message_id: int, url: str | None, database: str | None, as_json: bool
) -> None:
    """Show WORKER's dead letter for MESSAGE_ID: its error, its message's whole payload
    and the traceback of its last failure, from a running app or its database."""
    url, database = one_source(url, database)
    if url is not None:
        letter = call_app("GET", url, f"/dead-letters/{quote(worker, safe='')}/{message_id}")
    else:
        letter = run_trio(_offline_letter, database, worker, message_id)
    if as_json:
        _echo_json(letter)
    else:
        click.echo(_letter_text(letter))


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
    if not follow:
        await _print_tail(database, lines, as_json, None)
        return
    # Caught before the first line is printed: whoever stops the tail on seeing it
    # ends it cleanly (exit 0), not as an interrupt.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await _print_tail(database, lines, as_json, interval)


async def _print_tail(database: str, lines: int, as_json: bool, interval: float | None) -> None:
    """The last ``lines`` rows; then, every ``interval`` seconds, the new ones (forever)."""
    async with open_log(database, read_only=True) as log:
        head = await log.store.head()
        last = max(0, head - lines)
        for row in await log.store.read_after(last, lines):
            _print_row(row, as_json=as_json)
            last = row.id
        # Another process appends: nothing here is told, so look every interval.
        while interval is not None:
            await trio.sleep(interval)
            for row in await log.store.read_after(last, 1000):
                _print_row(row, as_json=as_json)
                last = row.id


@log_group.command("tail", epilog=EXIT_CODES)
@database_option(required=True)
@click.option(
    "-n", "--lines", default=20, show_default=True, type=click.IntRange(min=1), help="How many."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages until Ctrl-C.")
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between looks (--follow).",
)
@json_option("One JSON object per line.")
def log_tail(database: str, lines: int, follow: bool, interval: float, as_json: bool) -> None:
    """Print the last messages of a database: id, time (UTC), command name and payload.

    A row that does not decode (written by another program: a timestamp that is not a
    time, a payload that is not JSON) is printed with ``[undecodable: reason]``
    (``"undecodable"`` in JSON), and the tail goes on.
    """
    run_trio(_tail, database, lines, follow, as_json, interval)
