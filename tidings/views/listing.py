"""Finding notifications for operators: filters, state from the log, next due time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tidings.eventstore.errors import translated_errors
from tidings.notification.lifecycle import EVENT_OF_STATUS, QUEUE_KIND, STATUS_AFTER, Status
from tidings.views.sql import query

# The lifecycle's statuses as the list names them: a requested notification
# not attempted yet (or whose attempt is in flight) is "pending".
_LABEL: dict[Status, str] = {status: status.value for status in Status} | {
    Status.REQUESTED: "pending"
}
STATES: tuple[str, ...] = tuple(_LABEL.values())
State = str  # one of STATES
_STATUS_OF = {label: status for status, label in _LABEL.items()}
# A notification's state is the type of its last event in the log.
_LAST_EVENT = {label: EVENT_OF_STATUS[status] for label, status in _STATUS_OF.items()}
_STATE_OF = {event_type: _LABEL[status] for event_type, status in STATUS_AFTER.items()}
_QUEUE_KIND = {_LABEL[status]: kind for status, kind in QUEUE_KIND.items()}


@dataclass(frozen=True, kw_only=True)
class NotificationFilter:
    """Which notifications to list; empty means "any". Times bound the request time."""

    instance_ids: tuple[str, ...] = ()
    user_id: str | None = None
    states: tuple[State, ...] = ()
    message_types: tuple[str, ...] = ()
    requested_since: datetime | None = None  # inclusive
    requested_until: datetime | None = None  # exclusive
    limit: int = 50

    def __post_init__(self) -> None:
        unknown = sorted(set(self.states) - set(STATES))
        if unknown:
            raise ValueError(f"unknown states {unknown}; allowed: {', '.join(STATES)}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, not {self.limit}")


@dataclass(frozen=True, kw_only=True)
class NotificationRow:
    """One notification as an operator sees it. No code, ciphertext or message args."""

    instance_id: str
    notification_id: str
    user_id: str | None
    message_type: str | None
    channel: str | None  # what the request asked for: email or sms
    state: str  # one of STATES; the event type itself if the log ends in anything else
    cancel_reason: str | None
    attempts: int | None  # attempts made (failed ones, plus the successful one when sent)
    last_error: str | None  # of the last failed attempt (also when sent after retries)
    next_due_at: datetime | None  # open ones; a pending request is due from its request time
    leased_until: datetime | None  # a worker holds it right now, until then
    lease_owner: str | None
    requested_at: datetime
    settled_at: datetime | None
    sent_via: str | None  # the channel implementation that delivered it (webhook, smtp, ...)
    provider_message_id: str | None


@dataclass(frozen=True)
class Listing:
    rows: list[NotificationRow]
    more: bool  # more notifications match than the limit allowed


async def list_notifications(
    pool: AsyncConnectionPool[Any], filters: NotificationFilter, *, now: datetime
) -> Listing:
    """The newest notifications (by request time) that match, in one statement.

    `now` decides which leases still hold.
    """
    params = _params(filters, now)
    with translated_errors():
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            # Never a prepared statement: the query relies on being planned with
            # its values, so that unused filters and ways in fold away.
            await cur.execute(query("list_notifications"), params, prepare=False)
            found = await cur.fetchall()
    rows = [_row(found_row) for found_row in found[: filters.limit]]
    return Listing(rows=rows, more=len(found) > filters.limit)


def _params(filters: NotificationFilter, now: datetime) -> dict[str, Any]:
    states = filters.states
    open_kinds = [_QUEUE_KIND[s] for s in STATES if s in states and s in _QUEUE_KIND]
    settled = [_LAST_EVENT[s] for s in STATES if s in states and s not in _QUEUE_KIND]
    return {
        "instances": list(filters.instance_ids) or None,
        "user_id": filters.user_id,
        "message_types": list(filters.message_types) or None,
        "since": filters.requested_since,
        "until": filters.requested_until,
        "last_types": [_LAST_EVENT[s] for s in STATES if s in states] or None,
        "open_kinds": open_kinds or None,
        "settled_types": settled or None,
        "limit": filters.limit + 1,  # one more than shown tells that more match
        "now": now,
    }


def _row(found: dict[str, Any]) -> NotificationRow:
    last_type = found.pop("last_type")
    return NotificationRow(state=_STATE_OF.get(last_type, last_type), **found)
