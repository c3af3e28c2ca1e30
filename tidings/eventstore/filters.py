"""Compose the statement of an EventQuery from fixed SQL fragments.

Only these fragments are ever joined into the statement; every value is a
bound parameter, so no caller input reaches the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

from psycopg import sql

from tidings.eventstore.models import EventQuery
from tidings.eventstore.sql import query


def like_pattern(event_type: str) -> str:
    """`notification.*` -> `notification.%`, with LIKE's own wildcards escaped."""
    escaped = event_type.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


@dataclass(frozen=True, kw_only=True)
class UserTrail:
    """Everything the log holds about one user, for audit.

    The events of aggregates whose id is the user id (the user aggregate), every
    notification requested for the user (all its events), and the source events
    of those notifications on other aggregates (a session's OTP challenge) with
    the source's sent event. See the `select_trail` query.
    """

    user_id: str


@dataclass(frozen=True, kw_only=True)
class NotificationTrail:
    """One notification's events, its source event and the source's sent event."""

    notification_id: str


Trail = UserTrail | NotificationTrail


def compose_select(
    q: EventQuery,
    *,
    trail: Trail | None = None,
    below: int | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement for `q` and its parameters.

    With `trail`, only the events of that user's or notification's trail, the
    filters of `q` applying on top. With `below`, only positions below it (the
    ordered reader's horizon, for following the log).
    """
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {}

    def add(fragment: LiteralString, *values: Any) -> None:
        names = [f"f{len(params) + n}" for n in range(len(values))]
        clauses.append(sql.SQL(fragment).format(*map(sql.Placeholder, names)))
        params.update(zip(names, values, strict=True))

    if q.instance_ids is not None:
        add("e.instance_id = ANY({})", list(q.instance_ids))
    if q.aggregate_types is not None:
        add("e.aggregate_type = ANY({})", list(q.aggregate_types))
    if q.aggregate_ids is not None:
        add("e.aggregate_id = ANY({})", list(q.aggregate_ids))
    if q.event_types is not None:
        exact = [t for t in q.event_types if "*" not in t]
        patterns = [like_pattern(t) for t in q.event_types if "*" in t]
        add("(e.event_type = ANY({}) OR e.event_type LIKE ANY({}))", exact, patterns)
    if q.created_after is not None:
        add("e.created_at > {}", q.created_after)
    if q.created_before is not None:
        add("e.created_at < {}", q.created_before)
    if q.position_after is not None:
        add("e.position > {}", q.position_after)
    if below is not None:
        add("e.position < {}", below)
    filters = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")
    limit: sql.Composable = sql.SQL("")
    if q.limit is not None:
        limit = sql.SQL("LIMIT {}").format(sql.Placeholder("limit"))
        params["limit"] = q.limit
    if trail is None:
        statement = query("select_events").format(filters=filters, limit=limit)
        return statement, params
    # The trail's instances are pushed into its lookups, so the notifications
    # of other instances are not even looked at.
    params["instance_ids"] = list(q.instance_ids) if q.instance_ids is not None else None
    if isinstance(trail, UserTrail):
        params["user_id"] = trail.user_id
        kind = "user"
    else:
        params["notification_id"] = trail.notification_id
        params["user_id"] = None
        kind = "notification"
    statement = query("select_trail").format(
        requests=query(f"trail_{kind}_requests"),
        own=query(f"trail_{kind}_own"),
        filters=filters,
        limit=limit,
    )
    return statement, params
