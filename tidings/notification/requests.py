"""A notification request and what a worker needs to know about its user."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from tidings.models import FrozenModel
from tidings.notification.direct import DirectRecipient, IdempotencyRef
from tidings.notification.messages import Channel, MessageType, MessageTypeName
from tidings.notification.wire import Duration

NOTIFICATION_AGGREGATE = "notification"
REQUESTED = "notification.requested"

# Notification ids are derived from their source event, so re-running the
# projector or replaying the log can never request the same message twice.
_NAMESPACE = uuid.UUID("6f1c1d2e-8a7b-5c3d-9e4f-0a1b2c3d4e5f")


def notification_id(
    *, instance_id: str, aggregate_type: str, aggregate_id: str, sequence: int
) -> str:
    """The id of the notification that a source event asks for."""
    key = "\x1f".join((instance_id, aggregate_type, aggregate_id, str(sequence)))
    return str(uuid.uuid5(_NAMESPACE, key))


class SourceRef(FrozenModel):
    """The source event a notification was requested for."""

    aggregate_type: str
    aggregate_id: str
    sequence: int
    event_type: str
    position: int
    created_at: datetime


class Request(FrozenModel):
    """Everything a worker needs to render and send one message.

    The code stays encrypted; it is decrypted only to render the message.
    A request from a source event names it (`source`) and the event its
    aggregate records once sent (`sent_event_type`); a direct request (POST
    /v1/notifications) has neither, and may carry its `recipient` inline
    instead of a user of the read model, and a custom message type.
    """

    user_id: str
    resource_owner: str
    source: SourceRef | None = None
    message_type: MessageType | MessageTypeName
    channel: Channel
    sent_event_type: str | None = None
    recipient: DirectRecipient | None = None
    not_after: datetime | None = None  # not sent after this time (a direct request's choice)
    url_template: str | None = None
    code: Any = None
    code_expiry: Duration | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    is_otp: bool = False
    unverified_channel: bool = False


class NotificationRequested(FrozenModel):
    """Payload of notification.requested; `idempotency` for a direct request."""

    request: Request
    idempotency: IdempotencyRef | None = None


class NotifyUser(FrozenModel):
    """The user as a message sees it; retries render from the first attempt's copy."""

    instance_id: str
    user_id: str
    resource_owner: str = ""
    username: str = ""
    first_name: str = ""
    last_name: str = ""
    display_name: str = ""
    preferred_language: str = ""
    last_email: str | None = None
    verified_email: str | None = None
    last_phone: str | None = None
    verified_phone: str | None = None
    state: str = "active"
    sequence: int = 0
    change_date: datetime | None = None


def inline_user(instance_id: str, request: Request) -> NotifyUser | None:
    """The user a request's inline recipient stands for (None without one).

    Its addresses count as verified: the producer that named them vouches for them.
    """
    r = request.recipient
    if r is None:
        return None
    return NotifyUser(
        instance_id=instance_id,
        user_id=request.user_id,
        resource_owner=request.resource_owner,
        display_name=r.name,
        preferred_language=r.language,
        last_email=r.email,
        verified_email=r.email,
        last_phone=r.phone,
        verified_phone=r.phone,
    )
