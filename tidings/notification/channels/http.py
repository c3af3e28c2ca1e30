"""What an HTTP channel raises when a send fails: try again later, or never.

Every HTTP channel classifies its failures the same way:

* no answer (connection refused or reset, DNS failure, timeout): transient;
* 408, 429 and 5xx: transient, with the provider's Retry-After (429 and 503) as
  the retry hint;
* any other status: permanent; the request will not succeed as it is.

Messages name the channel, the URL without credentials or query, the status and
a short excerpt of the response body, and what to do. They never hold the
request body, which may carry a one-time code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from tidings.config.masking import mask_secrets
from tidings.notification.errors import PermanentSendError, TransientSendError

EXCERPT_CHARS = 200
RETRY_AFTER_STATUSES = frozenset({429, 503})
_TRANSIENT_STATUSES = frozenset({408, 429})
_WHITESPACE = re.compile(r"\s+")

SendFailure = TransientSendError | PermanentSendError


def send_failure(
    channel: str,
    url: str | httpx.URL,
    outcome: httpx.Response | httpx.TransportError,
    *,
    detail: str | None = None,
    redact: Iterable[str] = (),
) -> SendFailure:
    """The error to raise for a send that did not succeed; the caller raises it.

    `outcome` is the failed response, or the transport error (timeouts
    included) raised instead of one. `detail` replaces the body excerpt when
    the channel has read the provider's error itself; every string in `redact`
    is masked out of the excerpt, in case a provider echoes the request.
    """
    where = safe_url(url)
    secrets = [secret for secret in redact if secret]
    if isinstance(outcome, httpx.Response):
        text = detail if detail is not None else response_text(outcome)
        return _status_failure(channel, where, outcome, excerpt(text, secrets))
    return _transport_failure(channel, where, outcome, secrets)


def safe_url(url: str | httpx.URL) -> str:
    """The URL as logs and errors may show it: no user, password, query or fragment."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def response_text(response: httpx.Response) -> str:
    """The response body as text, undecodable bytes replaced."""
    try:
        return response.text
    except (UnicodeDecodeError, LookupError):
        return response.content.decode("utf-8", errors="replace")


def excerpt(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` on one line, secrets masked, at most EXCERPT_CHARS long."""
    text = _WHITESPACE.sub(" ", mask_secrets(text, secrets)).strip()
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return text or "(empty body)"


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date.

    Returns None when the header is missing or unreadable; a date in the past
    means no wait (0).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _status_failure(
    channel: str, where: str, response: httpx.Response, excerpt: str
) -> SendFailure:
    status = response.status_code
    said = f"{channel}: POST {where} answered {status}: {excerpt}"
    if status in _TRANSIENT_STATUSES or 500 <= status <= 599:
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return TransientSendError(
            f"{said}. {_retry_advice(retry_after)}", channel=channel, retry_after=retry_after
        )
    return PermanentSendError(f"{said}. {_permanent_advice(channel, status)}", channel=channel)


def _transport_failure(
    channel: str, where: str, error: httpx.TransportError, secrets: Iterable[str]
) -> SendFailure:
    if isinstance(error, httpx.TimeoutException):
        what = f"no answer in time ({type(error).__name__})"
        advice = (
            f"The message will be retried; if this persists, check the provider's status "
            f"or raise TIDINGS_CHANNELS_{channel.upper()}_TIMEOUT."
        )
    else:
        reason = excerpt(str(error), secrets)
        what = f"failed without an answer ({type(error).__name__}: {reason})"
        advice = (
            f"The message will be retried; if this persists, check the URL in "
            f"TIDINGS_CHANNELS_{channel.upper()}_* and the network."
        )
    return TransientSendError(f"{channel}: POST {where} {what}. {advice}", channel=channel)


def _retry_advice(retry_after: float | None) -> str:
    if retry_after is None:
        return "The message will be retried."
    return f"The message will be retried after {retry_after:g}s, as the provider asked."


def _permanent_advice(channel: str, status: int) -> str:
    settings = f"TIDINGS_CHANNELS_{channel.upper()}_*"
    if status in (401, 403):
        return f"Check the credentials in {settings}; retrying will not help."
    if status in (404, 405, 410) or 300 <= status <= 399:
        return f"Check the URL in {settings}; retrying will not help."
    return "The provider rejected this message; retrying will not help."
