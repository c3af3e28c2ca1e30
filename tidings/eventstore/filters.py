"""Compose the WHERE clause of an EventQuery from fixed SQL fragments.

Only these fragments are ever joined into the statement; every value is a
bound parameter, so no caller input reaches the SQL text.
"""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import sql

from tidings.eventstore.models import EventQuery
from tidings.eventstore.sql import query


def like_pattern(event_type: str) -> str:
    """`notification.*` -> `notification.%`, with LIKE's own wildcards escaped."""
    escaped = event_type.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def compose_select(q: EventQuery, *, for_update: bool = False) -> tuple[sql.Composed, list[Any]]:
    """The `select_events` statement for `q` and its parameters."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []

    def add(fragment: LiteralString, *values: Any) -> None:
        clauses.append(sql.SQL(fragment))
        params.extend(values)

    if q.instance_ids is not None:
        add("e.instance_id = ANY(%s)", list(q.instance_ids))
    if q.aggregate_types is not None:
        add("e.aggregate_type = ANY(%s)", list(q.aggregate_types))
    if q.aggregate_ids is not None:
        add("e.aggregate_id = ANY(%s)", list(q.aggregate_ids))
    if q.event_types is not None:
        exact = [t for t in q.event_types if "*" not in t]
        patterns = [like_pattern(t) for t in q.event_types if "*" in t]
        add("(e.event_type = ANY(%s) OR e.event_type LIKE ANY(%s))", exact, patterns)
    if q.created_after is not None:
        add("e.created_at > %s", q.created_after)
    if q.created_before is not None:
        add("e.created_at < %s", q.created_before)
    if q.position_after is not None:
        add("e.position > %s", q.position_after)
    if q.exclude_aggregates_with is not None:
        add(
            "NOT EXISTS (SELECT 1 FROM tidings.events x"
            " WHERE x.instance_id = e.instance_id"
            " AND x.aggregate_type = e.aggregate_type"
            " AND x.aggregate_id = e.aggregate_id"
            " AND x.event_type = ANY(%s))",
            list(q.exclude_aggregates_with),
        )
    filters = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")
    limit = sql.SQL("")
    if q.limit is not None:
        limit = sql.SQL("LIMIT %s")
        params.append(q.limit)
    lock = sql.SQL("FOR UPDATE OF e SKIP LOCKED") if for_update else sql.SQL("")
    statement = query("select_events").format(filters=filters, limit=limit, lock=lock)
    return statement, params
