"""A fake summariser for the items tests: the testing kit's FakeService, plus a record
of every call's span, to check what was in flight at once."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from petrock_trio.testing import FakeService


@attrs.define
class Span:
    """One call: its request id, and when it began and ended (Trio time; ``end`` is
    ``None`` while it runs). A call cut off (cancelled) ends there: it cannot land."""

    request_id: str
    start: float
    end: float | None = None


class Summarizer:
    """Summarises through a :class:`FakeService` and records each call's span."""

    def __init__(self, fake: FakeService | None = None, *, latency: float = 0.0) -> None:
        self.fake = fake or FakeService(lambda text, request_id: f"<{text}>", latency=latency)
        self.spans: list[Span] = []
        self.peak = 0  # the most calls in flight at once

    async def summarize(self, text: str, request_id: str) -> str:
        span = Span(request_id, trio.current_time())
        self.spans.append(span)
        self.peak = max(self.peak, self.in_flight())
        try:
            result: str = await self.fake(text, request_id)
        finally:
            span.end = trio.current_time()
        return result

    def in_flight(self) -> int:
        return sum(1 for s in self.spans if s.end is None)

    def overlaps(self, key: Callable[[str], str] = lambda request_id: request_id) -> list[str]:
        """The keys (of request ids; by default the request ids themselves) that had a
        call begin while an earlier call for the same key was still in flight."""
        found: list[str] = []
        open_until: dict[str, float] = {}
        for span in sorted(self.spans, key=lambda s: s.start):
            k = key(span.request_id)
            if k in open_until and open_until[k] > span.start:
                found.append(k)
            end = float("inf") if span.end is None else span.end
            open_until[k] = max(open_until.get(k, end), end)
        return found
