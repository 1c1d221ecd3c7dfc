"""SIGTERM in the middle of a stream: a served program stops gracefully and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

import petrock_trio as pt

# The program under test: exactly ``trio.run(petrock_trio.serve, app)``, with one worker
# that records every message it handles, in its state and by emitting a command.
PROGRAM = '''\
"""Serve a recording worker on the SQLite file named by argv[1] until a signal."""

import json
import sys

import attrs
import trio

import petrock_trio as pt


@pt.command("sigterm/job")
@attrs.frozen
class Job:
    n: int


@pt.command("sigterm/handled")
@attrs.frozen
class Handled:
    message_id: int


recorder = pt.PatternWorker("recorder", state=[])


@recorder.on_command("sigterm/job")
async def record(ctx, cmd, state):
    await trio.sleep(0.005)  # a little work, so that a backlog builds up
    ctx.emit(Handled(ctx.message.id))
    state.append(ctx.message.id)


app = pt.App(database=sys.argv[1])
app.register_command(Job)
app.register_command(Handled)
app.register_worker(recorder)
pt.configure_logging(level="warning")  # to stderr: stdout is for the state below
trio.run(pt.serve, app)
print(json.dumps(recorder.state), flush=True)
'''


@pt.command("sigterm/job")
@attrs.frozen
class Job:
    n: int


@pt.command("sigterm/handled")
@attrs.frozen
class Handled:
    message_id: int


def handled_so_far(database: Path) -> int:
    """How many messages the program has handled, read without writing to the file."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM messages WHERE name = 'sigterm/handled'"
        ).fetchone()
    return int(count)


async def read_all(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some():
        into.append(bytes(chunk))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_sigterm_mid_stream_exits_cleanly_and_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM while a backlog is handled: exit 0, the saved position is the last
    message handled, each message up to it handled once, and every append is kept."""
    database = tmp_path / "stream.db"
    program = tmp_path / "serve_recorder.py"
    program.write_text(PROGRAM)
    # The child imports the same petrock_trio as this test.
    package_root = str(Path(pt.__file__).parent.parent)
    paths = [package_root, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    appended: list[pt.Message] = []
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    async with pt.open_log(str(database), commands=[Job, Handled]) as log:
        appended += await log.append(*(Job(i) for i in range(10)))
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(program), str(database)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            with trio.fail_after(8):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all, proc.stdout, stdout)
                    nursery.start_soon(read_all, proc.stderr, stderr)
                    # Feed faster than the program handles, until it is well under way.
                    while handled_so_far(database) < 30:
                        appended += await log.append(*(Job(len(appended) + i) for i in range(5)))
                        await trio.sleep(0.01)
                    proc.send_signal(signal.SIGTERM)
                    appended += await log.append(Job(len(appended)))  # during the shutdown
                    returncode = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(5):
                    await proc.wait()
    assert returncode == 0, b"".join(stderr).decode()
    handled = json.loads(b"".join(stdout).decode().splitlines()[-1])

    async with pt.open_log(str(database), commands=[Job, Handled]) as log:
        messages = await log.read_after(0, limit=1_000_000)
        saved = (await log.store.positions())["recorder"]
    jobs = [m.id for m in messages if m.name == "sigterm/job"]
    recorded = [m.command.message_id for m in messages if m.name == "sigterm/handled"]
    assert jobs == [m.id for m in appended]  # every appended command is in the log
    assert handled == recorded  # what the worker did is what it committed
    assert recorded == [j for j in jobs if j <= saved]  # each up to the position, once
    assert recorded[-1] == max(j for j in jobs if j <= saved)  # the position: the last one
    assert recorded[-1] < jobs[-1]  # stopped mid-stream, with work left for the next start
