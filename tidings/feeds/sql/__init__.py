"""The feed room's named queries (see tidings.eventstore.sql)."""

from __future__ import annotations

from tidings.eventstore.sql import QueryFiles

query = QueryFiles(__name__)
