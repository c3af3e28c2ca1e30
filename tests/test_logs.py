"""Log lines: JSON from a real `tidings run`, with the fields operators need and no secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.cli import clean_env, tidings
from tests.ops_helpers import planned_sink
from tests.projection_helpers import code_event, user_added
from tests.worker_helpers import CRYPTO, KEY, WEBHOOK_SECRET, worker_env
from tidings.cli.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, configure_logging
from tidings.config import load_settings
from tidings.config.masking import IN_FLIGHT
from tidings.eventstore import Database
from tidings.notification.codes import CodeCipher
from tidings.notification.requests import notification_id

CODE = "RESET-4821"
SMTP_PASSWORD = "smtp-pa55word-1"
TWILIO_TOKEN = "twilio-token-2"
HOOK_PASSWORD = "hook-pa55word-3"
ATTEMPT_FIELDS = (
    "instance_id", "notification_id", "attempt", "message_type", "channel", "outcome",
    "duration_ms",
)  # fmt: skip


def nid(user_id: str, sequence: int = 2) -> str:
    return notification_id(
        instance_id="acme", aggregate_type="user", aggregate_id=user_id, sequence=sequence
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of stderr as a JSON object (failing on any line that is not one)."""
    lines = []
    for number, line in enumerate(stderr.splitlines(), start=1):
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"stderr line {number} is not JSON: {line!r}") from exc
        assert isinstance(document, dict), line
        assert {"time", "level", "logger", "message"} <= set(document), line
        datetime.fromisoformat(document["time"])
        lines.append(document)
    return lines


async def test_json_lines_of_a_batch_run_carry_attempt_fields_and_no_secret(
    db: Database, conninfo: str
) -> None:
    encrypted = CodeCipher.from_settings(CRYPTO).encrypt(CODE).model_dump()
    await db.store.append([user_added("user-ada"), user_added("user-bob"), user_added("user-cy")])
    await db.store.append(
        [
            code_event("user.human.password.code.added", "user-ada", code=encrypted),
            code_event("user.human.password.code.added", "user-bob", code=encrypted),
            code_event("user.human.password.code.added", "user-cy", code=encrypted),
            code_event("user.human.password.code.added", "user-ada", expiry="soon", code=None),
        ]
    )
    with planned_sink(userinfo=f"hook-user:{HOOK_PASSWORD}@") as sink:
        # bob's first attempt is retried; cy's is refused by a receiver that echoes the code.
        sink.plan = {
            nid("user-bob"): [(503, b"busy, try later")],
            nid("user-cy"): [(400, f"code {CODE} rejected".encode())],
        }
        env = clean_env(
            TIDINGS_DATABASE_URL=conninfo,
            **worker_env(sink.url),
            TIDINGS_CHANNELS_SMTP_USERNAME="tidings",
            TIDINGS_CHANNELS_SMTP_PASSWORD=SMTP_PASSWORD,
            TIDINGS_CHANNELS_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
            TIDINGS_NOTIFICATIONS_MIN_RETRY_DELAY="200ms",
            TIDINGS_NOTIFICATIONS_MAX_RETRY_DELAY="500ms",
            TIDINGS_NOTIFICATIONS_RETRY_REQUEUE_EVERY="200ms",
        )
        result = tidings(
            "--log-format", "json", "--log-level", "debug", "run", "--until-idle", env=env
        )
        delivered = sink.deliveries()
    assert result.returncode == 0, result.stderr
    assert len(delivered) == 4
    lines = json_lines(result.stderr)

    attempts = [line for line in lines if "outcome" in line and "attempt" in line]
    got = {(a["notification_id"], a["attempt"], a["outcome"]) for a in attempts}
    assert got == {
        (nid("user-ada"), 1, "sent"),
        (nid("user-bob"), 1, "retry"),
        (nid("user-bob"), 2, "sent"),
        (nid("user-cy"), 1, "canceled"),
    }
    for line in attempts:
        assert set(ATTEMPT_FIELDS) <= set(line), line
        assert line["logger"] == "tidings.workers"
        assert (line["instance_id"], line["message_type"], line["channel"]) == (
            "acme", "PasswordReset", "webhook",
        )  # fmt: skip
        assert line["requested_channel"] == "email"
        assert isinstance(line["duration_ms"], float)
        assert line["level"] == ("warning" if line["outcome"] == "canceled" else "info")
    (canceled,) = (a for a in attempts if a["outcome"] == "canceled")
    assert canceled["reason"] == "permanent_error"

    starts = [line for line in lines if line["message"].startswith("worker pool ")]
    assert starts and all(line["owner"] for line in starts)
    assert any(line.get("request_workers") == 1 and "bulk_limit" in line for line in starts)
    stops = [line for line in starts if "stopped after" in line["message"]]
    assert sum(sum(line["attempts"].values()) for line in stops) == 4

    (skipped,) = (line for line in lines if line["message"].startswith("projection requests "))
    assert skipped["level"] == "warning"
    assert (skipped["projection"], skipped["event_type"], skipped["aggregate_id"]) == (
        "requests", "user.human.password.code.added", "user-ada",
    )  # fmt: skip
    assert skipped["sequence"] == 3 and isinstance(skipped["position"], int)
    assert "expiry" in skipped["error"]

    # The receiver echoed the code: the worker masks it out of the error before
    # the error goes into the event log (and the batch summary on stdout).
    secrets = {
        "the code": CODE,
        "its ciphertext": encrypted["value"],
        "the crypto key": KEY,
        "the webhook signing secret": WEBHOOK_SECRET.removeprefix("whsec_"),
        "the webhook URL's password": HOOK_PASSWORD,
        "the SMTP password": SMTP_PASSWORD,
        "the Twilio token": TWILIO_TOKEN,
    }
    for what, secret in secrets.items():
        assert secret not in result.stderr, f"{what} is in the log"
    # The receiver's answer quoting the code is recorded (and printed) masked.
    assert CODE not in result.stdout and "code *** rejected" in result.stdout


def test_the_setting_chooses_json_and_the_option_wins() -> None:
    env = clean_env(
        TIDINGS_DATABASE_URL="postgresql://tidings:db-pa55word@127.0.0.1:1/tidings",
        TIDINGS_DATABASE_CONNECT_TIMEOUT="1s",
        TIDINGS_OPERATIONS_LOG_FORMAT="json",
    )
    as_json = tidings("run", env=env)
    assert as_json.returncode == 1
    line = json_lines(as_json.stderr)[-1]
    assert line["level"] == "error" and line["exit_code"] == 1
    assert "cannot connect to the database" in line["message"]
    assert "db-pa55word" not in as_json.stderr

    as_text = tidings("--log-format", "text", "run", env=env)
    assert as_text.returncode == 1
    assert as_text.stderr.splitlines()[-1].startswith("error: cannot connect to the database")
    assert not as_text.stderr.startswith("{")
    assert "db-pa55word" not in as_text.stderr

    bad = tidings("run", env={**env, "TIDINGS_OPERATIONS_LOG_FORMAT": "xml"})
    assert bad.returncode == 2
    assert "operations.log_format (env TIDINGS_OPERATIONS_LOG_FORMAT) = 'xml'" in bad.stderr


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("tidings.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_text_lines_carry_the_time_as_the_standard_formatter_writes_it() -> None:
    """The date and time are made once a second, and still read as logging's own."""
    mine, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    start = datetime(2024, 5, 1, 11, 59, 58, tzinfo=UTC).timestamp()
    for step in range(0, 4000, 7):  # every 7 ms over 4 s: within seconds and across them
        made = record("sent %s", "n-1")
        made.created = start + step / 1000
        made.msecs = (made.created - int(made.created)) * 1000
        assert mine.format(made) == standard.format(made)
        assert mine.formatTime(made, "%H:%M") == standard.formatTime(made, "%H:%M")


def test_json_formatter_writes_extras_and_exceptions_as_fields() -> None:
    formatter = JsonFormatter()
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    line = json.loads(formatter.format(record("sent %s", "n-1", attempt=2, at=at, ids=["a"])))
    assert line["message"] == "sent n-1"
    assert (line["logger"], line["level"]) == ("tidings.test", "info")
    assert (line["attempt"], line["at"], line["ids"]) == (2, str(at), ["a"])
    assert "args" not in line and "msg" not in line and "exception" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    line = json.loads(formatter.format(failed))
    assert isinstance(line["exception"], str)
    assert "Traceback" in line["exception"] and "ValueError: boom" in line["exception"]
    assert "\n" not in formatter.format(failed), "one line per record"


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_secrets_are_masked_in_messages_extras_and_exceptions(
    formatter_class: type[JsonFormatter] | type[TextFormatter],
) -> None:
    formatter = formatter_class(secrets=['s3cr"et-1', "pa55word"])
    try:
        raise RuntimeError('login with pa55word and s3cr"et-1 failed')
    except RuntimeError:
        failed = record("using %s", "pa55word", url="https://u:pa55word@h/x", note='s3cr"et-1')
        failed.exc_info = sys.exc_info()
    text = formatter.format(failed)
    assert "pa55word" not in text and "s3cr" not in text
    assert "***" in text


def test_configure_logging_replaces_its_handler_and_quiets_noisy_loggers() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    try:
        configure_logging(level="debug", log_format="text", stream=io.StringIO())
        configure_logging(level="debug", log_format="json", secrets=["hush-hush"], stream=out)
        ours = [h for h in root.handlers if h not in saved[0]]
        assert len(ours) == 1, "a second call replaces the first one's handler"
        assert logging.getLogger("httpx").level == logging.WARNING
        logging.getLogger("tidings.test").debug("said hush-hush", extra={"owner": "w1"})
        line = json.loads(out.getvalue())
        assert (line["message"], line["owner"], line["level"]) == ("said ***", "w1", "debug")
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])


def test_every_configured_secret_is_known_and_endpoint_urls_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TIDINGS_CONFIG", "TIDINGS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIDINGS_DATABASE_URL", "postgresql://t:db-pass@db/tidings")
    monkeypatch.setenv("TIDINGS_CHANNELS_WEBHOOK_URL", "https://u:hook-pass@h/x?token=tok-123&a=1")
    monkeypatch.setenv("TIDINGS_CHANNELS_WEBHOOK_SIGNING_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("TIDINGS_CHANNELS_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("TIDINGS_CRYPTO_KEYS", f"k1={KEY}")
    settings = load_settings()
    assert set(settings.secret_values()) == {
        "db-pass", "hook-pass", "tok-123", SMTP_PASSWORD, KEY,
        WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"),
    }  # fmt: skip
    shown = json.dumps(settings.masked())
    for secret in settings.secret_values():
        assert secret not in shown
    webhook = settings.masked()["channels"]["webhook"]["url"]
    assert webhook == "https://u:***@h/x?token=***&a=1"


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_codes_in_flight_are_masked_in_every_line_of_every_logger(
    formatter_class: type[JsonFormatter] | type[TextFormatter],
) -> None:
    """What IN_FLIGHT holds is masked whoever logs it (a channel written tomorrow, a
    library), in the message and in extras, with its JSON spelling too; once released,
    it is an ordinary string again."""
    formatter = formatter_class()
    code = 'c0de"77'
    line = record("provider said %s", f"queued {code}", quoted=code)
    line.name = "tidings.notification.channels.brand_new"
    with IN_FLIGHT.holding([code, "other-9"]), IN_FLIGHT.holding([code]):
        masked = formatter.format(line)
        assert "c0de" not in masked and "***" in masked
    assert "c0de" in formatter.format(line), "released when no attempt holds it"
