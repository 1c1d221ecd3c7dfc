"""Every log event of a worker says which worker, and which work, it is about.

The events are found in the package's source (every call whose first argument is a
``"petrock.…"`` literal), so that a new one cannot go unclassified: each is either a
worker's, with a scenario here that makes the engine emit it and the fields it must
carry, or not a worker's, with the reason.
"""

from __future__ import annotations

import ast
import functools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import petrock_trio as pt
from petrock_trio.stores import open_store
from petrock_trio.testing import FaultyStore, memory_database, serving, wait_until

Logs = list[MutableMapping[str, Any]]

PACKAGE: Final = Path(pt.__file__).parent

# What a line about one message carries; periodic work has no message.
MESSAGE: Final = frozenset({"worker_name", "command_type", "message_id", "execution_time"})
PERIODIC: Final = frozenset({"worker_name", "command_type", "execution_time", "run"})
FAILURE: Final = frozenset({"error_details", "exc_info"})

WORKER_EVENTS: Final[dict[str, frozenset[str]]] = {
    "petrock.handler.complete": MESSAGE | {"attempt", "emitted"},
    "petrock.handler.failed": MESSAGE | FAILURE | {"attempt"},
    "petrock.handler.timeout": MESSAGE | FAILURE | {"attempt"},
    "petrock.retry_scheduled": MESSAGE | {"attempt", "delay", "error_details"},
    "petrock.dead_lettered": MESSAGE | FAILURE | {"attempts"},
    "petrock.replay.failed": MESSAGE | FAILURE,
    "petrock.periodic.complete": PERIODIC | {"emitted"},
    "petrock.periodic.failed": PERIODIC | FAILURE,
    "petrock.periodic.timeout": PERIODIC | FAILURE,
    "petrock.periodic.skipped": frozenset({"worker_name", "command_type", "reason"}),
    "petrock.worker_crashed": frozenset({"worker_name", "restart_in"}) | FAILURE,
    "petrock.retry_state_not_saved": (
        frozenset({"worker_name", "command_type", "message_id"}) | FAILURE
    ),
    "petrock.dead_letter_not_saved": (
        frozenset({"worker_name", "command_type", "message_id", "retry_in"}) | FAILURE
    ),
    "petrock.legacy_work_failed": PERIODIC | FAILURE | {"timed_out"},
    "petrock.worker_stop_failed": frozenset({"worker_name"}) | FAILURE,
    "petrock.circuit_opened": MESSAGE | FAILURE | {"service", "reset_timeout"},
    "petrock.circuit_closed": frozenset({"worker_name", "command_type", "message_id", "service"}),
    "petrock.hook_failed": frozenset({"worker_name", "command_type", "message_id", "hook"}),
    "petrock.loop_blocked": frozenset({"worker_name", "command_type", "message_id", "stack"}),
    "petrock.takeover_failed": frozenset({"worker_name"}) | FAILURE,
    "petrock.worker_standby": frozenset({"worker_name"}),
    "petrock.worker_paused": frozenset({"worker_name"}),
    "petrock.worker_resumed": frozenset({"worker_name"}),
    "petrock.position_reset": frozenset({"worker_name", "position"}),
    "petrock.snapshot_taken": frozenset({"worker_name", "snapshot", "position"}),
    "petrock.snapshot_loaded": frozenset({"worker_name", "snapshot", "position"}),
    "petrock.snapshot_ignored": frozenset({"worker_name", "snapshot", "position", "reason"}),
}

NOT_WORKER_EVENTS: Final[dict[str, str]] = {
    "petrock.http.disconnected": "the HTTP server's",
    "petrock.http.exposed": "the HTTP server's",
    "petrock.http.insecure": "the HTTP server's",
    "petrock.leases_taken": "the process's leases: several workers at once (`workers`)",
    "petrock.leases_lost": "the process's leases: several workers at once (`workers`)",
    "petrock.leases_expired": "the process's leases: several workers at once (`workers`)",
    "petrock.leases_handed_off": "the process's leases: several workers at once (`workers`)",
    "petrock.lease_renewal_failed": "one round for every lease of the process",
    "petrock.lease_release_failed": "every lease of the process, at shutdown",
    "petrock.position_flush_failed": "one transaction for the positions of many workers",
    "petrock.store_read_failed": "the log pump, shared by every worker",
    "petrock.apply_failed": "the projection, not a worker",
    "petrock.loop_watch_failed": "the watchdog itself",
    "petrock.serving": "the app's",
    "petrock.stopping": "the app's",
    "petrock.stopped": "the app's",
    "petrock.stopped_during_startup": "the app's",
    "petrock.signal": "the app's",
    "petrock.store_gone": "the store's",
    "petrock.sqlite_watch_failed": "the store's",
    "petrock.postgres_watch_failed": "the store's",
    "petrock.postgres_abort_failed": "the store's",
    "petrock.controls_read_failed": "one read of every worker's controls",
    # Restarting a worker's runs after a reset failed: the store failed at that moment,
    # which only a store that fails on cue reaches (tests/test_operator_verbs.py).
    "petrock.restart_failed": "a restart after a reset, retried until the store answers",
    # Snapshot writes that failed (the store failed): logged with worker_name, and
    # covered by tests/test_snapshots.py's faulty stores.
    "petrock.snapshot_failed": "a snapshot write the store refused (tests/test_snapshots.py)",
    "petrock.snapshot_not_saved": "a snapshot write the store refused (tests/test_snapshots.py)",
}


def emitted_events() -> dict[str, set[str]]:
    """Every ``petrock.…`` event name passed first to a call in the package, by module."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue  # the test kit's own lines are not the engine's
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            for inner in ast.walk(node.args[0]):  # a conditional name gives both
                if (
                    isinstance(inner, ast.Constant)
                    and isinstance(inner.value, str)
                    and inner.value.startswith("petrock.")
                ):
                    found.setdefault(inner.value, set()).add(path.name)
    return found


def test_every_event_is_classified() -> None:
    emitted = emitted_events()
    assert emitted, "no events found: the scan is broken"
    unclassified = sorted(set(emitted) - set(WORKER_EVENTS) - set(NOT_WORKER_EVENTS))
    assert not unclassified, (
        f"events {unclassified} (in {[sorted(emitted[e]) for e in unclassified]}) are not "
        "classified: add each to WORKER_EVENTS with a scenario, or NOT_WORKER_EVENTS"
    )
    gone = sorted((set(WORKER_EVENTS) | set(NOT_WORKER_EVENTS)) - set(emitted))
    assert not gone, f"events {gone} are no longer emitted anywhere"
    assert not set(WORKER_EVENTS) & set(NOT_WORKER_EVENTS)


def failures_without_exception() -> list[str]:
    """Log calls that report an error (``error_details=``) without handing structlog the
    exception itself (``exc_info=``, or ``.exception``): JSON logs would get no traceback."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg for k in node.keywords}
            if "error_details" not in keywords or "exc_info" in keywords:
                continue
            if node.func.attr == "exception":
                continue
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            name = name if isinstance(name, str) else "?"
            missing.append(f"{path.name}:{node.lineno} {name}")
    return missing


def test_every_failure_logged_carries_its_exception() -> None:
    assert failures_without_exception() == []


# --- scenarios: each makes the engine emit some events, and returns the lines ------------


@pt.command("fields/job")
@attrs.frozen
class Job:
    n: int = 0


def one_worker(
    handler: Callable[..., Awaitable[None]] | None = None,
    *,
    database: str = ":memory:",
    store: pt.Store | None = None,
    **worker_kw: Any,
) -> tuple[pt.App, pt.PatternWorker[None]]:
    app_kw = worker_kw.pop("app_kw", {})
    app = pt.App(database=database, store=store, clock=pt.TrioWallClock(), **app_kw)
    app.register_command(Job)
    worker_kw.setdefault("health", pt.HealthThresholds(unhealthy_errors_per_minute=1e9))
    worker: pt.PatternWorker[None] = pt.PatternWorker("w", **worker_kw)
    if handler is not None:
        worker.on_command(Job, handler)
    app.register_worker(worker)
    return app, worker


async def run_jobs(app: pt.App, count: int = 1, *, then: float = 0.0) -> Logs:
    with capture_logs() as logs:
        async with serving(app):
            for n in range(count):
                await app.execute(Job(n))
            await app.caught_up()
            await trio.sleep(then)
    return logs


async def handled() -> Logs:
    async def ok(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        await trio.sleep(0.25)

    return await run_jobs(one_worker(ok)[0])


async def failed() -> Logs:
    async def boom(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        await trio.sleep(0.25)
        raise RuntimeError("boom")

    return await run_jobs(one_worker(boom, retry=pt.Backoff(max_attempts=1))[0])


async def timed_out() -> Logs:
    async def slow(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        await trio.sleep(10)

    app, _ = one_worker(slow, handler_timeout=1.0, retry=pt.Backoff(max_attempts=1))
    return await run_jobs(app)


async def retried() -> Logs:
    tries: list[int] = []

    async def again(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        tries.append(ctx.attempt)
        if len(tries) == 1:
            raise pt.Retry(delay=2.0)

    return await run_jobs(one_worker(again)[0])


async def replay_failed() -> Logs:
    async def replays_badly(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        await trio.sleep(0.25)
        if ctx.is_replay:
            raise RuntimeError("cannot replay")

    with memory_database() as database:
        await run_jobs(one_worker(replays_badly, database=database)[0])  # handled live
        app, _ = one_worker(replays_badly, database=database)
        with capture_logs() as logs:
            async with serving(app):  # and replayed here
                pass
    return logs


async def periodic(
    work: Callable[..., Awaitable[None]],
    *,
    timeout: float | None = None,
    services: tuple[pt.ExternalService, ...] = (),
) -> Logs:
    app = pt.App(clock=pt.TrioWallClock())
    worker: pt.PatternWorker[None] = pt.PatternWorker(
        "w", services=services, health=pt.HealthThresholds(unhealthy_errors_per_minute=1e9)
    )
    worker.set_periodic_work(work, 5.0, timeout=timeout)
    app.register_worker(worker)
    with capture_logs() as logs:
        async with serving(app):
            await trio.sleep(1.0)
    return logs


async def periodic_ok() -> Logs:
    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        await trio.sleep(0.25)

    return await periodic(tick)


async def periodic_failed() -> Logs:
    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        await trio.sleep(0.25)
        raise RuntimeError("tick failed")

    return await periodic(tick)


async def periodic_timed_out() -> Logs:
    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        await trio.sleep(10)

    return await periodic(tick, timeout=0.5)


async def periodic_skipped() -> Logs:
    service = pt.ExternalService("mail", failure_threshold=1, reset_timeout=60)

    async def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await service.call(fail)

    async def tick(ctx: pt.PeriodicContext, state: None) -> None:
        pass

    return await periodic(tick, services=(service,))


async def crashed(monkeypatch: pytest.MonkeyPatch) -> Logs:
    from petrock_trio._run import WorkerRun  # noqa: PLC0415 - the engine's own loop

    original = WorkerRun._handle_page
    crashes: list[int] = []

    async def buggy(self: Any, *args: Any) -> Any:
        if not crashes:
            crashes.append(1)
            raise ZeroDivisionError("engine bug")
        return await original(self, *args)

    monkeypatch.setattr(WorkerRun, "_handle_page", buggy)

    async def ok(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        pass

    return await run_jobs(one_worker(ok)[0])


def faulty(**fail: Any) -> FaultyStore:
    store = FaultyStore(open_store(":memory:"))
    store.fail_commits(**fail)
    return store


async def retry_state_not_saved() -> Logs:
    async def boom(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        raise RuntimeError("boom")

    store = faulty(when=lambda commits: any(c.retries for c in commits))
    app, _ = one_worker(boom, store=store, retry=pt.Backoff(initial=1.0, max_attempts=2))
    return await run_jobs(app)


async def dead_letter_not_saved() -> Logs:
    async def boom(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        raise RuntimeError("boom")

    store = faulty(when=lambda commits: any(c.dead_letters for c in commits))
    app, _ = one_worker(boom, store=store, retry=pt.Backoff(max_attempts=1))
    return await run_jobs(app)


class Legacy:
    """An old-style worker whose work() fails (and whose start() can)."""

    def __init__(self, *, start_fails: bool = False) -> None:
        self.start_fails = start_fails

    def info(self) -> pt.WorkerInfo:
        return pt.WorkerInfo("old")

    async def start(self, app: pt.App) -> None:
        if self.start_fails:
            raise RuntimeError("cannot start")

    async def replay(self) -> None:
        pass

    async def work(self) -> None:
        await trio.sleep(0.25)
        raise RuntimeError("work failed")

    async def stop(self) -> None:
        raise RuntimeError("stop failed")


async def legacy(*, start_fails: bool = False) -> Logs:
    app = pt.App(clock=pt.TrioWallClock())
    app.register_worker(Legacy(start_fails=start_fails), tick=1.0)
    with capture_logs() as logs:
        async with serving(app):
            await trio.sleep(1.5)
    return logs


async def legacy_failed() -> Logs:
    return await legacy()


async def legacy_crashed() -> Logs:
    return await legacy(start_fails=True)


async def circuit() -> Logs:
    """A handler's call opens the circuit; its probe, once the circuit is half-open,
    closes it."""
    service = pt.ExternalService("mail", failure_threshold=1, reset_timeout=10)
    calls: list[int] = []

    async def send() -> None:
        await trio.sleep(0.25)
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")

    async def notify(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        await service.call(send)

    app, _ = one_worker(notify, services=[service])
    return await run_jobs(app, then=15.0)


async def hook_failed() -> Logs:
    def broken_hook(event: pt.Event, /) -> None:
        if not isinstance(event, pt.HandlerFailed):
            return
        raise RuntimeError("hook bug")

    async def boom(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        raise RuntimeError("boom")

    app, _ = one_worker(
        boom, retry=pt.Backoff(max_attempts=1), app_kw={"hooks": [pt.StructlogHook(), broken_hook]}
    )
    return await run_jobs(app)


async def loop_blocked() -> Logs:
    """Real time: the watchdog measures the loop's real stalls."""

    async def blocks(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        time.sleep(0.6)  # noqa: ASYNC251 - the defect the watchdog reports

    app, _ = one_worker(blocks)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(pt.serve, app, handle_signals=False, loop_block_threshold=0.15)
            )
            await app.execute(Job())
            await app.caught_up()
            await wait_until(
                lambda: any(line["event"] == "petrock.loop_blocked" for line in logs), timeout=5
            )
            app.stop()
    return logs


class FailingReload(FaultyStore):
    """Fails the positions read of a takeover when asked to."""

    fail_positions = 0

    async def positions(self) -> dict[str, int]:
        if self.fail_positions:
            self.fail_positions -= 1
            raise pt.StoreError("injected failure at the takeover")
        return await super().positions()


async def leases() -> Logs:
    """Another process takes the worker over (standby), then lets it go; taking it back,
    the first read fails (takeover_failed), and the next round succeeds."""
    clock = pt.TrioWallClock()
    with memory_database() as database:
        store = FailingReload(open_store(database))
        app, _ = one_worker(
            None, store=store, app_kw={"leases": True, "lease_ttl": 5.0, "shutdown_grace": 0}
        )
        intruder = open_store(database)
        await intruder.open()
        try:
            with capture_logs() as logs:
                async with serving(app):
                    epoch = app.inspect()["leases"]["held"]["w"]
                    await intruder.release_leases({"w": epoch})
                    taken = await intruder.leases("intruder", {}, ["w"], ttl=60, now=clock())
                    assert taken == {"w": epoch + 1}
                    await trio.sleep(2.0)  # the app's next round finds it lost
                    store.fail_positions = 1
                    await intruder.release_leases(taken)
                    await trio.sleep(4.0)
                    assert "w" in app.inspect()["leases"]["held"]
        finally:
            await intruder.aclose()
    return logs


async def operated() -> Logs:
    """An operator pauses the worker, resets its position and resumes it."""

    async def job(ctx: pt.HandlerContext, cmd: Job, state: None) -> None:
        pass

    app, _ = one_worker(job)
    with capture_logs() as logs:
        async with serving(app):
            await app.execute(Job(1))
            await app.caught_up()
            await app.pause_worker("w", wait=True)
            await app.reset_position("w", to=0)
            await app.resume_worker("w")
            await app.caught_up()
            await trio.sleep(1.0)
    return logs


async def snapshotted() -> Logs:
    """A worker saves snapshots; the next start loads one; a new state_version ignores it."""

    async def count(ctx: pt.HandlerContext, cmd: Job, state: dict[str, int]) -> None:
        state["n"] = state.get("n", 0) + 1

    with memory_database() as database, capture_logs() as logs:
        for version, jobs in (("1", 3), ("1", 1), ("2", 0)):
            app, _ = one_worker(
                count, database=database, state={}, snapshot_every=1, state_version=version
            )
            async with serving(app):
                for n in range(jobs):
                    await app.execute(Job(n))
                await app.caught_up()
    return logs


SCENARIOS: Final[dict[str, Callable[..., Awaitable[Logs]]]] = {
    "petrock.handler.complete": handled,
    "petrock.handler.failed": failed,
    "petrock.dead_lettered": failed,
    "petrock.handler.timeout": timed_out,
    "petrock.retry_scheduled": retried,
    "petrock.replay.failed": replay_failed,
    "petrock.periodic.complete": periodic_ok,
    "petrock.periodic.failed": periodic_failed,
    "petrock.periodic.timeout": periodic_timed_out,
    "petrock.periodic.skipped": periodic_skipped,
    "petrock.worker_crashed": crashed,
    "petrock.retry_state_not_saved": retry_state_not_saved,
    "petrock.dead_letter_not_saved": dead_letter_not_saved,
    "petrock.legacy_work_failed": legacy_failed,
    "petrock.worker_stop_failed": legacy_failed,
    "petrock.circuit_opened": circuit,
    "petrock.circuit_closed": circuit,
    "petrock.hook_failed": hook_failed,
    "petrock.loop_blocked": loop_blocked,
    "petrock.takeover_failed": leases,
    "petrock.worker_standby": leases,
    "petrock.worker_paused": operated,
    "petrock.worker_resumed": operated,
    "petrock.position_reset": operated,
    "petrock.snapshot_taken": snapshotted,
    "petrock.snapshot_loaded": snapshotted,
    "petrock.snapshot_ignored": snapshotted,
}

# What the fields hold, where the scenario decides it.
EXPECTED: Final[dict[str, dict[str, Any]]] = {
    "petrock.handler.complete": {"command_type": "fields/job", "execution_time": 250.0},
    "petrock.handler.failed": {"command_type": "fields/job", "execution_time": 250.0},
    "petrock.dead_lettered": {"command_type": "fields/job", "execution_time": 250.0},
    "petrock.handler.timeout": {"execution_time": 1000.0},
    "petrock.replay.failed": {"execution_time": 250.0},
    "petrock.periodic.complete": {"command_type": "periodic", "execution_time": 250.0},
    "petrock.periodic.failed": {"command_type": "periodic", "execution_time": 250.0},
    "petrock.periodic.timeout": {"command_type": "periodic", "execution_time": 500.0},
    "petrock.periodic.skipped": {"command_type": "periodic"},
    "petrock.legacy_work_failed": {"command_type": "periodic", "execution_time": 250.0},
    "petrock.circuit_opened": {"service": "mail", "execution_time": 250.0},
    "petrock.circuit_closed": {"service": "mail"},
}


def test_every_worker_event_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(WORKER_EVENTS)


def worker_names(event: str) -> str:
    return "old" if event in {"petrock.legacy_work_failed", "petrock.worker_stop_failed"} else "w"


@pytest.mark.parametrize("event", sorted(set(SCENARIOS) - {"petrock.loop_blocked"}))
async def test_fields(
    event: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = SCENARIOS[event]
    logs = await (scenario(monkeypatch) if scenario is crashed else scenario())
    check(event, logs)


async def test_fields_of_a_blocked_loop() -> None:
    check("petrock.loop_blocked", await loop_blocked())


async def test_a_legacy_worker_that_cannot_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    (line,) = [e for e in await legacy_crashed() if e["event"] == "petrock.worker_crashed"]
    assert line["worker_name"] == "old"
    assert line["exc_info"] is True  # logged from its except block
    assert "cannot start" in line["error_details"]


async def test_a_service_called_outside_any_worker_names_none() -> None:
    service = pt.ExternalService("mail", failure_threshold=1)

    async def fail() -> None:
        raise ConnectionError("down")

    with capture_logs() as logs, pytest.raises(ConnectionError):
        await service.call(fail)
    (line,) = logs
    assert line["event"] == "petrock.circuit_opened"
    assert "worker_name" not in line
    assert isinstance(line["exc_info"], ConnectionError)


def check(event: str, logs: Logs) -> None:
    lines = [line for line in logs if line["event"] == event]
    assert lines, f"{event} was not emitted; saw {[line['event'] for line in logs]}"
    for line in lines:
        missing = WORKER_EVENTS[event] - line.keys()
        assert not missing, f"{event} lacks {sorted(missing)}: {line}"
        assert line["worker_name"] == worker_names(event)
        if "message_id" in WORKER_EVENTS[event]:
            assert isinstance(line["message_id"], int)
            assert line["message_id"] >= 1
        if "exc_info" in WORKER_EVENTS[event]:
            assert isinstance(line["exc_info"], BaseException)
            assert repr(line["exc_info"]) == line["error_details"]
        for field, value in EXPECTED.get(event, {}).items():
            assert line[field] == value, (event, field, line)
