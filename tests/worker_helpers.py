"""Building notifications, settings and a service for worker tests.

Messages go out through the real webhook channel to a local HTTP server
(tests/http_peer.py), which records every delivery and can answer with any
status, Retry-After or delay a provider would.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.projection_helpers import FixedClock as FixedClock
from tests.projection_helpers import user_added as user_added
from tidings.config import (
    ChannelSettings,
    CryptoSettings,
    NotificationSettings,
    Settings,
    WebhookChannelSettings,
)
from tidings.eventstore import Database, EventQuery, NewEvent, StoredEvent
from tidings.notification.codes import CodeCipher
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    REQUESTED,
    NotificationRequested,
    Request,
    SourceRef,
)
from tidings.service import Service

KEY = base64.b64encode(b"k" * 32).decode()
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-secret-for-tests").decode()
CRYPTO = CryptoSettings(keys={"k1": KEY}, active_key="k1")


def worker_settings(webhook_url: str, **notifications: Any) -> Settings:
    """Email and SMS through the webhook channel to `webhook_url`."""
    return Settings(
        notifications=NotificationSettings(**notifications),
        channels=ChannelSettings(
            email="webhook",
            sms="webhook",
            webhook=WebhookChannelSettings(
                url=webhook_url,
                signing_secret=WEBHOOK_SECRET,
                timeout=timedelta(seconds=2),
            ),
        ),
        crypto=CRYPTO,
    )


def worker_env(webhook_url: str) -> dict[str, str]:
    """The same settings as environment variables, for `tidings run` subprocesses."""
    return {
        "TIDINGS_CHANNELS_EMAIL": "webhook",
        "TIDINGS_CHANNELS_SMS": "webhook",
        "TIDINGS_CHANNELS_WEBHOOK_URL": webhook_url,
        "TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET": WEBHOOK_SECRET,
        "TIDINGS_CHANNELS_WEBHOOK_TIMEOUT": "5s",
        "TIDINGS_CRYPTO_KEYS": f"k1={KEY}",
        "TIDINGS_CRYPTO_ACTIVE_KEY": "k1",
    }


def lowest(low: float, high: float) -> float:
    """A random source that always draws the bottom of the range."""
    return low


def requested(
    notification_id: str,
    *,
    user_id: str = "user-ada",
    instance_id: str = "acme",
    message_type: str = "PasswordReset",
    channel: str = "email",
    code: str | None = "482913",
    **request: Any,
) -> NewEvent:
    """A notification.requested event as the projector appends it."""
    fields: dict[str, Any] = {
        "user_id": user_id,
        "resource_owner": f"org-{instance_id}",
        "source": SourceRef(
            aggregate_type="user",
            aggregate_id=user_id,
            sequence=1,
            event_type="user.human.password.code.added",
            position=1,
            created_at=datetime.now(UTC),
        ),
        "message_type": message_type,
        "channel": channel,
        "sent_event_type": "user.human.password.code.sent",
        "url_template": "https://login.example.com/reset?code={{.Code}}",
        "code": CodeCipher.from_settings(CRYPTO).encrypt(code).model_dump() if code else None,
        "code_expiry": timedelta(minutes=10),
    }
    fields.update(request)
    payload = NotificationRequested(request=Request(**fields)).model_dump(mode="json")
    return NewEvent(
        instance_id=instance_id, aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=notification_id, event_type=REQUESTED, payload=payload,
        expected_sequence=0, owner=f"org-{instance_id}", creator="test",
    )  # fmt: skip


async def users_projected(db: Database, settings: Settings) -> None:
    """Bring the users read model up to date."""
    service = Service(db=db, settings=settings)
    await service.projector.catch_up()


async def notification_events(db: Database, notification_id: str) -> list[StoredEvent]:
    return await db.store.query(
        EventQuery(aggregate_types=(NOTIFICATION_AGGREGATE,), aggregate_ids=(notification_id,))
    )


async def settled(db: Database) -> list[StoredEvent]:
    return await db.store.query(
        EventQuery(event_types=("notification.sent", "notification.canceled"))
    )
