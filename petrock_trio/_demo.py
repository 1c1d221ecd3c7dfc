"""The demo: the items feature on a SQLite file, with the local summariser."""

from __future__ import annotations

import importlib
from functools import partial
from types import ModuleType
from typing import Any

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._app import App
from ._console import console as make_console
from ._console import start_serving
from ._errors import ValidationError
from ._health import Health
from ._http import serve_http
from ._services import ExternalService

__all__ = ["SAMPLES", "example", "run_demo"]

SAMPLES = {
    "structured-concurrency": (
        "Structured concurrency ties every task to a scope. A nursery waits for all of its "
        "children before it exits. Errors propagate to the parent instead of vanishing. "
        "Cancellation follows the same tree, so nothing is left running by accident."
    ),
    "event-sourcing": (
        "An event-sourced system stores every change as an entry in an append-only log. "
        "Current state is derived by replaying the log. The log doubles as an audit trail. "
        "Rebuilding a projection is a matter of replaying from the start."
    ),
    "backpressure": (
        "Backpressure lets a slow consumer slow down a fast producer. Bounded queues are "
        "the simplest form of it. Unbounded queues only postpone the failure. "
        "The weather has nothing to do with it."
    ),
    "circuit-breakers": (
        "A circuit breaker stops calling a service that keeps failing. After a cool-down "
        "it lets one probe through. If the probe succeeds, traffic resumes. "
        "Breakers turn an outage into degraded service instead of a pile of timeouts."
    ),
    "idempotency": (
        "An idempotent operation has the same effect however often it runs. Retries are "
        "safe only for idempotent calls. An idempotency key lets a server recognise a "
        "repeated request and answer it without doing the work twice."
    ),
    "sqlite-wal": (
        "SQLite in WAL mode lets readers proceed while a writer commits. Each commit "
        "appends to the write-ahead log. Checkpoints move pages back into the database "
        "file. One writer at a time keeps the design simple."
    ),
}


def example() -> ModuleType:
    """The items example feature, wherever this installation keeps it.

    A wheel ships it inside the package, as ``petrock_trio.examples.items`` (a top-level
    ``features`` would take the name of the user's own features). The source tree, and
    so an editable install, keeps it where Petrock's layout has it: ``features/items``.
    """
    try:
        return importlib.import_module("petrock_trio.examples.items")
    except ModuleNotFoundError as exc:
        if exc.name not in {"petrock_trio.examples", "petrock_trio.examples.items"}:
            raise  # the example is there, but something it needs is not
    return importlib.import_module("features.items")


async def run_demo(
    database: str,
    timeout: float,  # noqa: ASYNC109 - how long to wait for summaries
    *,
    http: tuple[str, int] | None = None,
    flaky: float = 0.0,
) -> bool:
    """Run the demo; True when every sample item got its summary.

    ``http`` is ``(host, port)`` to serve the HTTP API and dashboard from the start and
    keep serving after the summaries until a signal stops the app. ``flaky`` makes the
    local summariser fail for that many seconds first.
    """
    items = example()
    console = make_console()
    async with trio.open_nursery() as nursery:
        service = items.SummarizerService(failing=flaky > 0)
        url = await nursery.start(items.serve_summarizer, service)
        if flaky > 0:
            nursery.start_soon(_recover_after, console, service, flaky)
        feature = items.ItemsFeature(
            summarizer=items.HttpSummarizer(url),
            # A short cool-down, so that recovery after --flaky shows within seconds.
            service=ExternalService("summarizer", failure_threshold=3, reset_timeout=2.0),
        )
        app = App(database=database)
        app.register_feature(feature)
        if http is not None:
            host, port = http
            dashboard = await nursery.start(partial(serve_http, app, host, port))
            console.print(f"HTTP API and dashboard at {dashboard}/")
        stopped = trio.Event()
        if not await start_serving(nursery, app, console, then=stopped.set):
            nursery.cancel_scope.cancel()
            return False
        console.print(
            f"[bold]petrock-trio demo[/] on [cyan]{database}[/] "
            f"(log head {app.inspect()['head']}), summariser at {url}"
        )
        created = 0
        for name, content in SAMPLES.items():
            try:
                await app.execute(items.CreateItem(name, f"Sample item about {name}", content))
                created += 1
            except ValidationError:
                pass  # from an earlier run of the demo on the same file
        console.print(f"created {created} items, {len(SAMPLES) - created} already there")
        done = await _watch(console, app, feature, timeout)
        if app.running:
            await app.caught_up()
        _show(console, app, feature)
        if http is not None and app.running:
            console.print(f"still serving the dashboard at {dashboard}/; Ctrl-C stops")
        else:
            app.stop()
        await stopped.wait()
        nursery.cancel_scope.cancel()
    return done


async def _recover_after(console: Console, service: Any, seconds: float) -> None:
    await trio.sleep(seconds)
    service.failing = False
    console.print(f"the summariser works again after {seconds:g} s")


async def _watch(console: Console, app: App, feature: Any, timeout: float) -> bool:  # noqa: ASYNC109
    columns = (
        TextColumn("summaries"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    health = Health.HEALTHY
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("summaries", total=len(SAMPLES))
        with trio.move_on_after(timeout):
            while app.running:
                report = app.health()
                if report.status is not health:
                    health = report.status
                    reasons = f" ({'; '.join(report.reasons)})" if report.reasons else ""
                    progress.console.print(f"health: {health.value}{reasons}")
                ready = sum(
                    1
                    for name in SAMPLES
                    if (item := feature.state.get(name)) is not None
                    and item.summary_status == "ready"
                )
                progress.update(task, completed=ready)
                if ready == len(SAMPLES):
                    return True
                await trio.sleep(0.05)  # a display refresh, not a wait for the engine
    return False


def _show(console: Console, app: App, feature: Any) -> None:
    items = Table(title="Items", show_lines=False)
    for column in ("name", "version", "status", "summary"):
        items.add_column(column, overflow="fold")
    for item in feature.state.list(page_size=1000).items:
        items.add_row(item.name, str(item.version), item.summary_status, item.summary)
    console.print(items)

    report = app.inspect()
    workers = Table(title=f"Workers (log head {report['head']})")
    workers.add_column("worker", no_wrap=True)
    for column in ("position", "lag", "replayed", "live", "msg/s", "p50 ms", "p95 ms", "health"):
        workers.add_column(column)
    for name, info in report["workers"].items():
        m = info["metrics"]
        health = info["health"]
        workers.add_row(
            name,
            str(info["position"]),
            str(info["lag"]),
            str(m["replayed"]),
            str(m["processed"]),
            f"{m['messages_per_second']:.1f}",
            f"{m['handler_time_p50'] * 1000:.2f}",
            f"{m['handler_time_p95'] * 1000:.2f}",
            health["status"] + (f" ({'; '.join(health['reasons'])})" if health["reasons"] else ""),
        )
    console.print(workers)
