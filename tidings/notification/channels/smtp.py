"""Email over SMTP (aiosmtplib), with every failure classified once, here.

One connection per message: connect, (STARTTLS), (AUTH), MAIL/RCPT/DATA, QUIT.
Servers drop idle connections on their own schedule (Postfix after 300 s) and an
SMTP connection carries one transaction at a time, so a kept connection would
need staleness detection, reconnects and a lock or pool for concurrent sends.
Connecting per message costs one handshake per notification and keeps every
failure local to the message it concerns; `close()` has nothing to release.

Classification: connection refused, reset or dropped, timeouts and any 4xx
reply are transient (a later attempt may succeed); any 5xx reply, an untrusted
TLS certificate, a failed TLS handshake, a missing STARTTLS or AUTH extension
and an unsendable message are permanent. Error texts name the step, host:port
and the server's code and text; never the password or the message's content.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import TypeVar

import aiosmtplib

from tidings.config import SMTPChannelSettings
from tidings.notification.channels.base import EmailContent, OutgoingMessage
from tidings.notification.errors import PermanentSendError, SendError, TransientSendError

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=BaseException)

CHANNEL = "smtp"

# Characters kept in the left part of a Message-ID (RFC 5322 dot-atom text,
# minus a few that only invite trouble); anything else becomes "_".
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


class SMTPChannel:
    """Sends email through one SMTP server, one connection per message."""

    name = CHANNEL

    def __init__(self, *, settings: SMTPChannelSettings) -> None:
        self._settings = settings
        self._where = f"{settings.host}:{settings.port}"
        self._tls_context: ssl.SSLContext | None = None
        if settings.username is not None and settings.security == "none":
            log.warning(
                "smtp: username is set but security is none; the password will cross "
                "the network unencrypted to %s (set channels.smtp.security to starttls "
                "or tls)",
                self._where,
            )

    async def send(self, message: OutgoingMessage) -> str:
        """Deliver one email; return its Message-ID (stable across re-sends)."""
        content = message.content
        if not isinstance(content, EmailContent):
            raise PermanentSendError(
                f"the smtp channel sends email only; {message.describe()} is an SMS: "
                "route SMS to an SMS channel (channels.sms)",
                channel=CHANNEL,
            )
        mime = build_email(message, content, self._settings)
        message_id = str(mime["Message-ID"])
        reply = await self._deliver(mime, content.to_address)
        log.debug(
            "smtp: %s accepted by %s as %s (server said: %s)",
            message.describe(),
            self._where,
            message_id,
            message.scrub(reply),  # a server may quote the message, code included
        )
        return message_id

    async def close(self) -> None:
        """Nothing to release: every send opens and closes its own connection."""
        self._tls_context = None

    async def _deliver(self, mime: EmailMessage, recipient: str) -> str:
        """Run one SMTP session for one message; return the server's DATA reply."""
        settings = self._settings
        tls_context = await self._get_tls_context() if settings.security != "none" else None
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            timeout=settings.timeout.total_seconds(),
            use_tls=settings.security == "tls",
            start_tls=False,  # never opportunistic: STARTTLS below only when asked for
            tls_context=tls_context,
        )
        plain: asyncio.BaseTransport | None = None  # the socket's own, under a STARTTLS layer
        try:
            with self._classified("connect"):
                await client.connect()
            plain = client.transport
            if settings.security == "starttls":
                await self._start_tls(client)
            if settings.username is not None:
                with self._classified("login"):
                    await client.login(settings.username, self._password())
            with self._classified("send"):
                _, reply = await client.send_message(
                    mime, sender=settings.from_address, recipients=[recipient]
                )
            await self._quit(client)
            return reply
        finally:
            # aiosmtplib's close() skips a transport that is already closing
            # (e.g. with unsent data after an error) and forgets it; abort it
            # ourselves, then give the loop the turn in which the socket closes,
            # so no error path leaves a socket to the garbage collector. A
            # STARTTLS that failed may leave the plain transport under a TLS one
            # (or under none): abort that too.
            transport = client.transport
            client.close()
            for layer in {transport, plain}:
                if isinstance(layer, asyncio.WriteTransport):
                    layer.abort()
            await asyncio.sleep(0)

    async def _start_tls(self, client: aiosmtplib.SMTP) -> None:
        """Upgrade to TLS, refusing to go on in clear when the server cannot."""
        with self._classified("starttls"):
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise PermanentSendError(
                    f"SMTP server {self._where} does not offer STARTTLS but "
                    "channels.smtp.security is starttls: enable STARTTLS on the server, "
                    "use security tls if the port speaks implicit TLS (usually 465), "
                    "or check host and port",
                    channel=CHANNEL,
                )
            await client.starttls()

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        """Say goodbye; the message is already accepted, so failures here are moot."""
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.debug("smtp: QUIT to %s failed after delivery: %s", self._where, exc)

    def _password(self) -> str:
        password = self._settings.password
        return password.get_secret_value() if password is not None else ""

    async def _get_tls_context(self) -> ssl.SSLContext:
        """The client TLS context, built once (file reads run off the event loop)."""
        if self._tls_context is None:
            ca_file = self._settings.ca_file
            try:
                self._tls_context = await asyncio.to_thread(
                    ssl.create_default_context, cafile=ca_file
                )
            except (OSError, ValueError) as exc:
                raise PermanentSendError(
                    f"channels.smtp.ca_file {ca_file} cannot be loaded ({exc}): point it "
                    "at a readable PEM file holding the CA certificate of the SMTP server",
                    channel=CHANNEL,
                ) from exc
        return self._tls_context

    @contextmanager
    def _classified(self, step: str) -> Iterator[None]:
        """Turn whatever one SMTP step raises into a Transient or PermanentSendError."""
        try:
            yield
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            raise classify(
                exc, step=step, where=self._where, timeout=self._settings.timeout.total_seconds()
            ) from exc


def build_email(
    message: OutgoingMessage, content: EmailContent, settings: SMTPChannelSettings
) -> EmailMessage:
    """The MIME message: headers, the text part and its HTML alternative."""
    mime = EmailMessage()
    headers = {
        "From": formataddr((settings.from_name, settings.from_address)),
        "To": formataddr((content.to_name, content.to_address)),
        "Reply-To": settings.reply_to,
        "Subject": content.subject,
        "Date": formatdate(usegmt=True),
        "Message-ID": message_id(message, settings.from_address),
        "X-Tidings-Notification": message.notification_id,
    }
    for header, value in headers.items():
        if value is None:
            continue
        try:
            mime[header] = value
        except ValueError as exc:  # a CR or LF, say: header injection
            raise PermanentSendError(
                f"{message.describe()} cannot be sent: its {header} header is invalid "
                f"({exc}); fix the template, the recipient or channels.smtp settings",
                channel=CHANNEL,
            ) from exc
    mime.set_content(content.text)
    mime.add_alternative(content.html, subtype="html")
    return mime


def message_id(message: OutgoingMessage, from_address: str) -> str:
    """A Message-ID fixed by the idempotency key, so receivers can drop a re-send."""
    local = _UNSAFE_ID_CHARS.sub("_", message.idempotency_key).strip(".") or "_"
    domain = from_address.rpartition("@")[2]
    if not domain or _UNSAFE_ID_CHARS.search(domain):
        domain = "tidings"
    return f"<{local}@{domain}>"


def classify(exc: BaseException, *, step: str, where: str, timeout: float) -> SendError:
    """Decide, once, whether a failed SMTP step is worth another attempt."""
    prefix = f"SMTP {step} at {where} failed"
    certificate = _find_in_chain(exc, ssl.SSLCertVerificationError)
    if certificate is not None:
        return PermanentSendError(
            f"{prefix}: the server's TLS certificate is not trusted "
            f"({certificate.verify_message}); set channels.smtp.ca_file to the CA that "
            "signed it, or fix the server's certificate (it must be valid for the host)",
            channel=CHANNEL,
        )
    tls = _find_in_chain(exc, ssl.SSLError)
    if tls is not None and not isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return PermanentSendError(
            f"{prefix}: TLS handshake failed ({tls.reason or tls}); check "
            "channels.smtp.security against the port (tls = implicit TLS, usually 465; "
            "starttls = usually 587) and the server's TLS setup",
            channel=CHANNEL,
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _recipients_refused(exc, prefix)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(exc.code, exc.message, step=step, prefix=prefix)
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and its subclasses too
        return TransientSendError(
            f"{prefix}: no answer within {timeout:g} s; the server is slow or "
            "unreachable, a later attempt may succeed",
            channel=CHANNEL,
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError | ssl.SSLError):
        return TransientSendError(
            f"{prefix}: connection lost or refused ({exc}); a later attempt may succeed "
            "once the server is reachable",
            channel=CHANNEL,
        )
    if isinstance(exc, ValueError):
        return PermanentSendError(
            f"{prefix}: the message cannot be sent over SMTP ({type(exc).__name__}); "
            "check the from and to addresses",
            channel=CHANNEL,
        )
    if step == "login":
        advice = (
            "set channels.smtp.security to starttls or tls, or unset channels.smtp.username "
            "if the server needs no login"
        )
    else:
        advice = "check channels.smtp settings against what the server offers"
    return PermanentSendError(f"{prefix}: {str(exc).rstrip('.')}; {advice}", channel=CHANNEL)


def _reply_error(code: int, text: str, *, step: str, prefix: str) -> SendError:
    """An error reply: 5xx is permanent, anything else (4xx) transient."""
    said = f"the server replied {code} {text}"
    if code < 500:
        return TransientSendError(
            f"{prefix}: {said}; a temporary refusal, a later attempt may succeed",
            channel=CHANNEL,
        )
    if step == "login":
        advice = "check channels.smtp.username and channels.smtp.password"
    elif code == 530:  # RFC 3207 / 4954: STARTTLS or AUTH must come first
        advice = (
            "the server wants STARTTLS or a login first: check channels.smtp.security, "
            "username and password"
        )
    else:
        advice = "the server will not take this message; fix the cause it names"
    return PermanentSendError(f"{prefix}: {said}; {advice}", channel=CHANNEL)


def _recipients_refused(exc: aiosmtplib.SMTPRecipientsRefused, prefix: str) -> SendError:
    """Every recipient refused: permanent when every refusal is a 5xx."""
    replies = "; ".join(f"{refusal.code} {refusal.message}" for refusal in exc.recipients)
    if all(refusal.code >= 500 for refusal in exc.recipients):
        return PermanentSendError(
            f"{prefix}: the server refused the recipient ({replies}); fix the address",
            channel=CHANNEL,
        )
    return TransientSendError(
        f"{prefix}: the server deferred the recipient ({replies}); a later attempt may succeed",
        channel=CHANNEL,
    )


def _find_in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first exception of `kind` in exc's chain of causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
