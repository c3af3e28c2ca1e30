"""The webhook channel against a local HTTP server: payloads, signatures, failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.http_peer import Drop, Hang, HttpPeer, RecordedRequest, Reply, serve_http
from tidings.config import WebhookChannelSettings
from tidings.notification.channels.base import EmailContent, OutgoingMessage, SMSContent
from tidings.notification.channels.http import retry_after_seconds
from tidings.notification.channels.webhook import WebhookChannel
from tidings.notification.errors import (
    ChannelNotConfigured,
    PermanentSendError,
    SendError,
    TransientSendError,
)

SECRET = b"tidings-test-signing-key-0123456"
SIGNING_SECRET = "whsec_" + base64.b64encode(SECRET).decode()
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
CODE = "Your acme login code is 482913"


def webhook_settings(url: str, **overrides: Any) -> WebhookChannelSettings:
    values: dict[str, Any] = {
        "url": url,
        "signing_secret": SecretStr(SIGNING_SECRET),
        "timeout": timedelta(seconds=1),
    }
    return WebhookChannelSettings(**{**values, **overrides})


def message(content: EmailContent | SMSContent, attempt: int = 1) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id="n-7",
        instance_id="acme",
        attempt=attempt,
        message_type="login_code",
        content=content,
    )


EMAIL = EmailContent(
    to_address="ada@example.com",
    to_name="Ada Lovelace",
    subject="Your code",
    html=f"<p>{CODE} — «ünïcode»</p>",
    text=CODE,
)
SMS = SMSContent(to_number="+15550123", text=CODE)


def verifies(request: RecordedRequest, secret: bytes) -> bool:
    """Standard Webhooks verification, written from the spec, not from the channel."""
    signed = b".".join(
        [
            request.headers["webhook-id"].encode(),
            request.headers["webhook-timestamp"].encode(),
            request.body,
        ]
    )
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    for candidate in request.headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@asynccontextmanager
async def open_channel(settings: WebhookChannelSettings) -> AsyncIterator[WebhookChannel]:
    channel = WebhookChannel(settings=settings, clock=lambda: NOW)
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serve_http() as peer:
        yield peer


@pytest.fixture
async def channel(peer: HttpPeer) -> AsyncIterator[WebhookChannel]:
    async with open_channel(webhook_settings(f"{peer.url}/hooks/tidings")) as channel:
        yield channel


async def failure(channel: WebhookChannel) -> SendError:
    with pytest.raises(SendError) as caught:
        await channel.send(message(SMS))
    return caught.value


async def test_email_payload(peer: HttpPeer, channel: WebhookChannel) -> None:
    await channel.send(message(EMAIL, attempt=2))

    [request] = peer.requests
    assert (request.method, request.path) == ("POST", "/hooks/tidings")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "type": "email",
        "notification_id": "n-7",
        "instance_id": "acme",
        "attempt": 2,
        "message_type": "login_code",
        "to": {"address": "ada@example.com", "name": "Ada Lovelace"},
        "content": {"subject": "Your code", "html": EMAIL.html, "text": CODE},
    }


async def test_sms_payload(peer: HttpPeer, channel: WebhookChannel) -> None:
    await channel.send(message(SMS))

    assert peer.requests[0].json() == {
        "type": "sms",
        "notification_id": "n-7",
        "instance_id": "acme",
        "attempt": 1,
        "message_type": "login_code",
        "to": {"number": "+15550123"},
        "content": {"text": CODE},
    }


@pytest.mark.parametrize("signing_secret", [SIGNING_SECRET, SIGNING_SECRET.removeprefix("whsec_")])
async def test_signature_verifies_over_the_raw_body(peer: HttpPeer, signing_secret: str) -> None:
    settings = webhook_settings(peer.url, signing_secret=SecretStr(signing_secret))
    async with open_channel(settings) as channel:
        await channel.send(message(EMAIL, attempt=3))

    [request] = peer.requests
    assert request.headers["webhook-id"] == "n-7"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert verifies(request, SECRET)
    assert not verifies(request, b"some-other-secret")
    tampered = RecordedRequest(**{**vars(request), "body": request.body.replace(b"n-7", b"n-8")})
    assert not verifies(tampered, SECRET)


async def test_timestamp_comes_from_the_clock(peer: HttpPeer, channel: WebhookChannel) -> None:
    await channel.send(message(SMS))

    assert peer.requests[0].headers["webhook-timestamp"] == str(int(NOW.timestamp()))


async def test_returns_the_receivers_id_or_the_webhook_id(
    peer: HttpPeer, channel: WebhookChannel
) -> None:
    peer.script(Reply.json({"id": "msg_1"}, status=202), Reply(204), Reply.json([1], 200))

    assert await channel.send(message(SMS)) == "msg_1"
    assert await channel.send(message(SMS, attempt=2)) == "n-7"
    assert await channel.send(message(SMS, attempt=3)) == "n-7"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses(peer: HttpPeer, channel: WebhookChannel, status: int) -> None:
    peer.script(Reply(status, body=b"try later"))

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert error.channel == "webhook"
    assert f"answered {status}: try later" in str(error)


async def test_retry_after_is_honoured(peer: HttpPeer, channel: WebhookChannel) -> None:
    later = datetime.now(UTC) + timedelta(seconds=60)
    peer.script(
        Reply(429, {"Retry-After": "3"}),
        Reply(503, {"Retry-After": format_datetime(later, usegmt=True)}),
        Reply(500, {"Retry-After": "3"}),
    )

    rate_limited, unavailable, failed = [await failure(channel) for _ in range(3)]

    assert isinstance(rate_limited, TransientSendError) and rate_limited.retry_after == 3
    assert isinstance(unavailable, TransientSendError) and unavailable.retry_after is not None
    assert 55 <= unavailable.retry_after <= 61
    assert isinstance(failed, TransientSendError) and failed.retry_after is None


@pytest.mark.parametrize(
    ("status", "advice"), [(400, "rejected"), (401, "credentials"), (404, "URL")]
)
async def test_permanent_statuses(
    peer: HttpPeer, channel: WebhookChannel, status: int, advice: str
) -> None:
    peer.script(Reply.json({"error": "no"}, status=status))

    error = await failure(channel)

    assert type(error) is PermanentSendError
    assert advice in str(error)
    assert '{"error": "no"}' in str(error)


async def test_timeout_is_transient(peer: HttpPeer, channel: WebhookChannel) -> None:
    peer.script(Hang())

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert "TIDINGS_CHANNELS_WEBHOOK_TIMEOUT" in str(error)


@pytest.mark.parametrize("lost", [Hang(seconds=3), Drop()], ids=["never-answers", "cut-off"])
async def test_a_retry_after_a_lost_answer_carries_the_same_webhook_id(
    peer: HttpPeer, channel: WebhookChannel, lost: Hang | Drop
) -> None:
    """The receiver took attempt 1 but its answer was lost: attempt 2 has the same
    webhook-id, so a receiver that drops repeated ids (Standard Webhooks) keeps one."""
    peer.script(lost)
    with pytest.raises(TransientSendError):
        await channel.send(message(SMS, attempt=1))
    await channel.send(message(SMS, attempt=2))

    ids = [r.headers["webhook-id"] for r in peer.requests]
    assert ids == ["n-7", "n-7"]
    kept = {i: r.json() for i, r in zip(ids, peer.requests, strict=True)}
    assert len(kept) == 1


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"url": ""}, "TIDINGS_CHANNELS_WEBHOOK_URL"),
        ({"signing_secret": None}, "TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET"),
        ({"signing_secret": SecretStr("whsec_")}, "TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET"),
        ({"signing_secret": SecretStr("whsec_not*base64!")}, "not valid base64"),
        ({"url": "ftp://example.com/hook"}, "TIDINGS_CHANNELS_WEBHOOK_URL"),
    ],
)
async def test_not_configured(peer: HttpPeer, overrides: dict[str, Any], named: str) -> None:
    settings = webhook_settings(peer.url).model_copy(update=overrides)
    async with open_channel(settings) as channel:
        error = await failure(channel)

    assert isinstance(error, ChannelNotConfigured)
    assert named in str(error)
    assert peer.requests == []


async def test_url_credentials_go_to_basic_auth_not_logs(
    peer: HttpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = peer.url.replace("http://", "http://hook:pa55word@") + "/in"
    peer.script(Reply(200), Reply(500, body=f"echo {CODE} pa55word".encode()))

    async with open_channel(webhook_settings(url)) as channel:
        await channel.send(message(EMAIL))
        error = await failure(channel)

    expected = "Basic " + base64.b64encode(b"hook:pa55word").decode()
    assert peer.requests[0].headers["authorization"] == expected
    assert peer.requests[0].path == "/in"
    texts = [record.getMessage() for record in caplog.records] + [str(error)]
    for text in texts:
        for secret in ("pa55word", CODE, SIGNING_SECRET):
            assert secret not in text


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120
    assert retry_after_seconds("Wed, 01 Jan 2025 00:00:30 GMT", now=now) == 30
    assert retry_after_seconds("Tue, 31 Dec 2024 23:00:00 GMT", now=now) == 0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None) is None
