"""Workers of the items feature."""

from .summary_worker import MAX_AGE, PendingSummary, SummaryState, new_summary_worker

__all__ = ["MAX_AGE", "PendingSummary", "SummaryState", "new_summary_worker"]
