"""SQL of the read models and the projector."""

from __future__ import annotations

from tidings.eventstore.sql import QueryFiles

query = QueryFiles(__name__)
