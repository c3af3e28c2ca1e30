"""The SMTP channel against real SMTP servers (aiosmtpd) and misbehaving sockets."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from tests.tls_helpers import TLSFiles, write_tls_files
from tests.worker_helpers import CRYPTO, requested, user_added, users_projected
from tidings.cli.logs import LogFormat, configure_logging
from tidings.config import ChannelSettings, Settings, SMTPChannelSettings
from tidings.eventstore import Database
from tidings.notification.channels.base import EmailContent, OutgoingMessage, SMSContent
from tidings.notification.channels.smtp import SMTPChannel
from tidings.notification.errors import PermanentSendError, SendError, TransientSendError
from tidings.service import Service

USER = "mailer"
PASSWORD = "pw-Zq8v-never-in-logs"
FROM_ADDRESS = "noreply@tidings.test"
SHORT = timedelta(seconds=2)


@dataclass(frozen=True)
class Received:
    """What the server took in one DATA command."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    def parsed(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Recorder:
    """An aiosmtpd handler that keeps what it receives and refuses on cue."""

    def __init__(self, *, rcpt_reply: str | None = None, data_reply: str | None = None) -> None:
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.received: list[Received] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok: queued as 4F2A9C"


class FreePortController(Controller):
    """aiosmtpd's threaded controller on a port the OS picks (port=0).

    Controller pokes its own server once started, so it must know the real port
    by then; `_trigger_server` is the documented hook subclasses override.
    """

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it unannotated


StartServer = Callable[..., Controller]


@pytest.fixture
def smtp_server() -> Iterator[StartServer]:
    """Start aiosmtpd servers on 127.0.0.1; all are stopped at teardown."""
    controllers: list[Controller] = []

    def start(handler: Recorder, **smtp_options: Any) -> Controller:
        controller = FreePortController(
            handler,
            hostname="127.0.0.1",
            port=0,
            server_hostname="smtp.tidings.test",  # spares aiosmtpd a getfqdn() lookup
            ready_timeout=10,
            **smtp_options,
        )
        controller.start()
        controllers.append(controller)
        return controller

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return write_tls_files(tmp_path)


def accept_one_user(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """An aiosmtpd authenticator that knows USER with PASSWORD, and nobody else."""
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def auth_server(start: StartServer, handler: Recorder, tls_files: TLSFiles) -> Controller:
    """A submission server: STARTTLS required, then AUTH required before mail."""
    return start(
        handler,
        tls_context=tls_files.server_context(),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=accept_one_user,
    )


def settings_for(port: int, **overrides: Any) -> SMTPChannelSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": FROM_ADDRESS,
        "from_name": "Tidings Test",
        "timeout": SHORT,
    }
    values.update(overrides)
    return SMTPChannelSettings(**values)


def outgoing(attempt: int = 2, content: EmailContent | SMSContent | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id="0193e1f2-verify",
        instance_id="inst-1",
        attempt=attempt,
        message_type="email_verification",
        content=content
        or EmailContent(
            to_address="ada@example.org",
            to_name="Ada Lovelace",
            subject="Bestätigen Sie Ihre Adresse",
            html="<p>Ihr Code: <b>482913</b></p>",
            text="Grüße! Ihr Code: 482913",
        ),
    )


async def send(settings: SMTPChannelSettings, message: OutgoingMessage | None = None) -> str:
    channel = SMTPChannel(settings=settings)
    try:
        return await channel.send(message or outgoing())
    finally:
        await channel.close()


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything chained to it."""
    current: BaseException | None = error
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


async def test_plain_delivery(smtp_server: StartServer) -> None:
    handler = Recorder()
    server = smtp_server(handler)
    message = outgoing()
    settings = settings_for(server.port, reply_to="help@tidings.test")

    provider_id = await send(settings, message)

    (received,) = handler.received
    assert received.mail_from == FROM_ADDRESS
    assert received.rcpt_tos == ["ada@example.org"]
    mail = received.parsed()
    assert mail["From"] == f"Tidings Test <{FROM_ADDRESS}>"
    assert mail["To"] == "Ada Lovelace <ada@example.org>"
    assert mail["Reply-To"] == "help@tidings.test"
    assert mail["Subject"] == "Bestätigen Sie Ihre Adresse"
    assert mail["Date"] is not None
    assert mail["Message-ID"] == f"<{message.idempotency_key}@tidings.test>"
    assert mail["X-Tidings-Notification"] == message.notification_id
    assert mail.get_content_type() == "multipart/alternative"
    text_part = mail.get_body(("plain",))
    html_part = mail.get_body(("html",))
    assert isinstance(text_part, EmailMessage) and isinstance(html_part, EmailMessage)
    assert text_part.get_content().strip() == "Grüße! Ihr Code: 482913"
    assert html_part.get_content().strip() == "<p>Ihr Code: <b>482913</b></p>"
    assert provider_id == mail["Message-ID"]


async def test_message_id_is_the_same_for_every_attempt(smtp_server: StartServer) -> None:
    handler = Recorder()
    settings = settings_for(smtp_server(handler).port)

    first = await send(settings, outgoing(attempt=1))
    again = await send(settings, outgoing(attempt=1))
    next_attempt = await send(settings, outgoing(attempt=2))

    assert first == again == next_attempt
    assert [r.parsed()["Message-ID"] for r in handler.received] == [first, again, next_attempt]


async def test_no_reply_to_when_unset(smtp_server: StartServer) -> None:
    handler = Recorder()
    await send(settings_for(smtp_server(handler).port))
    assert handler.received[0].parsed()["Reply-To"] is None


async def test_starttls_with_auth_delivers(smtp_server: StartServer, tls_files: TLSFiles) -> None:
    handler = Recorder()
    server = auth_server(smtp_server, handler, tls_files)
    settings = settings_for(
        server.port,
        security="starttls",
        ca_file=tls_files.ca_file,
        username=USER,
        password=SecretStr(PASSWORD),
    )

    provider_id = await send(settings)

    (received,) = handler.received
    assert received.parsed()["Message-ID"] == provider_id


async def test_wrong_password_is_permanent_and_not_echoed(
    smtp_server: StartServer, tls_files: TLSFiles
) -> None:
    handler = Recorder()
    server = auth_server(smtp_server, handler, tls_files)
    wrong = "wrong-Pw-4711"
    settings = settings_for(
        server.port,
        security="starttls",
        ca_file=tls_files.ca_file,
        username=USER,
        password=SecretStr(wrong),
    )

    with pytest.raises(PermanentSendError) as caught:
        await send(settings)

    assert "535" in str(caught.value)
    assert "password" in str(caught.value)  # the advice names the setting...
    for error in causes(caught.value):  # ...but never its value
        assert wrong not in f"{error} {error!r}"
    assert caught.value.channel == "smtp"
    assert handler.received == []


@pytest.mark.parametrize(
    ("username", "expected"), [(USER, "AUTH extension"), (None, "530")], ids=["login", "anonymous"]
)
async def test_plain_text_to_a_tls_only_server_is_permanent(
    smtp_server: StartServer, tls_files: TLSFiles, username: str | None, expected: str
) -> None:
    server = auth_server(smtp_server, Recorder(), tls_files)
    settings = settings_for(server.port, username=username, password=SecretStr(PASSWORD))

    with pytest.raises(PermanentSendError, match=expected) as caught:
        await send(settings)

    assert "channels.smtp.security" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_implicit_tls_delivers(smtp_server: StartServer, tls_files: TLSFiles) -> None:
    handler = Recorder()
    server = smtp_server(handler, ssl_context=tls_files.server_context())
    settings = settings_for(server.port, security="tls", ca_file=tls_files.ca_file)

    provider_id = await send(settings)

    assert handler.received[0].parsed()["Message-ID"] == provider_id


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_untrusted_certificate_is_permanent(
    smtp_server: StartServer, tls_files: TLSFiles, security: str
) -> None:
    handler = Recorder()
    if security == "tls":
        server = smtp_server(handler, ssl_context=tls_files.server_context())
    else:
        server = smtp_server(handler, tls_context=tls_files.server_context())
    settings = settings_for(server.port, security=security)  # no ca_file: system CAs only

    with pytest.raises(PermanentSendError) as caught:
        await send(settings)

    assert "certificate" in str(caught.value)
    assert "ca_file" in str(caught.value)
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert handler.received == []


async def test_missing_ca_file_is_permanent(tmp_path: Path) -> None:
    settings = settings_for(1, security="tls", ca_file=tmp_path / "missing.pem")

    with pytest.raises(PermanentSendError, match="ca_file"):
        await send(settings)


async def test_starttls_not_offered_is_permanent(
    smtp_server: StartServer, tls_files: TLSFiles
) -> None:
    handler = Recorder()
    server = smtp_server(handler)  # no tls_context: no STARTTLS in the EHLO reply
    settings = settings_for(server.port, security="starttls", ca_file=tls_files.ca_file)

    with pytest.raises(PermanentSendError, match="does not offer STARTTLS"):
        await send(settings)

    assert handler.received == []


async def test_refused_recipient_is_permanent(smtp_server: StartServer) -> None:
    server = smtp_server(Recorder(rcpt_reply="550 5.1.1 No such user here"))

    with pytest.raises(PermanentSendError) as caught:
        await send(settings_for(server.port))

    assert "550 5.1.1 No such user here" in str(caught.value)
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert caught.value.channel == "smtp"


@pytest.mark.parametrize(
    "handler",
    [
        Recorder(rcpt_reply="451 4.3.0 Try again later"),
        Recorder(data_reply="451 4.3.0 Try again later"),
    ],
    ids=["rcpt", "data"],
)
async def test_temporary_failure_is_transient(smtp_server: StartServer, handler: Recorder) -> None:
    server = smtp_server(handler)

    with pytest.raises(TransientSendError) as caught:
        await send(settings_for(server.port))

    assert "451 4.3.0 Try again later" in str(caught.value)
    assert caught.value.channel == "smtp"


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]

        with pytest.raises(TransientSendError) as caught:
            await send(settings_for(port))

    assert f"127.0.0.1:{port}" in str(caught.value)
    assert caught.value.channel == "smtp"


@contextlib.asynccontextmanager
async def raw_server(*, hang_up: bool) -> AsyncIterator[int]:
    """A TCP server that hangs up on accept, or accepts and never says a word."""
    silent: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if hang_up:
            writer.close()
        else:
            silent.append(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in silent:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_server_hanging_up_is_transient() -> None:
    async with raw_server(hang_up=True) as port:
        with pytest.raises(TransientSendError) as caught:
            await send(settings_for(port))

    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_silent_server_times_out_transiently() -> None:
    async with raw_server(hang_up=False) as port:
        started = time.monotonic()
        with pytest.raises(TransientSendError) as caught:
            await send(settings_for(port, timeout=timedelta(seconds=1)))
        elapsed = time.monotonic() - started

    assert 0.9 <= elapsed < 5
    assert "1 s" in str(caught.value)


async def test_sms_is_permanent() -> None:
    sms = outgoing(content=SMSContent(to_number="+15551234567", text="Code 482913"))

    with pytest.raises(PermanentSendError, match="email only") as caught:
        await send(settings_for(1), sms)

    assert "482913" not in str(caught.value)
    assert caught.value.channel == "smtp"


async def test_password_never_logged(
    smtp_server: StartServer, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = Recorder()
    server = auth_server(smtp_server, handler, tls_files)
    wrong = "wrong-Pw-0815"

    def settings(password: str) -> SMTPChannelSettings:
        return settings_for(
            server.port,
            security="starttls",
            ca_file=tls_files.ca_file,
            username=USER,
            password=SecretStr(password),
        )

    with pytest.raises(SendError):
        await send(settings(wrong))
    await send(settings(PASSWORD))

    assert len(handler.received) == 1
    assert any(r.name == "tidings.notification.channels.smtp" for r in caplog.records)
    for record in caplog.records:
        logged = f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
        assert PASSWORD not in logged
        assert wrong not in logged
    assert PASSWORD not in caplog.text
    assert wrong not in caplog.text


class Scripted(Recorder):
    """Answers each DATA as scripted: "hang" takes the whole message and says nothing
    (for longer than the client waits), a reply code refuses it, None accepts it.
    Every message it took in is recorded, answered or not."""

    def __init__(self, *script: str | None) -> None:
        super().__init__()
        self.script = list(script)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
        reply = self.script.pop(0) if self.script else None
        if reply == "hang":
            await asyncio.sleep(3)  # past the client's 1 s timeout; the test goes on without it
            return "250 2.0.0 Ok: queued late"
        return reply or "250 2.0.0 Ok: queued"


@pytest.mark.parametrize(
    "first", ["451 4.3.0 Try again later", "hang"], ids=["refused-451", "answer-lost"]
)
async def test_a_retry_carries_the_same_message_id(smtp_server: StartServer, first: str) -> None:
    """Attempt 1 refused (451) or taken but never answered (the final 250 lost), attempt 2
    accepted: both carry one Message-ID, so a receiver that drops a repeated Message-ID
    shows the user one message."""
    handler = Scripted(first)
    settings = settings_for(smtp_server(handler).port, timeout=timedelta(seconds=1))

    with pytest.raises(TransientSendError):
        await send(settings, outgoing(attempt=1))
    accepted = await send(settings, outgoing(attempt=2))

    ids = [r.parsed()["Message-ID"] for r in handler.received]
    assert ids == [accepted, accepted]
    assert len(set(ids)) == 1, "a receiver dropping repeated ids keeps one message"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_code_in_any_log_line_at_debug_level(
    smtp_server: StartServer, db: Database, log_format: LogFormat
) -> None:
    """The server quotes the code in its 250 (accepted), its 451 (try later) and its 554
    (refused): with --log-level debug, in text and JSON, no line shows it, whichever
    logger wrote it (tidings' channel, aiosmtplib, the workers)."""
    code = "QUOTED-7731"
    handler = Scripted(
        f"250 2.0.0 Ok: queued, your code {code}",
        f"451 4.3.0 code {code} busy, try again",
        f"554 5.7.1 message with {code} rejected",
    )
    port = smtp_server(handler).port
    settings = Settings(
        channels=ChannelSettings(email="smtp", smtp=settings_for(port)), crypto=CRYPTO
    )
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    service = Service(db=db, settings=settings)
    try:
        configure_logging(level="debug", log_format=log_format, stream=out)
        await db.store.append([user_added()])
        await users_projected(db, settings)
        await db.store.append([requested(f"n-{i}", code=code) for i in range(3)])
        claimed = await service.pool.claim("request")
        outcomes = await service.pool.process(claimed)
    finally:
        await service.close()
        logging.captureWarnings(False)
        for added in [h for h in root.handlers if h not in saved[0]]:
            root.removeHandler(added)
        root.setLevel(saved[1])
    assert sorted(o.result for o in outcomes) == ["canceled", "retry", "sent"]
    assert len(handler.received) == 3, "the server took in all three (and quoted the code)"
    logged = out.getvalue()
    assert "(server said: 2.0.0 Ok: queued, your code ***)" in logged, "debug lines were on"
    assert code not in logged
