"""Email and SMS as signed JSON POSTs to one URL, per the Standard Webhooks spec.

Each message is one POST of a JSON document (see `webhook_payload`) with the
headers `webhook-id` (the notification id: the same on every attempt and re-send),
`webhook-timestamp` (unix seconds) and `webhook-signature`:
`v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), where the
secret is the base64 after the optional `whsec_` prefix of signing_secret and
the body is exactly the bytes sent. See https://www.standardwebhooks.com/.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from tidings.clock import Clock, utc_now
from tidings.config import WebhookChannelSettings
from tidings.notification.channels.base import EmailContent, OutgoingMessage, email_or_sms
from tidings.notification.channels.http import send_failure
from tidings.notification.errors import ChannelNotConfigured

log = logging.getLogger(__name__)

CHANNEL = "webhook"
SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
_ENV = "TIDINGS_CHANNELS_WEBHOOK_"


@dataclass(frozen=True)
class _Target:
    """Where to POST and how to sign, checked to be usable."""

    url: str  # without user info, which goes in `auth`
    auth: tuple[str, str] | None
    secret: bytes


class WebhookChannel:
    """Sends email and SMS to a webhook; one HTTP client, reused across sends.

    `clock` must return timezone-aware datetimes; it stamps `webhook-timestamp`.
    """

    name = CHANNEL

    def __init__(self, *, settings: WebhookChannelSettings, clock: Clock = utc_now) -> None:
        self._settings = settings
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=settings.timeout.total_seconds())

    async def send(self, message: OutgoingMessage) -> str:
        """POST one signed message; return the receiver's `id`, else the webhook-id."""
        target = self._target()
        body = encode_payload(webhook_payload(message))
        webhook_id = message.idempotency_key
        timestamp = int(self._clock().timestamp())
        secrets = [*_content_secrets(message), *(target.auth or ())]
        try:
            response = await self._client.post(
                target.url,
                content=body,
                auth=target.auth if target.auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={
                    "content-type": "application/json",
                    "webhook-id": webhook_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(target.secret, webhook_id, timestamp, body),
                },
            )
        except httpx.TransportError as error:
            raise send_failure(CHANNEL, target.url, error, redact=secrets) from error
        if not response.is_success:
            raise send_failure(CHANNEL, target.url, response, redact=secrets)
        message_id = _response_id(response) or webhook_id
        log.debug("webhook accepted %s as %s", message.describe(), message_id)
        return message_id

    async def close(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    def _target(self) -> _Target:
        """The URL and secret, or ChannelNotConfigured naming what to fix."""
        settings = self._settings
        raw_secret = settings.signing_secret.get_secret_value() if settings.signing_secret else ""
        missing = [
            f"{_ENV}{name}"
            for name, value in (("URL", settings.url), ("SIGNING_SECRET", raw_secret))
            if not value.strip()
        ]
        if missing:
            raise ChannelNotConfigured(
                f"webhook channel is not configured: set {' and '.join(missing)} "
                "(or channels.webhook.* in the config file)",
                channel=CHANNEL,
            )
        url, auth = _split_url(settings.url.strip())
        return _Target(url=url, auth=auth, secret=decode_secret(raw_secret))


def webhook_payload(message: OutgoingMessage) -> dict[str, Any]:
    """The JSON document sent for one message (it holds the content, codes included)."""
    content = email_or_sms(message, CHANNEL)
    common = {
        "type": message.kind,
        "notification_id": message.notification_id,
        "instance_id": message.instance_id,
        "attempt": message.attempt,
        "message_type": message.message_type,
    }
    if isinstance(content, EmailContent):
        return {
            **common,
            "to": {"address": content.to_address, "name": content.to_name},
            "content": {"subject": content.subject, "html": content.html, "text": content.text},
        }
    return {**common, "to": {"number": content.to_number}, "content": {"text": content.text}}


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def decode_secret(text: str) -> bytes:
    """The HMAC key from a signing secret: base64, with an optional `whsec_` prefix."""
    encoded = text.strip().removeprefix(SECRET_PREFIX)
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if not secret:
        raise ChannelNotConfigured(
            f"{_ENV}SIGNING_SECRET is not valid base64 (optionally prefixed {SECRET_PREFIX}); "
            "generate one with: openssl rand -base64 32",
            channel=CHANNEL,
        )
    return secret


def _split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and that user info as basic auth credentials.

    Keeping credentials out of the URL keeps them out of httpx's request log.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChannelNotConfigured(
            f"{_ENV}URL must be an http:// or https:// URL with a host", channel=CHANNEL
        )
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), auth


def _content_secrets(message: OutgoingMessage) -> Iterator[str]:
    """The content strings, raw and JSON-escaped, to mask if a receiver echoes them."""
    content = email_or_sms(message, CHANNEL)
    texts = (
        (content.subject, content.html, content.text)
        if isinstance(content, EmailContent)
        else (content.text,)
    )
    for text in texts:
        yield text
        yield json.dumps(text, ensure_ascii=False)[1:-1]


def _response_id(response: httpx.Response) -> str | None:
    """The receiver's `id` for the message, when it answered JSON with one."""
    try:
        document = response.json()
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    value = document.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)
