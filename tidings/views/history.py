"""A notification's timeline, from the log: requested, each retry, sent or canceled."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tidings.config.durations import format_duration
from tidings.eventstore import EventQuery, EventStore, StoredEvent
from tidings.notification.events import MARKS, Canceled, RetryRequested, Sent, parse_payload
from tidings.notification.requests import NOTIFICATION_AGGREGATE, NotificationRequested


@dataclass(frozen=True)
class Step:
    at: datetime
    event_type: str
    position: int
    summary: str
    payload: dict[str, Any]


async def history(store: EventStore, notification_id: str) -> list[Step]:
    """Every event of the notification (in any instance), described, in log order."""
    events = await store.query(
        EventQuery(aggregate_types=(NOTIFICATION_AGGREGATE,), aggregate_ids=(notification_id,))
    )
    steps = [Step(e.created_at, e.event_type, e.position, describe(e), e.payload) for e in events]
    if events:
        steps.extend(await _source_steps(store, events[0], notification_id))
        steps.sort(key=lambda step: step.position)
    return steps


def describe(event: StoredEvent) -> str:
    """One line for a notification event; codes and secrets are not in payloads."""
    if event.event_type in MARKS:
        change = event.event_type.removeprefix("notification.")
        return f"{change} in the feed of user {event.payload.get('user_id', '?')}"
    try:
        payload = parse_payload(event.event_type, event.payload)
    except (KeyError, ValidationError):
        return f"{event.event_type} (unreadable payload)"
    if isinstance(payload, NotificationRequested):
        r = payload.request
        whom = f"user {r.user_id}" if r.user_id else "an inline recipient"
        if r.source is None:
            key = payload.idempotency.key if payload.idempotency else "?"
            by = payload.idempotency.requested_by if payload.idempotency else ""
            group = payload.idempotency.group if payload.idempotency else ()
            others = [nid for nid in group if nid != event.aggregate_id]
            together = f", requested together with {', '.join(others)}" if others else ""
            return (
                f"requested {r.message_type} via {r.channel} for {whom} "
                f"(directly, idempotency key {key}{f', by key {by}' if by else ''}{together})"
            )
        return (
            f"requested {r.message_type} via {r.channel} for {whom} "
            f"(from {r.source.event_type} on {r.source.aggregate_type}/{r.source.aggregate_id} "
            f"seq {r.source.sequence})"
        )
    if isinstance(payload, RetryRequested):
        return (
            f"attempt {payload.attempt} failed: {payload.error}; retry after "
            f"{format_duration(payload.backoff)}, due {payload.due_at.isoformat(' ', 'seconds')}"
        )
    if isinstance(payload, Sent):
        item = f": {payload.inapp.title!r}" if payload.inapp else ""
        return (
            f"sent on attempt {payload.attempt} via {payload.channel} "
            f"(provider id {payload.provider_message_id}){item}"
        )
    if isinstance(payload, Canceled):
        return f"canceled ({payload.reason}) after {payload.attempt} attempt(s): {payload.error}"
    return event.event_type


async def _source_steps(
    store: EventStore, requested: StoredEvent, notification_id: str
) -> list[Step]:
    try:
        source = NotificationRequested.model_validate(requested.payload).request.source
    except ValidationError:
        return []
    if source is None:  # a direct request has no source aggregate
        return []
    events = await store.query(
        EventQuery(
            instance_ids=(requested.instance_id,),
            aggregate_types=(source.aggregate_type,),
            aggregate_ids=(source.aggregate_id,),
        )
    )
    steps = []
    for event in events:
        if event.sequence == source.sequence:
            summary = (
                f"source event {event.event_type} on {event.aggregate_type}/{event.aggregate_id}"
            )
        elif event.payload.get("notification_id") == notification_id:
            summary = f"the source aggregate recorded {event.event_type}"
        else:
            continue
        steps.append(Step(event.created_at, event.event_type, event.position, summary, {}))
    return steps
