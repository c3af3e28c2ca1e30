"""SQL of the views for people (the notifications list)."""

from __future__ import annotations

from tidings.eventstore.sql import QueryFiles

query = QueryFiles(__name__)
