"""The event-loop watchdog: a thread that notices when the Trio loop stops running.

Code that blocks the Trio thread (``time.sleep``, a synchronous HTTP call, a long
computation) stops every task at once: workers, the pump, the HTTP server. No task
can notice, since none runs. A daemon thread can: every ``threshold / 2`` seconds of
real time it checks that the loop answers; when the loop has not answered for
``threshold`` seconds, it samples the Trio thread's stack and asks who is running
(``culprit``). When the loop answers again, the block is reported on the Trio thread:
logged as ``petrock.loop_blocked``, then handed to ``on_block``.

How the thread knows that the loop runs: a Trio thread waiting for I/O (inside Trio's
``get_events``) is idle, not blocked, and is left alone, so an idle app is never
woken. Otherwise the thread posts a callback with ``TrioToken.run_sync_soon``, which
the loop runs at its next turn; a callback left waiting ``threshold`` seconds is a
block. Only real time (``time.monotonic``) counts: MockClock's jumps of virtual time
never look like a block.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType

import attrs
import trio

from ._logging import get_logger

__all__ = ["Block", "Culprit", "LoopWatch"]

_log = get_logger("petrock_trio")

THREAD_NAME = "petrock-loopwatch"
_STACK_FRAMES = 8  # innermost frames of the Trio thread kept in a report
_ERROR_FACTOR = 10  # blocks of this many thresholds or more are logged as errors


@attrs.frozen
class Culprit:
    """What was running on the Trio thread when it blocked: a worker's handler or its
    periodic work."""

    worker: str
    command_type: str  # the command's name, or "periodic"
    message_id: int | None
    what: str  # "handler for 'orders/place'", "replay of 'orders/place'", "periodic work"
    partition: int = 0


@attrs.frozen
class Block:
    """The Trio loop did not run for ``blocked_for`` seconds."""

    blocked_for: float
    culprit: Culprit | None
    task: str  # the function of the task that was running, as Trio names tasks
    stack: str  # the innermost frames of the Trio thread, taken during the block

    @property
    def reason(self) -> str:
        where = self.culprit.what if self.culprit is not None else f"task {self.task}"
        return f"blocked the event loop for {self.blocked_for:.1f} s in {where}"


class LoopWatch:
    """Watches the Trio loop it is started from, from a thread of its own."""

    def __init__(
        self,
        threshold: float,
        *,
        culprit: Callable[[], Culprit | None],
        on_block: Callable[[Block], None],
    ) -> None:
        if not threshold > 0:
            raise ValueError("the loop block threshold must be positive")
        self.threshold = threshold
        # Two looks per threshold: each wake-up of an idle app costs CPU (four a second
        # at 1 s measured 0.07% of a core more with 100 idle workers), and a block is
        # still seen within 1.5 thresholds.
        self.interval = threshold / 2
        # Called on the watchdog's thread while the Trio thread is blocked: it must
        # only read.
        self._culprit = culprit
        self._on_block = on_block
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ident = 0
        self._answered: float | None = None  # written by the Trio thread

    def __repr__(self) -> str:
        return f"<LoopWatch threshold={self.threshold}>"

    def start(self) -> None:
        """Start watching the Trio loop this is called from."""
        self._token = trio.lowlevel.current_trio_token()
        self._ident = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; it is gone when this returns (at most a sample later)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # --- the watchdog's thread ---------------------------------------------------------

    def _watch(self) -> None:
        try:
            self._loop()
        except trio.RunFinishedError:
            pass  # the loop ended before stop(): nothing left to watch
        except Exception:  # noqa: BLE001 - the watchdog must never take the process down
            _log.exception("petrock.loop_watch_failed")

    def _loop(self) -> None:
        token = self._token
        assert token is not None
        alive = time.monotonic()  # when the loop was last seen running (or idle)
        posted: float | None = None  # when the question still open was asked
        seen: tuple[Culprit | None, str, str] | None = None  # sampled during the block
        while not self._stopping.wait(self.interval):
            if posted is not None:
                answered = self._answered
                if answered is None:
                    if time.monotonic() - posted >= self.threshold:
                        # Sampled again at every look: the last sample taken before
                        # the loop answered shows what held it at the end.
                        sample = self._sample()
                        if seen is None or self._answered is None:
                            seen = sample
                    continue
                if seen is not None:
                    # The block began after the loop was last seen, and before the
                    # question went unanswered: half-way is off by interval / 2 at most.
                    began = (alive + posted) / 2
                    token.run_sync_soon(self._report, Block(answered - began, *seen))
                    seen = None
                alive = answered
                posted = None
            if self._idle():
                alive = time.monotonic()
                continue
            self._answered = None
            posted = time.monotonic()
            token.run_sync_soon(self._answer)

    def _idle(self) -> bool:
        """Whether the Trio thread waits for I/O: then the loop is not blocked."""
        frame = sys._current_frames().get(self._ident)  # noqa: SLF001 - the documented way
        if frame is None:
            return False
        code = frame.f_code
        return code.co_name == "get_events" and f"{os.sep}trio{os.sep}" in code.co_filename

    def _sample(self) -> tuple[Culprit | None, str, str]:
        """Who blocks the Trio thread, and its stack, taken while it is blocked."""
        frame = sys._current_frames().get(self._ident)  # noqa: SLF001
        try:
            culprit = self._culprit()
        except Exception:  # noqa: BLE001 - the Trio thread may have moved on meanwhile
            culprit = None
        if frame is None:
            return culprit, "unknown", ""
        task, frames = _task_frames(frame)
        stack = traceback.StackSummary.extract(
            (f, f.f_lineno) for f in frames[_STACK_FRAMES - 1 :: -1]
        )
        return culprit, task, "".join(stack.format())

    # --- the Trio thread ---------------------------------------------------------------

    def _answer(self) -> None:
        self._answered = time.monotonic()

    def _report(self, block: Block) -> None:
        try:
            fields = {
                "blocked_for": round(block.blocked_for, 3),
                "threshold": self.threshold,
                "reason": block.reason,
                "task": block.task,
                "stack": block.stack,
            }
            culprit = block.culprit
            if culprit is not None:
                fields["worker_name"] = culprit.worker
                fields["command_type"] = culprit.command_type
                if culprit.message_id is not None:
                    fields["message_id"] = culprit.message_id
            log = (
                _log.error if block.blocked_for >= _ERROR_FACTOR * self.threshold else _log.warning
            )
            log("petrock.loop_blocked", **fields)
            self._on_block(block)
        except Exception:  # noqa: BLE001 - a run_sync_soon callback must not raise
            _log.exception("petrock.loop_watch_failed")


def _task_frames(frame: FrameType) -> tuple[str, list[FrameType]]:
    """The task running in ``frame``'s stack, named as Trio names tasks (the function
    of its outermost coroutine, the one Trio's run loop resumed), and the stack's
    frames up to that coroutine, innermost first."""
    frames: list[FrameType] = []
    current: FrameType | None = frame
    while current is not None and current.f_code.co_name != "unrolled_run":
        frames.append(current)
        current = current.f_back
    if current is None or not frames:
        return "the Trio run loop", frames
    task = frames[-1]
    return f"{task.f_globals.get('__name__', '?')}.{task.f_code.co_qualname}", frames
