"""The filesystem and log channels, the registry, and the preview and codes commands."""

from __future__ import annotations

import email
import json
import logging
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from tests.cli import clean_env, tidings
from tidings.config import ChannelChoice, ChannelSettings, CryptoSettings
from tidings.notification.channels.base import EmailContent, OutgoingMessage, SMSContent
from tidings.notification.channels.filesystem import FilesystemChannel
from tidings.notification.channels.log import LogChannel
from tidings.notification.channels.registry import ChannelRegistry
from tidings.notification.codes import CodeCipher, generate_key
from tidings.notification.errors import PermanentSendError

EMAIL = EmailContent(
    to_address="ada@example.com",
    to_name="Ada Lovelace",
    subject="Reset your password",
    html="<p>Your code is 482913</p>",
    text="Your code is 482913",
)
SMS = SMSContent(to_number="+41790000001", text="482913 is your code")


def message(content: EmailContent | SMSContent, attempt: int = 1) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id="n-42", instance_id="acme", attempt=attempt,
        message_type="PasswordReset", content=content,
    )  # fmt: skip


async def test_filesystem_writes_eml_and_json(tmp_path: Path) -> None:
    channel = FilesystemChannel(outbox=tmp_path)
    eml_path = Path(await channel.send(message(EMAIL)))
    assert eml_path == tmp_path / "acme" / "n-42.eml"
    parsed = email.message_from_bytes(eml_path.read_bytes(), policy=default)  # noqa: ASYNC240
    assert isinstance(parsed, EmailMessage)
    assert parsed["To"] == "Ada Lovelace <ada@example.com>"
    assert parsed["Subject"] == "Reset your password"
    assert parsed["Message-ID"] == "<n-42@tidings>"
    assert parsed.get_body(("plain",)).get_content().strip() == "Your code is 482913"  # type: ignore[union-attr]
    assert "482913" in parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]

    sms_path = Path(await channel.send(message(SMS)))
    assert sms_path.suffix == ".json"
    assert json.loads(sms_path.read_text())["to"] == "+41790000001"  # noqa: ASYNC240


async def test_filesystem_one_file_per_notification_whatever_the_attempt(tmp_path: Path) -> None:
    """A re-send and a later attempt overwrite the same file: one message per notification."""
    channel = FilesystemChannel(outbox=tmp_path)
    await channel.send(message(SMS))
    await channel.send(message(SMS))
    await channel.send(message(SMS, attempt=2))
    assert sorted(p.name for p in (tmp_path / "acme").iterdir()) == ["n-42.json"]


async def test_filesystem_unwritable_outbox_is_permanent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    channel = FilesystemChannel(outbox=blocker)
    with pytest.raises(PermanentSendError, match="cannot write into the outbox"):
        await channel.send(message(SMS))


async def test_log_channel_never_logs_content(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    channel = LogChannel()
    assert await channel.send(message(EMAIL)) == "log-n-42"
    await channel.send(message(SMS))
    assert "482913" not in caplog.text
    assert "ada@example.com" not in caplog.text and "+41790000001" not in caplog.text
    assert "notification n-42 attempt 1 (instance acme)" in caplog.text


def test_registry_per_instance_choice(tmp_path: Path) -> None:
    settings = ChannelSettings(
        email="filesystem", sms="log", instances={"acme": ChannelChoice(email="log")}
    )
    registry = ChannelRegistry(settings=settings, data_folder=tmp_path)
    assert registry.channel_for("acme", "email").name == "log"
    assert registry.channel_for("globex", "email").name == "filesystem"
    assert registry.channel_for("globex", "sms").name == "log"
    assert registry.channel_for("acme", "sms") is registry.channel_for("globex", "sms")


def test_preview_renders_and_writes_files(tmp_path: Path) -> None:
    env = clean_env()
    shown = tidings("preview", "PasswordReset", "--lang", "de", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Subject: tidings: Passwort zurücksetzen" in shown.stdout
    assert "123456" in shown.stdout  # the sample code, never a real one
    sms = tidings("preview", "VerifySMSOTP", "--channel", "sms", env=env)
    assert sms.stdout.strip() == "123456 is your tidings sign-in code. Never share it."
    html = tidings("preview", "InitCode", "--output", tmp_path / "m.html", env=env)
    assert html.returncode == 0, html.stderr
    assert (tmp_path / "m.html").read_text().lstrip().startswith("<!DOCTYPE html>")
    eml = tidings("preview", "InitCode", "--output", tmp_path / "m.eml", env=env)
    assert eml.returncode == 0
    assert b"Subject:" in (tmp_path / "m.eml").read_bytes()
    unknown = tidings("preview", "NoSuchType", env=env)
    assert unknown.returncode == 2


def test_preview_reports_a_broken_override_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "templates" / "acme"
    folder.mkdir(parents=True)
    (folder / "texts.en.yaml").write_text(
        "PasswordReset:\n  title: ok\n  greeting: Hi {{ user.nickname }}\n"
    )
    env = clean_env(TIDINGS_TEMPLATES_DIR=str(tmp_path / "templates"))
    result = tidings("preview", "PasswordReset", "--instance", "acme", env=env)
    assert result.returncode == 1
    assert f"{folder / 'texts.en.yaml'}:3" in result.stderr
    assert "nickname" in result.stderr
    assert "Traceback" not in result.stderr
    fine = tidings("preview", "PasswordReset", "--instance", "globex", env=env)
    assert fine.returncode == 0, fine.stderr


def test_codes_encrypt_reads_stdin_and_round_trips() -> None:
    key = generate_key()
    env = clean_env(TIDINGS_CRYPTO_KEYS=f"k1={key}", TIDINGS_CRYPTO_ACTIVE_KEY="k1")
    result = tidings("codes", "encrypt", env=env, stdin="482913\nABCDEF\n")
    assert result.returncode == 0, result.stderr
    values = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["key_id"] for v in values] == ["k1", "k1"]
    assert "482913" not in result.stdout + result.stderr
    cipher = CodeCipher.from_settings(CryptoSettings(keys={"k1": key}, active_key="k1"))
    assert [cipher.decrypt(v) for v in values] == ["482913", "ABCDEF"]

    no_keys = tidings("codes", "encrypt", env=clean_env(), stdin="482913\n")
    assert no_keys.returncode == 2
    assert "active_key" in no_keys.stderr
    generated = tidings("codes", "generate-key", env=clean_env()).stdout.strip()
    assert len(generated) == 44


def test_codes_encrypt_never_shifts_lines() -> None:
    """Three codes in, three out, in order; a blank line is refused, never skipped."""
    key = generate_key()
    env = clean_env(TIDINGS_CRYPTO_KEYS=f"k1={key}", TIDINGS_CRYPTO_ACTIVE_KEY="k1")
    cipher = CodeCipher.from_settings(CryptoSettings(keys={"k1": key}, active_key="k1"))
    result = tidings("codes", "encrypt", env=env, stdin="111111\n\n333333\n")
    assert result.returncode == 1
    assert "error: stdin line 2: blank; every line must hold a code" in result.stderr
    assert "nothing was encrypted" in result.stderr
    assert result.stdout == "", "no output a script could pair with the wrong input"
    assert "111111" not in result.stderr and "333333" not in result.stderr

    bad = tidings("codes", "encrypt", env=env, stdin="111111\n  \n")
    assert bad.returncode == 1 and "stdin line 2: blank" in bad.stderr

    three = tidings("codes", "encrypt", env=env, stdin="111111\r\n222222\n333333")
    assert three.returncode == 0, three.stderr
    values = [json.loads(line) for line in three.stdout.splitlines()]
    assert [cipher.decrypt(v) for v in values] == ["111111", "222222", "333333"]


def test_config_show_masks_channel_secrets() -> None:
    env = clean_env(
        TIDINGS_CHANNELS_SMTP_PASSWORD="smtp-pass-9",
        TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN="twilio-tok-9",
        TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET="whsec_c2VjcmV0",
        TIDINGS_CRYPTO_KEYS=f"k1={generate_key()}",
    )
    result = tidings("config", "show", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("smtp-pass-9", "twilio-tok-9", "c2VjcmV0"):
        assert secret not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["channels"]["smtp"]["password"] == "***"
    assert shown["crypto"]["keys"] == {"k1": "***"}
