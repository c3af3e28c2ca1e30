"""SMS through Twilio's Programmable Messaging REST API.

One POST per message to `/2010-04-01/Accounts/{sid}/Messages.json`, with HTTP
basic auth and an idempotency token so that a re-sent attempt is not delivered
twice. Twilio error codes listed in `permanent_error_codes` are never retried,
whatever the HTTP status; otherwise `channels.http` classifies the failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from tidings.config import TwilioChannelSettings
from tidings.notification.channels.base import OutgoingMessage, SMSContent
from tidings.notification.channels.http import (
    SendFailure,
    excerpt,
    safe_url,
    send_failure,
)
from tidings.notification.errors import ChannelNotConfigured, PermanentSendError

log = logging.getLogger(__name__)

CHANNEL = "twilio"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MESSAGES_PATH = "/2010-04-01/Accounts/{account_sid}/Messages.json"
_ENV = "TIDINGS_CHANNELS_TWILIO_"


@dataclass(frozen=True)
class _Account:
    """The settings a send needs, checked to be present."""

    sid: str
    auth_token: str
    sender: tuple[str, str]  # the form field and its value: From or MessagingServiceSid


@dataclass(frozen=True)
class TwilioError:
    """The error document Twilio answers a failed request with."""

    code: int | None
    message: str
    more_info: str

    def describe(self) -> str:
        """One line for an error message: code, Twilio's text, and its docs link."""
        code = f"Twilio error {self.code}" if self.code is not None else "Twilio error"
        more = f" ({self.more_info})" if self.more_info else ""
        return f"{code}: {self.message or 'no message'}{more}"


class TwilioChannel:
    """Sends SMS through Twilio; one HTTP client, reused across sends."""

    name = CHANNEL

    def __init__(self, *, settings: TwilioChannelSettings) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(timeout=settings.timeout.total_seconds())

    async def send(self, message: OutgoingMessage) -> str:
        """Send one SMS; return Twilio's message sid."""
        sms = _sms_content(message)
        account = self._account()
        url = self._messages_url(account.sid)
        secrets = (account.auth_token, sms.text)
        try:
            response = await self._client.post(
                url,
                data={"To": sms.to_number, "Body": sms.text, account.sender[0]: account.sender[1]},
                auth=(account.sid, account.auth_token),
                headers={IDEMPOTENCY_HEADER: message.idempotency_key},
            )
        except httpx.TransportError as error:
            raise send_failure(CHANNEL, url, error, redact=secrets) from error
        if not response.is_success:
            raise self._failure(url, response, secrets)
        sid = _message_sid(url, response)
        log.debug("twilio accepted %s as %s", message.describe(), sid)
        return sid

    async def close(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    def _account(self) -> _Account:
        """The account settings, or ChannelNotConfigured naming every one missing."""
        settings = self._settings
        token = settings.auth_token.get_secret_value() if settings.auth_token else ""
        missing = [
            f"{_ENV}{name.upper()}"
            for name, value in (("account_sid", settings.account_sid), ("auth_token", token))
            if not value
        ]
        if settings.from_number:
            sender = ("From", settings.from_number)
        elif settings.messaging_service_sid:
            sender = ("MessagingServiceSid", settings.messaging_service_sid)
        else:
            sender = ("", "")
            missing.append(f"{_ENV}FROM_NUMBER or {_ENV}MESSAGING_SERVICE_SID")
        if missing:
            raise ChannelNotConfigured(
                f"twilio channel is not configured: set {', '.join(missing)} "
                "(or channels.twilio.* in the config file)",
                channel=CHANNEL,
            )
        return _Account(sid=settings.account_sid, auth_token=token, sender=sender)

    def _messages_url(self, account_sid: str) -> str:
        path = MESSAGES_PATH.format(account_sid=quote(account_sid, safe=""))
        return self._settings.base_url.rstrip("/") + path

    def _failure(self, url: str, response: httpx.Response, secrets: tuple[str, ...]) -> SendFailure:
        """A listed Twilio error code is permanent; anything else as HTTP says."""
        error = twilio_error(response)
        detail = excerpt(error.describe(), secrets) if error is not None else None
        if error is not None and error.code in self._settings.permanent_error_codes:
            return PermanentSendError(
                f"twilio: POST {safe_url(url)} answered {response.status_code}: {detail}. "
                f"Code {error.code} is in {_ENV}PERMANENT_ERROR_CODES; retrying will not help.",
                channel=CHANNEL,
            )
        return send_failure(CHANNEL, url, response, detail=detail, redact=secrets)


def twilio_error(response: httpx.Response) -> TwilioError | None:
    """Twilio's error document from a response, or None when the body is not one."""
    document = _json_object(response)
    if document is None or not ({"code", "message"} & document.keys()):
        return None
    return TwilioError(
        code=_int_or_none(document.get("code")),
        message=str(document.get("message") or ""),
        more_info=str(document.get("more_info") or ""),
    )


def _sms_content(message: OutgoingMessage) -> SMSContent:
    if not isinstance(message.content, SMSContent):
        raise PermanentSendError(
            f"twilio sends SMS only, not {message.describe()}; "
            "route email to another channel (TIDINGS_CHANNELS_EMAIL)",
            channel=CHANNEL,
        )
    return message.content


def _message_sid(url: str, response: httpx.Response) -> str:
    """The sid of the message Twilio accepted.

    Without one the message may still have gone out, so this is permanent:
    retrying could deliver it twice.
    """
    document = _json_object(response)
    sid = document.get("sid") if document is not None else None
    if not isinstance(sid, str) or not sid:
        raise PermanentSendError(
            f"twilio: POST {safe_url(url)} answered {response.status_code} without a "
            "message sid; the SMS may have been sent, so it is not retried",
            channel=CHANNEL,
        )
    return sid


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
