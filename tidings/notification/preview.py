"""Rendering a message with sample data, for operators checking their overrides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any, cast

from tidings.config import Settings
from tidings.notification.channels.base import EmailContent
from tidings.notification.events import InAppContent
from tidings.notification.messages import MESSAGE_TYPES, Channel, MessageType
from tidings.notification.requests import NotifyUser, Request, SourceRef
from tidings.notification.setup import build_composer

SAMPLE_CODE = "123456"


class _SampleCodes:
    """Stands in for the cipher: previews never see a real code."""

    def decrypt(self, value: Any) -> str:
        return SAMPLE_CODE


@dataclass(frozen=True)
class Preview:
    summary: str  # what the terminal shows: headers and the text part, or the SMS
    text: str
    html: str | None
    eml: bytes | None


def render_preview(
    settings: Settings, *, message_type: str, lang: str, channel: str, instance_id: str
) -> Preview:
    """Render one message type for a sample user; raises RenderError for a broken override."""
    composer = build_composer(settings, cipher=_SampleCodes())
    user = NotifyUser(
        instance_id=instance_id,
        user_id="user-sample",
        resource_owner="org-sample",
        username="ada",
        first_name="Ada",
        last_name="Lovelace",
        display_name="Ada Lovelace",
        preferred_language=lang,
        last_email="ada@example.com",
        verified_email="ada@example.com",
        last_phone="+41790000001",
        verified_phone="+41790000001",
    )
    kind: Channel = "sms" if channel == "sms" else "email"
    request = Request(
        user_id=user.user_id,
        resource_owner=user.resource_owner,
        source=SourceRef(
            aggregate_type="user",
            aggregate_id=user.user_id,
            sequence=1,
            event_type="preview",
            position=0,
            created_at=datetime.now(UTC),
        ),
        message_type=_message_type(message_type),
        channel=kind,
        sent_event_type="preview",
        url_template="https://login.example.com/ui/{{.UserID}}?code={{.Code}}",
        code={"preview": True},
        code_expiry=timedelta(minutes=10),
        args={"session_id": "session-sample", "temporary_username": "ada@tmp.example.com"},
    )
    message = composer.compose(
        notification_id="preview", instance_id=instance_id, attempt=1, request=request, user=user
    )
    content = message.content
    if isinstance(content, InAppContent):  # not offered by `tidings preview` yet
        text = f"{content.title}\n\n{content.body}\n{content.action_url}".rstrip()
        return Preview(summary=text, text=text, html=None, eml=None)
    if not isinstance(content, EmailContent):
        return Preview(summary=content.text, text=content.text, html=None, eml=None)
    mail = EmailMessage()
    mail["To"] = formataddr((content.to_name, content.to_address))
    mail["Subject"] = content.subject
    mail.set_content(content.text)
    mail.add_alternative(content.html, subtype="html")
    summary = f"To: {mail['To']}\nSubject: {content.subject}\n\n{content.text}"
    return Preview(summary=summary, text=content.text, html=content.html, eml=mail.as_bytes())


def _message_type(value: str) -> MessageType:
    if value not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {value!r}; known: {', '.join(MESSAGE_TYPES)}")
    return cast(MessageType, value)
