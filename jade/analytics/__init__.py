"""Query analytics (API.md §11): what each search was, kept beside the log, never in it.

``compute`` turns records into buckets, percentiles, patterns, trends and insights (pure);
``store`` keeps the records bounded in memory and on disk. The HTTP side (recording a search,
the ``/analytics`` routes) is ``jade.http.analytics``."""

from jade.analytics.compute import Feedback, QueryRecord
from jade.analytics.store import Analytics

__all__ = ["Analytics", "Feedback", "QueryRecord"]
