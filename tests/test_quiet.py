"""An engine embedded in a program prints nothing until the program asks for logs."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import structlog
import structlog.testing
import trio

import petrock_trio as pt
from petrock_trio._logging import get_logger

# A program that embeds the engine: serve, execute, a handler that fails once and is
# retried, ctx.log in the handler, then a graceful stop. What it saw goes to a file,
# so that its own output can be held to nothing at all.
PROGRAM = textwrap.dedent(
    """
    import json
    import sys

    import attrs
    import trio

    import petrock_trio as pt

    database, report, mode = sys.argv[1:4]


    @pt.command("quiet/ping")
    @attrs.frozen
    class Ping:
        n: int


    worker = pt.PatternWorker("pinger", retry=pt.Backoff(initial=0.01, max_attempts=3))
    attempts = []


    @worker.on_command("quiet/ping")
    async def ping(ctx: pt.HandlerContext, cmd: Ping, state: None) -> None:
        attempts.append(ctx.attempt)
        ctx.log.info("ping.handled", n=cmd.n)
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")


    async def main() -> None:
        if mode == "configured":
            pt.configure_logging(level="debug")
        app = pt.App(database=database, hooks=[] if mode == "no-hooks" else None)
        app.register_command(Ping)
        app.register_worker(worker)
        async with trio.open_nursery() as nursery:
            await nursery.start(pt.serve, app)
            await app.execute(Ping(1))
            await app.caught_up()
            metrics = app.inspect()["workers"]["pinger"]["metrics"]
            app.stop()
        with open(report, "w") as out:
            json.dump({"attempts": attempts, "failed": metrics["failed"]}, out)


    trio.run(main)
    """
)


def embed(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    program = tmp_path / "embedding.py"
    program.write_text(PROGRAM)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(program), str(tmp_path / "app.db"), str(report), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(report.read_text())


class TestEmbeddedEngine:
    """Without configure_logging the engine writes nothing, whatever happens in it."""

    @pytest.mark.parametrize("mode", ["default-hooks", "no-hooks"])
    def test_prints_nothing_unasked(self, tmp_path: Path, mode: str) -> None:
        done, report = embed(tmp_path, mode)
        # The run did what it says: one failed attempt, then a successful retry.
        assert report == {"attempts": [1, 2], "failed": 1}
        assert done.stdout == ""
        assert done.stderr == ""

    def test_configure_logging_brings_the_lines_back(self, tmp_path: Path) -> None:
        done, report = embed(tmp_path, "configured")
        assert report == {"attempts": [1, 2], "failed": 1}
        assert done.stdout == ""  # logs go to stderr, the program's stdout stays its own
        events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
        for expected in (
            "petrock.serving",
            "ping.handled",
            "petrock.handler.failed",
            "petrock.handler.complete",
            "petrock.stopped",
        ):
            assert expected in events, done.stderr


@pt.command("quiet/echo")
@attrs.frozen
class Echo:
    text: str


class TestCapture:
    """The testing kit's capture sees the engine's events while nothing is configured."""

    async def test_capture_logs_sees_engine_and_handler_events(self) -> None:
        assert not structlog.is_configured()
        worker: pt.PatternWorker[None] = pt.PatternWorker(
            "echo", retry=pt.Backoff(initial=0.01, max_attempts=2)
        )

        @worker.on_command("quiet/echo")
        async def echo(ctx: pt.HandlerContext, cmd: Echo, state: None) -> None:
            ctx.log.info("echo.handled", text=cmd.text)
            if ctx.attempt == 1:
                raise RuntimeError("once")

        app = pt.App()
        app.register_command(Echo)
        app.register_worker(worker)
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(pt.serve, app)
                await app.execute(Echo("hi"))
                await app.caught_up()
                app.stop()
        events = [(e["event"], e.get("worker_name")) for e in logs]
        assert ("petrock.serving", None) in events
        assert ("petrock.handler.failed", "echo") in events
        assert events.count(("echo.handled", "echo")) == 2
        handled = [e for e in logs if e["event"] == "echo.handled"]
        assert [e["attempt"] for e in handled] == [1, 2]
        # capture_logs reports levels; the debug line of a handled message is there too.
        assert ("petrock.handler.complete", "echo") in events


class TestEngineLogger:
    """The engine's loggers follow structlog's configuration as it is at each call."""

    def test_silent_until_configured_then_written(self) -> None:
        log = get_logger("petrock_trio.test").bind(worker_name="w")
        out = io.StringIO()
        log.info("before")  # structlog's defaults would print this to stdout
        assert not log.is_enabled_for(logging.ERROR)
        pt.configure_logging(level="info", json=True, stream=out)
        log.info("after", n=1)
        (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
        assert (line["event"], line["worker_name"], line["n"]) == ("after", "w", 1)

    def test_levels_follow_a_new_configuration(self) -> None:
        log = get_logger("petrock_trio.test")
        pt.configure_logging(level="warning", stream=io.StringIO())
        assert (log.is_enabled_for(logging.DEBUG), log.is_enabled_for(logging.WARNING)) == (
            False,
            True,
        )
        pt.configure_logging(level="debug", stream=io.StringIO())
        assert log.is_enabled_for(logging.DEBUG)

    def test_bind_and_unbind_keep_structlogs_rules(self) -> None:
        log = get_logger("petrock_trio.test", a=1).bind(b=2)
        with structlog.testing.capture_logs() as logs:
            log.unbind("a").info("one")
            log.try_unbind("missing").new(c=3).info("two")
        assert [(e["event"], e.get("a"), e.get("b"), e.get("c")) for e in logs] == [
            ("one", None, 2, None),
            ("two", None, None, 3),
        ]
        with pytest.raises(KeyError):
            log.unbind("missing")
