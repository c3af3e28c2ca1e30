"""Notification states, events and policies for the pure lifecycle tests (no database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tidings.notification.backoff import Backoff
from tidings.notification.lifecycle import NotificationState, Policy, Status
from tidings.notification.requests import NotifyUser, Request, SourceRef

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def request(user_id: str = "user-ada", **fields: Any) -> Request:
    data: dict[str, Any] = {
        "user_id": user_id,
        "resource_owner": "org-acme",
        "source": SourceRef(
            aggregate_type="user",
            aggregate_id=user_id,
            sequence=1,
            event_type="user.human.password.code.added",
            position=1,
            created_at=T0,
        ),
        "message_type": "PasswordReset",
        "channel": "email",
        "sent_event_type": "user.human.password.code.sent",
        "code_expiry": timedelta(minutes=10),
    }
    data.update(fields)
    return Request(**data)


def user(user_id: str = "user-ada", **fields: Any) -> NotifyUser:
    data: dict[str, Any] = {
        "instance_id": "acme",
        "user_id": user_id,
        "verified_email": f"{user_id}@example.com",
    }
    data.update(fields)
    return NotifyUser(**data)


def requested_state(**fields: Any) -> NotificationState:
    data: dict[str, Any] = {
        "status": Status.REQUESTED,
        "sequence": 1,
        "requested_at": T0,
        "due_at": T0,
        "request": request(),
    }
    data.update(fields)
    return NotificationState(**data)


def lowest(low: float, high: float) -> float:
    return low


def policy(
    *,
    max_attempts: int = 3,
    max_ttl: timedelta = timedelta(minutes=5),
    min_delay: timedelta = timedelta(seconds=1),
    max_delay: timedelta = timedelta(seconds=20),
    factor: float = 2.0,
    uniform: Any = lowest,
) -> Policy:
    return Policy(
        max_attempts=max_attempts,
        max_ttl=max_ttl,
        backoff=Backoff(min_delay=min_delay, max_delay=max_delay, factor=factor, uniform=uniform),
    )


@dataclass(frozen=True)
class Event:
    """A logged event as evolve reads it."""

    event_type: str
    sequence: int
    payload: dict[str, Any] | None
    created_at: datetime = T0
