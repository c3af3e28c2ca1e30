"""One interface for every channel: send(message) -> the provider's message id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tidings.config.masking import mask_secrets
from tidings.notification.errors import PermanentSendError
from tidings.notification.events import InAppContent
from tidings.notification.messages import Channel as ChannelKind


@dataclass(frozen=True)
class EmailContent:
    """A rendered email: the HTML part and its plain-text alternative."""

    to_address: str
    to_name: str
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class SMSContent:
    """A rendered SMS to an E.164 number."""

    to_number: str
    text: str


@dataclass(frozen=True)
class OutgoingMessage:
    """One attempt at one notification, ready for a channel.

    The content may hold a one-time code: channels send it, never log it.
    """

    notification_id: str
    instance_id: str
    attempt: int
    message_type: str
    content: EmailContent | SMSContent | InAppContent
    metadata: dict[str, str] = field(default_factory=dict)
    # The one-time code as it may appear in the content (plain and URL-encoded):
    # what scrub() masks out of a provider's error before it reaches the log.
    sensitive: tuple[str, ...] = field(default=(), repr=False)

    @property
    def kind(self) -> ChannelKind:
        if isinstance(self.content, InAppContent):
            return "inapp"
        return "email" if isinstance(self.content, EmailContent) else "sms"

    @property
    def idempotency_key(self) -> str:
        """The notification's id: the same for every attempt and every re-send.

        A provider that accepted attempt 1 but whose answer was lost (a timeout
        waiting for SMTP's final 250, an HTTP reply cut off) sees attempt 2 with
        the same key (Message-ID, webhook-id, idempotency token, file name) and
        can drop it, so the user gets one message.
        """
        return self.notification_id

    def scrub(self, text: str) -> str:
        """`text` (e.g. a provider's error quoting the request) with the code masked."""
        return mask_secrets(text, self.sensitive)

    def describe(self) -> str:
        """A one-line summary with no content in it, fit for logs."""
        return (
            f"{self.message_type} {self.kind} notification {self.notification_id} "
            f"attempt {self.attempt} (instance {self.instance_id})"
        )


class Channel(Protocol):
    """Sends messages of one kind. Raises TransientSendError or PermanentSendError."""

    name: str

    async def send(self, message: OutgoingMessage) -> str:
        """Send; return the provider's message id."""
        ...

    async def close(self) -> None:
        """Release connections; the channel is not used afterwards."""
        ...


def email_or_sms(message: OutgoingMessage, channel: str) -> EmailContent | SMSContent:
    """The content of a message for a channel that sends email or SMS (never in-app)."""
    content = message.content
    if isinstance(content, InAppContent):
        raise PermanentSendError(
            f"the {channel} channel cannot deliver {message.describe()}: in-app messages go "
            "to the feed (channel inapp)",
            channel=channel,
        )
    return content
