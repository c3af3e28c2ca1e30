"""`tidings run --until-idle` end to end, `tidings history`, and rebuilding the queue."""

from __future__ import annotations

import email
import json
from email.policy import default
from pathlib import Path

from tests.cli import clean_env, tidings
from tests.projection_helpers import code_event, user_added
from tests.worker_helpers import CRYPTO, KEY
from tidings.eventstore import Database, EventQuery
from tidings.notification.codes import CodeCipher
from tidings.notification.requests import notification_id


async def test_run_until_idle_takes_source_events_to_the_outbox(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    code = CodeCipher.from_settings(CRYPTO).encrypt("RESET-4821").model_dump()
    await db.store.append([user_added(), user_added("user-bob", preferred_language="de")])
    await db.store.append(
        [
            code_event("user.human.password.code.added", code=code),
            code_event("user.human.otp.sms.code.added", "user-bob", code=code),
            code_event("user.human.email.code.added", "user-bob", code=code, code_returned=True),
        ]
    )
    outbox = tmp_path / "outbox"
    env = clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(outbox),
    )
    result = tidings("run", "--until-idle", env=env)
    assert result.returncode == 0, result.stderr
    assert "2 notifications settled" in result.stdout
    assert f"outbox: {outbox}" in result.stdout
    assert "RESET-4821" not in result.stdout + result.stderr, "codes never in logs"

    files = sorted((outbox / "acme").iterdir())
    assert sorted(f.suffix for f in files) == [".eml", ".json"]
    eml = next(f for f in files if f.suffix == ".eml")
    mail = email.message_from_bytes(eml.read_bytes(), policy=default)
    assert "RESET-4821" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    sms = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert sms["to"] == "+41790000001" and "RESET-4821" in sms["text"]

    sent = await db.store.query(EventQuery(event_types=("notification.sent",)))
    assert len(sent) == 2
    nid = notification_id(
        instance_id="acme", aggregate_type="user", aggregate_id="user-ada", sequence=2
    )
    assert nid in {e.aggregate_id for e in sent}
    history = tidings("history", nid, env=env)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert "source event user.human.password.code.added" in lines[0]
    assert "requested PasswordReset via email for user user-ada" in lines[1]
    assert "sent on attempt 1 via filesystem" in lines[2]
    assert "recorded user.human.password.code.sent" in lines[3]
    as_json = [
        json.loads(line)
        for line in tidings("history", nid, "--format", "jsonl", env=env).stdout.splitlines()
    ]
    assert [row["event_type"] for row in as_json][-2:] == [
        "notification.sent",
        "user.human.password.code.sent",
    ]
    missing = tidings("history", "no-such-id", env=env)
    assert missing.returncode == 1 and "no notification no-such-id" in missing.stderr

    rebuilt = tidings("projections", "rebuild", "pending", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt pending: 0 open notifications" in rebuilt.stdout


def test_run_help_names_the_split_flags() -> None:
    result = tidings("run", "--help", env=clean_env())
    for flag in ("--workers", "--retry-workers", "--no-projector", "--until-idle"):
        assert flag in result.stdout


def test_a_process_that_would_run_nothing_says_so_and_fails(conninfo: str) -> None:
    """It used to exit 0 after a second, so a misconfigured pod restarted forever."""
    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    flags = tidings("run", "--workers", "0", "--retry-workers", "0", "--no-projector", env=env)
    assert flags.returncode == 1
    assert "nothing would run" in flags.stderr
    assert "--workers 0" in flags.stderr and "--retry-workers 0" in flags.stderr
    settings_env = clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_NOTIFICATIONS_WORKERS="0",
        TIDINGS_NOTIFICATIONS_RETRY_WORKERS="0",
    )
    configured = tidings("run", "--no-projector", env=settings_env)
    assert configured.returncode == 1
    assert "notifications.workers is 0 (TIDINGS_NOTIFICATIONS_WORKERS)" in configured.stderr
    assert "notifications.retry_workers is 0" in configured.stderr


async def test_run_says_what_it_runs_and_names_the_outbox_only_when_used(
    db: Database, conninfo: str
) -> None:
    code = CodeCipher.from_settings(CRYPTO).encrypt("RESET-4821").model_dump()
    await db.store.append([user_added()])
    await db.store.append([code_event("user.human.password.code.added", code=code)])
    base = {"TIDINGS_DATABASE_URL": conninfo, "TIDINGS_CRYPTO_KEYS": f"k1={KEY}"}

    only_projector = tidings(
        "run", "--until-idle", "--workers", "0", "--retry-workers", "0", env=clean_env(**base)
    )
    assert only_projector.returncode == 0, only_projector.stderr
    assert (
        "running: projector yes, 0 request and 0 retry workers; email via filesystem, "
        "sms via filesystem" in only_projector.stderr
    )
    assert "no request or retry workers in this process" in only_projector.stderr

    logged = tidings(
        "run", "--until-idle", "--no-projector",
        env=clean_env(**base, TIDINGS_CHANNELS_EMAIL="log", TIDINGS_CHANNELS_SMS="log"),
    )  # fmt: skip
    assert logged.returncode == 0, logged.stderr
    assert "running: projector no, 1 request and 1 retry workers; email via log" in logged.stderr
    assert "1 notifications settled" in logged.stdout
    assert "outbox" not in logged.stdout, "nothing was written to the filesystem outbox"
