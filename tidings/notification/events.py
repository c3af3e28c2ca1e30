"""The notification aggregate's events after the request: retry, sent, canceled.

A notification is settled by exactly one sent or canceled event; nothing
follows either. Payloads are versioned by their event type.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from tidings.models import FrozenModel
from tidings.notification.requests import REQUESTED, NotificationRequested, NotifyUser, Request
from tidings.notification.wire import Duration

RETRY_REQUESTED = "notification.retry.requested"
SENT = "notification.sent"
CANCELED = "notification.canceled"
SETTLED = (SENT, CANCELED)
# The feed's marks, appended on the user's behalf after an in-app send (the
# rules: tidings.notification.lifecycle). They change the feed item, not the status.
SEEN = "notification.seen"
READ = "notification.read"
UNREAD = "notification.unread"
ARCHIVED = "notification.archived"
UNARCHIVED = "notification.unarchived"
MARKS = (SEEN, READ, UNREAD, ARCHIVED, UNARCHIVED)


class CancelReason(StrEnum):
    """Why a notification was canceled (notification.canceled's `reason`)."""

    MAX_ATTEMPTS = "max_attempts"  # the last allowed attempt failed
    EXPIRED = "expired"  # picked up after max_ttl
    PERMANENT_ERROR = "permanent_error"  # the channel or the message can never work
    USER_REMOVED = "user_removed"  # the user was removed before the message went out
    INVALID_REQUEST = "invalid_request"  # the request in the log cannot be read
    CODE_EXPIRED = "code_expired"  # its one-time code expired before the message went out
    USER_UNKNOWN = "user_unknown"  # the users read model has passed the request, without the user
    BY_REQUEST = "canceled"  # a producer or operator canceled it (the error names who)


class RetryRequested(FrozenModel):
    """Attempt `attempt` failed transiently; the next one is due at `due_at`."""

    request: Request
    notify_user: NotifyUser
    backoff: Duration
    attempt: int = Field(ge=1)
    error: str
    due_at: datetime


class InAppContent(FrozenModel):
    """What an in-app notification shows, rendered once and kept on the log.

    It travels in notification.sent, so the feed read model (tidings.feeds) can
    be rebuilt from the log alone. It never holds a one-time code: message
    types that carry one refuse the in-app channel.
    """

    user_id: str
    message_type: str
    lang: str
    title: str
    body: str
    action_url: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class Sent(FrozenModel):
    channel: str
    provider_message_id: str
    attempt: int = Field(ge=1)
    inapp: InAppContent | None = None  # only for the in-app channel: the feed item

    def payload(self) -> dict[str, Any]:
        """The event payload; `inapp` only when there is one (other sends look as before)."""
        if self.inapp is None:  # what model_dump(mode="json") writes of these, built directly
            return {
                "channel": self.channel,
                "provider_message_id": self.provider_message_id,
                "attempt": self.attempt,
            }
        return self.model_dump(mode="json")


class Canceled(FrozenModel):
    reason: CancelReason
    error: str
    attempt: int = Field(ge=0)  # attempts made; 0 when canceled before the first


class Mark(FrozenModel):
    """Payload of every feed mark: the user it was appended for (the item's owner)."""

    user_id: str = Field(min_length=1)


class SourceSent(FrozenModel):
    """Appended on the source aggregate (e.g. user.human.password.code.sent)."""

    notification_id: str
    message_type: str
    channel: str

    @classmethod
    def payload_of(cls, *, notification_id: str, message_type: str, channel: str) -> dict[str, Any]:
        """The payload, as `cls(...).model_dump(mode="json")` writes it: built directly from
        text (a worker's case), through the model from anything else."""
        if type(notification_id) is str and type(message_type) is str and type(channel) is str:
            return {
                "notification_id": notification_id,
                "message_type": message_type,
                "channel": channel,
            }
        made = cls(notification_id=notification_id, message_type=message_type, channel=channel)
        return made.model_dump(mode="json")


PAYLOADS: dict[str, type[BaseModel]] = {
    REQUESTED: NotificationRequested,
    RETRY_REQUESTED: RetryRequested,
    SENT: Sent,
    CANCELED: Canceled,
}


def parse_payload(event_type: str, payload: dict[str, Any]) -> BaseModel:
    """The payload of a notification event as its model (raises ValidationError or KeyError)."""
    return PAYLOADS[event_type].model_validate(payload)
