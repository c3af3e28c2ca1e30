"""SQL of the audit: the walk over the log, the cross-aggregate checks, the comparisons."""

from __future__ import annotations

from tidings.eventstore.sql import QueryFiles

query = QueryFiles(__name__)
