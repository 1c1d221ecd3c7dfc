"""A dead letter as the app shows it: a message a worker gave up on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from .stores import DeadLetterRecord

__all__ = ["DeadLetter"]


@attrs.frozen
class DeadLetter:
    """A message a worker gave up on; :meth:`App.redrive` hands it to the worker again.

    ``error`` is the last failure's repr and ``traceback`` its formatted traceback
    (``None`` for a dead letter written before tracebacks were kept).
    """

    worker: str
    message_id: int
    command_name: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    traceback: str | None = None

    @classmethod
    def from_record(cls, r: DeadLetterRecord) -> DeadLetter:
        return cls(
            r.worker,
            r.message_id,
            r.command_name,
            r.error,
            r.attempts,
            datetime.fromtimestamp(r.first_failed_at, UTC),
            datetime.fromtimestamp(r.last_failed_at, UTC),
            r.traceback,
        )

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["first_failed_at"] = self.first_failed_at.isoformat()
        data["last_failed_at"] = self.last_failed_at.isoformat()
        return data
