"""In-app notifications for feed tests: sent by the real worker pool, or appended as it would.

`send_inapp` takes a notification through the whole path (users projected,
notification.requested, a worker renders it and appends notification.sent);
`sent_inapp` appends the two events the pool would append, for tests that
need many items fast.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.projection_helpers import user_added
from tests.worker_helpers import requested
from tidings.config import Settings
from tidings.eventstore import AppendedEvent, Database, EventStore, NewEvent
from tidings.notification.events import SENT, InAppContent, Sent
from tidings.notification.requests import NOTIFICATION_AGGREGATE
from tidings.service import Service


def inapp_requested(
    notification_id: str,
    *,
    user_id: str = "user-ada",
    instance_id: str = "acme",
    message_type: str = "DomainClaimed",
    code: str | None = None,
    **request: Any,
) -> NewEvent:
    fields: dict[str, Any] = {
        "args": {"temporary_username": "ada@tmp.example.com"},
        "url_template": "https://app.example.com/account/{{.UserID}}",
        "sent_event_type": "user.domain.claimed.sent",
    }
    fields.update(request)
    return requested(
        notification_id,
        user_id=user_id,
        instance_id=instance_id,
        message_type=message_type,
        channel="inapp",
        code=code,
        **fields,
    )


async def send_inapp(
    db: Database,
    notification_ids: list[str],
    *,
    user_id: str = "user-ada",
    instance_id: str = "acme",
    settings: Settings | None = None,
    add_user: bool = True,
    **request: Any,
) -> None:
    """Request in-app notifications for a user and let the real worker pool send them."""
    settings = settings or Settings()
    if add_user:
        await db.store.append([user_added(user_id, instance_id=instance_id)])
    service = Service(db=db, settings=settings)
    try:
        await service.projector.catch_up()
        await db.store.append([
            inapp_requested(nid, user_id=user_id, instance_id=instance_id, **request)
            for nid in notification_ids
        ])  # fmt: skip
        await service.pool.run(stop=asyncio.Event(), workers=1, retry_workers=0, until_idle=True)
    finally:
        await service.close()


def inapp_sent(
    notification_id: str,
    *,
    user_id: str = "user-ada",
    instance_id: str = "acme",
    title: str | None = None,
) -> NewEvent:
    """The notification.sent the in-app channel's attempt appends (sequence 2)."""
    content = InAppContent(
        user_id=user_id,
        message_type="DomainClaimed",
        lang="en",
        title=title or f"item {notification_id}",
        body="Your username is now ada@tmp.example.com",
        action_url=f"https://app.example.com/n/{notification_id}",
        data={"n": notification_id},
    )
    sent = Sent(
        channel="inapp", provider_message_id=f"inapp-{notification_id}", attempt=1, inapp=content
    )
    return NewEvent(
        instance_id=instance_id,
        aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=notification_id,
        event_type=SENT,
        payload=sent.payload(),
        expected_sequence=1,
        creator="tidings-worker",
    )


async def sent_inapp(
    store: EventStore,
    notification_ids: list[str],
    *,
    user_id: str = "user-ada",
    instance_id: str = "acme",
) -> list[AppendedEvent]:
    """Append requested + in-app sent for each id, as the pool would; the sent events."""
    events: list[NewEvent] = []
    for nid in notification_ids:
        events.append(inapp_requested(nid, user_id=user_id, instance_id=instance_id))
        events.append(inapp_sent(nid, user_id=user_id, instance_id=instance_id))
    appended = await store.append(events)
    return appended[1::2]


def now() -> datetime:
    return datetime.now(UTC)
