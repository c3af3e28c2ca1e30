"""Builders for projection tests: source events and a projector over a test database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from tidings.config import NotificationSettings, ProjectionSettings, Settings
from tidings.eventstore import Database, EventQuery, NewEvent, StoredEvent
from tidings.notification.requests import NotificationRequested, NotifyUser
from tidings.projections import Projection, Projector, default_projections

CODE = {"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "c2VjcmV0"}


def user_added(user_id: str = "user-ada", *, instance_id: str = "acme", **fields: Any) -> NewEvent:
    payload: dict[str, Any] = {
        "username": user_id.removeprefix("user-"),
        "first_name": "Ada",
        "last_name": "Lovelace",
        "display_name": "Ada Lovelace",
        "email": f"{user_id}@example.com",
        "email_verified": True,
        "phone": "+41790000001",
        "phone_verified": True,
        "preferred_language": "en",
    }
    payload.update(fields)
    return NewEvent(
        instance_id=instance_id,
        aggregate_type="user",
        aggregate_id=user_id,
        event_type="user.human.added",
        payload=payload,
        owner=f"org-{instance_id}",
    )


def user_event(
    event_type: str, user_id: str = "user-ada", *, instance_id: str = "acme", **payload: Any
) -> NewEvent:
    return NewEvent(
        instance_id=instance_id,
        aggregate_type="user",
        aggregate_id=user_id,
        event_type=event_type,
        payload=payload,
        owner="org-acme",
    )


def code_event(
    event_type: str, user_id: str = "user-ada", *, instance_id: str = "acme", **payload: Any
) -> NewEvent:
    body: dict[str, Any] = {"code": CODE, "expiry": "10m", "url_template": "https://x/{{.Code}}"}
    body.update(payload)
    return user_event(event_type, user_id, instance_id=instance_id, **body)


def session_event(
    event_type: str, session_id: str = "session-1", *, user_id: str = "user-ada", **payload: Any
) -> NewEvent:
    body: dict[str, Any] = {"user_id": user_id, "code": CODE, "expiry": "5m"}
    body.update(payload)
    return NewEvent(
        instance_id="acme",
        aggregate_type="session",
        aggregate_id=session_id,
        event_type=event_type,
        payload=body,
        owner="org-acme",
    )


class FixedClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_projector(
    db: Database,
    *,
    clock: FixedClock | None = None,
    notify_on_password_change: bool = False,
    batch_size: int = 500,
    extra: list[Projection] | None = None,
    only: tuple[str, ...] | None = None,
) -> Projector:
    settings = Settings(
        notifications=NotificationSettings(notify_on_password_change=notify_on_password_change),
        projections=ProjectionSettings(batch_size=batch_size),
    )
    projections = default_projections(db, settings, clock=clock or FixedClock())
    if only is not None:
        projections = [p for p in projections if p.name in only]
    return Projector(db=db, projections=projections + (extra or []), settings=settings.projections)


async def requests_of(db: Database) -> list[tuple[StoredEvent, NotificationRequested]]:
    events = await db.store.query(EventQuery(event_types=("notification.requested",)))
    return [(e, NotificationRequested.model_validate(e.payload)) for e in events]


async def all_users(conn: Any) -> list[NotifyUser]:
    """Every row of the users read model, for comparing a live model with a rebuild."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT instance_id, user_id, resource_owner, username, first_name, last_name,"
            " display_name, preferred_language, last_email, verified_email, last_phone,"
            " verified_phone, state, sequence, change_date"
            " FROM tidings.users ORDER BY instance_id, user_id"
        )
        return [NotifyUser.model_validate(row) for row in await cur.fetchall()]
