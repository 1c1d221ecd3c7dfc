"""Terminal output shared by the command line and the demo: the console, start-up progress."""

from __future__ import annotations

import sys
from collections.abc import Callable

import trio
from rich.console import Console

from ._app import App
from ._serve import serve

__all__ = ["console", "start_serving"]


def console() -> Console:
    # Piped output (logs, CI) is not cut to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 140)


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
        failed = True
        try:
            await serve(app, task_status=status)
            failed = False
        finally:
            status.settled.set()
            # A failure (a database that cannot be opened) speaks for itself.
            if not status.live and not failed:
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
            # Each worker replays up to its saved position; live work comes after start-up.
            progress = [w["replay"] for w in report["workers"].values()]
            behind = [p for p in progress if p["position"] < p["target"]]
            slowest = min(behind, key=lambda p: p["position"] / p["target"], default=None)
            workers = (
                f"slowest worker at {slowest['position']}/{slowest['target']}"
                if slowest is not None
                else "workers replayed"
            )
            line = (
                f"replaying the log: state at {report['projection']['position']}/{head}, {workers}"
            )
            update(line)
            # Off a terminal the spinner draws nothing: a line now and then instead.
            now = trio.current_time()
            if not out.is_terminal and now - printed >= 1.0:
                out.print(line)
                printed = now
        await trio.sleep(0.1)
