"""The Twilio channel against a local HTTP server: requests, answers, failures, secrecy."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.http_peer import Drop, Hang, HttpPeer, Reply, serve_http
from tidings.config import TwilioChannelSettings
from tidings.notification.channels.base import EmailContent, OutgoingMessage, SMSContent
from tidings.notification.channels.twilio import TwilioChannel
from tidings.notification.errors import (
    ChannelNotConfigured,
    PermanentSendError,
    SendError,
    TransientSendError,
)

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "tok-9f8e7d6c5b4a-very-secret"
FROM_NUMBER = "+15550100"
TO_NUMBER = "+15550123"
CODE_TEXT = "Your acme login code is 482913"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def twilio_settings(base_url: str, **overrides: Any) -> TwilioChannelSettings:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": SecretStr(AUTH_TOKEN),
        "from_number": FROM_NUMBER,
        "base_url": base_url,
        "timeout": timedelta(seconds=1),
    }
    return TwilioChannelSettings(**{**values, **overrides})


def sms(attempt: int = 1) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id="n-42",
        instance_id="acme",
        attempt=attempt,
        message_type="login_code",
        content=SMSContent(to_number=TO_NUMBER, text=CODE_TEXT),
    )


def twilio_error(code: int, status: int, headers: dict[str, str] | None = None) -> Reply:
    document = {
        "code": code,
        "message": f"Twilio says no ({code}).",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Reply.json(document, status=status, headers=headers)


@asynccontextmanager
async def open_channel(settings: TwilioChannelSettings) -> AsyncIterator[TwilioChannel]:
    channel = TwilioChannel(settings=settings)
    try:
        yield channel
    finally:
        await channel.close()


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serve_http(default=Reply.json({"sid": "SM0001", "status": "queued"}, 201)) as peer:
        yield peer


@pytest.fixture
async def channel(peer: HttpPeer) -> AsyncIterator[TwilioChannel]:
    async with open_channel(twilio_settings(peer.url)) as channel:
        yield channel


async def failure(channel: TwilioChannel, message: OutgoingMessage | None = None) -> SendError:
    with pytest.raises(SendError) as caught:
        await channel.send(message or sms())
    return caught.value


async def test_success_returns_the_sid(channel: TwilioChannel) -> None:
    assert await channel.send(sms()) == "SM0001"


async def test_request_carries_form_auth_and_idempotency_token(
    peer: HttpPeer, channel: TwilioChannel
) -> None:
    await channel.send(sms(attempt=2))

    [request] = peer.requests
    assert (request.method, request.path) == ("POST", MESSAGES_PATH)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {"To": [TO_NUMBER], "Body": [CODE_TEXT], "From": [FROM_NUMBER]}
    scheme, _, credentials = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{ACCOUNT_SID}:{AUTH_TOKEN}"
    assert request.headers["i-twilio-idempotency-token"] == "n-42"


async def test_messaging_service_sid_replaces_from(peer: HttpPeer) -> None:
    settings = twilio_settings(peer.url, from_number="", messaging_service_sid="MG0001")
    async with open_channel(settings) as channel:
        await channel.send(sms())

    assert peer.requests[0].form()["MessagingServiceSid"] == ["MG0001"]
    assert "From" not in peer.requests[0].form()


async def test_one_client_is_reused_across_sends(peer: HttpPeer, channel: TwilioChannel) -> None:
    await channel.send(sms(attempt=1))
    await channel.send(sms(attempt=2))

    first, second = peer.requests
    assert first.client_port == second.client_port


async def test_invalid_number_is_permanent_and_names_the_code(
    peer: HttpPeer, channel: TwilioChannel
) -> None:
    peer.script(twilio_error(21211, 400))

    error = await failure(channel)

    assert type(error) is PermanentSendError
    assert error.channel == "twilio"
    assert "21211" in str(error)
    assert "400" in str(error)


async def test_429_is_transient_with_retry_after_seconds(
    peer: HttpPeer, channel: TwilioChannel
) -> None:
    peer.script(twilio_error(20429, 429, headers={"Retry-After": "7"}))

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert error.retry_after == 7


async def test_503_with_http_date_retry_after(peer: HttpPeer, channel: TwilioChannel) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    peer.script(Reply(503, {"Retry-After": format_datetime(later, usegmt=True)}, b"busy"))

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert error.retry_after is not None
    assert 115 <= error.retry_after <= 121


async def test_500_is_transient_without_a_hint(peer: HttpPeer, channel: TwilioChannel) -> None:
    peer.script(Reply(500, body=b"<html>Internal Server Error</html>"))

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert error.retry_after is None
    assert "Internal Server Error" in str(error)


async def test_listed_code_is_permanent_even_with_429(
    peer: HttpPeer, channel: TwilioChannel
) -> None:
    peer.script(twilio_error(60410, 429, headers={"Retry-After": "1"}))

    error = await failure(channel)

    assert type(error) is PermanentSendError
    assert "60410" in str(error)
    assert "TIDINGS_CHANNELS_TWILIO_PERMANENT_ERROR_CODES" in str(error)


async def test_custom_permanent_error_codes(peer: HttpPeer) -> None:
    settings = twilio_settings(peer.url, permanent_error_codes=(30007,))
    peer.script(twilio_error(30007, 500), twilio_error(60410, 429))

    async with open_channel(settings) as channel:
        listed = await failure(channel)
        no_longer_listed = await failure(channel)

    assert type(listed) is PermanentSendError
    assert isinstance(no_longer_listed, TransientSendError)


async def test_timeout_is_transient(peer: HttpPeer, channel: TwilioChannel) -> None:
    peer.script(Hang())
    started = time.monotonic()

    error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert "no answer in time" in str(error)
    assert time.monotonic() - started < 5


async def test_dropped_connection_is_transient(peer: HttpPeer, channel: TwilioChannel) -> None:
    peer.script(Drop())

    assert isinstance(await failure(channel), TransientSendError)


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        async with open_channel(twilio_settings(f"http://127.0.0.1:{port}")) as channel:
            error = await failure(channel)

    assert isinstance(error, TransientSendError)
    assert "failed without an answer (ConnectError" in str(error)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"account_sid": ""}, ["TIDINGS_CHANNELS_TWILIO_ACCOUNT_SID"]),
        ({"auth_token": None}, ["TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN"]),
        (
            {"from_number": "", "messaging_service_sid": ""},
            [
                "TIDINGS_CHANNELS_TWILIO_FROM_NUMBER",
                "TIDINGS_CHANNELS_TWILIO_MESSAGING_SERVICE_SID",
            ],
        ),
        (
            {"account_sid": "", "auth_token": SecretStr(""), "from_number": ""},
            [
                "TIDINGS_CHANNELS_TWILIO_ACCOUNT_SID",
                "TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN",
                "TIDINGS_CHANNELS_TWILIO_FROM_NUMBER",
            ],
        ),
    ],
)
async def test_missing_settings_are_named_at_send(
    peer: HttpPeer, overrides: dict[str, Any], named: list[str]
) -> None:
    async with open_channel(twilio_settings(peer.url, **overrides)) as channel:
        error = await failure(channel)

    assert isinstance(error, ChannelNotConfigured)
    assert error.channel == "twilio"
    for variable in named:
        assert variable in str(error)
    assert peer.requests == []


async def test_email_is_permanent(peer: HttpPeer, channel: TwilioChannel) -> None:
    email = OutgoingMessage(
        notification_id="n-1",
        instance_id="acme",
        attempt=1,
        message_type="welcome",
        content=EmailContent("a@example.com", "A", "Hi", "<p>Hi</p>", "Hi"),
    )

    error = await failure(channel, email)

    assert type(error) is PermanentSendError
    assert "SMS only" in str(error)
    assert peer.requests == []


async def test_token_and_content_never_logged_nor_in_errors(
    peer: HttpPeer, channel: TwilioChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"code": 20003, "message": f"Bad token {AUTH_TOKEN} for body {CODE_TEXT}"}
    peer.script(
        Reply.json({"sid": "SM0002"}, 201),
        Reply.json(echo, status=401),
        Reply(500, body=f"echo: To={TO_NUMBER}&Body={CODE_TEXT}".encode()),
        twilio_error(60410, 400),
        Drop(),
        Hang(),
    )

    await channel.send(sms())
    errors = [await failure(channel) for _ in range(5)]

    assert caplog.records, "expected httpx/httpcore debug records"
    logged = [record.getMessage() for record in caplog.records]
    for text in [*logged, *(str(error) for error in errors)]:
        assert AUTH_TOKEN not in text
        assert CODE_TEXT not in text
    assert "***" in str(errors[0])
