"""Workers of the items feature."""

from .summary_worker import (
    MAX_AGE,
    PARTITIONS,
    REQUEST_TIMEOUT,
    SummaryState,
    new_summary_worker,
)

__all__ = ["MAX_AGE", "PARTITIONS", "REQUEST_TIMEOUT", "SummaryState", "new_summary_worker"]
