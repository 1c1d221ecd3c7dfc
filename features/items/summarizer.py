"""The summarisation service: an HTTP client, and a small local service to run offline.

The client speaks to any service that answers ``POST /summarize`` with
``{"text": ..., "request_id": ...}`` by ``{"summary": ...}``. The local service makes
an extractive summary (the highest-scoring sentences by word frequency, in their
original order) and can be told to fail for a while, to show degradation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Protocol

import attrs
import httpx
import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = [
    "HttpSummarizer",
    "Summarizer",
    "SummarizerError",
    "SummarizerService",
    "extractive_summary",
    "serve_summarizer",
]


class SummarizerError(Exception):
    """The summarisation service answered with an error or not at all."""


class Summarizer(Protocol):
    async def summarize(self, text: str, request_id: str) -> str: ...


@attrs.frozen
class HttpSummarizer:
    """Calls a summarisation service over HTTP (httpx on Trio)."""

    url: str
    timeout: float = 10.0

    async def summarize(self, text: str, request_id: str) -> str:
        try:
            # A client per call: summaries are rare and slow, and nothing is left open
            # when the app stops.
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(
                    self.url,
                    json={"text": text, "request_id": request_id},
                    headers={"Idempotency-Key": request_id},
                )
        except httpx.HTTPError as exc:
            raise SummarizerError(f"{self.url}: {exc!r}") from exc
        if response.status_code != 200:  # noqa: PLR2004
            raise SummarizerError(f"{self.url}: HTTP {response.status_code}")
        try:
            summary = response.json()["summary"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SummarizerError(f"{self.url}: malformed response") from exc
        if not isinstance(summary, str):
            raise SummarizerError(f"{self.url}: summary is not a string")
        return summary


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[\w']+")
_STOP_WORDS = """a an and are as at be but by for from has have in is it its of on or that the
this to was were will with"""
_STOP = frozenset(_STOP_WORDS.split())


def extractive_summary(text: str, max_sentences: int = 2) -> str:
    """The ``max_sentences`` most representative sentences of ``text``, in order."""
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    if len(sentences) <= max_sentences:
        return " ".join(sentences)
    words = [w.lower() for w in _WORD.findall(text)]
    freq = Counter(w for w in words if w not in _STOP)

    def score(sentence: str) -> float:
        tokens = [w.lower() for w in _WORD.findall(sentence)]
        if not tokens:
            return 0.0
        return sum(freq[t] for t in tokens if t not in _STOP) / math.sqrt(len(tokens))

    ranked = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))
    return " ".join(sentences[i] for i in sorted(ranked[:max_sentences]))


@attrs.define
class SummarizerService:
    """The local service. ``failing`` makes it answer 503, to stage an outage."""

    failing: bool = False
    calls: int = 0
    by_request: dict[str, str] = attrs.Factory(dict)

    def app(self) -> Starlette:
        async def summarize(request: Request) -> JSONResponse:
            self.calls += 1
            if self.failing:
                return JSONResponse({"error": "service unavailable"}, status_code=503)
            try:
                body = await request.json()
                text, request_id = body["text"], body["request_id"]
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": "expected text and request_id"}, status_code=400)
            if not isinstance(text, str) or not isinstance(request_id, str):
                return JSONResponse({"error": "text and request_id are strings"}, status_code=400)
            # Idempotent by request id: a retried call gets the same answer.
            summary = self.by_request.setdefault(request_id, extractive_summary(text))
            return JSONResponse({"summary": summary})

        async def health(_: Request) -> JSONResponse:
            return JSONResponse({"status": "failing" if self.failing else "ok"})

        return Starlette(
            routes=[
                Route("/summarize", summarize, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
            ]
        )


async def serve_summarizer(
    service: SummarizerService,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``service`` over HTTP; ``task_status.started(url_of_summarize)``.

    Never returns unless cancelled. Binds loopback by default; port 0 picks a free one.
    """
    from hypercorn.config import Config  # noqa: PLC0415 - only the service needs hypercorn
    from hypercorn.trio import serve  # noqa: PLC0415

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, service.app(), config))  # type: ignore[arg-type]
        task_status.started(binds[0].rstrip("/") + "/summarize")
