"""SQL of the API room."""

from __future__ import annotations

from tidings.eventstore.sql import QueryFiles

query = QueryFiles(__name__)
