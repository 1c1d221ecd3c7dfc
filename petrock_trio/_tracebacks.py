"""Tracebacks as text, bounded, for the places that keep them (dead letters)."""

from __future__ import annotations

import traceback
from typing import Final

__all__ = ["MAX_TRACEBACK_CHARS", "format_traceback"]

MAX_TRACEBACK_CHARS: Final = 16_384
"""About the most characters of a traceback a dead letter keeps (plus one line saying
what was cut)."""

# The start names the first error of a chain and the end the one that was raised last,
# with its message: both are kept, the middle of a very long one is not.
_HEAD_SHARE: Final = 4


def format_traceback(error: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """``error``'s traceback as Python prints it, its causes and groups included.

    One over ``limit`` characters keeps its start and its end around a line saying how
    much was cut: an error raised in a deep recursion, or a group of many, must not
    make one dead letter megabytes long.
    """
    text = "".join(traceback.format_exception(error))
    if len(text) <= limit:
        return text
    head = limit // _HEAD_SHARE
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n... {cut} characters of the traceback cut ...\n{text[-tail:]}"
