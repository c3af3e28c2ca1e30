"""Bad input is a clear error or one event's failure: never an outage, never a traceback.

Through the real CLI: a poison event already in the log is recorded as a
projection failure while the good events around it are sent; `events append`
refuses at the door what could never be stored or projected, and what only
tidings itself may write.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, tidings
from tests.projection_helpers import code_event, session_event, user_added
from tests.worker_helpers import CRYPTO, KEY
from tidings.config import EventSettings
from tidings.eventstore import Database, EventQuery, NewEvent
from tidings.notification.admission import EventRefused, check_producer_events
from tidings.notification.codes import CodeCipher

# Random, so that PostgreSQL cannot compress it below an index row's limit (2704 bytes).
LONG_ID = "u" + base64.b64encode(random.Random(10).randbytes(7500)).decode()[:9_999]


@pytest.fixture
def env(conninfo: str, tmp_path: Path) -> dict[str, str]:
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(tmp_path / "outbox"),
    )


def line(**fields: Any) -> str:
    event: dict[str, Any] = {
        "instance_id": "acme",
        "aggregate_type": "user",
        "aggregate_id": "user-ada",
        "event_type": "user.human.added",
        "payload": {"username": "ada"},
    }
    event.update(fields)
    return json.dumps(event)


async def test_a_poison_event_between_two_good_ones_fails_alone_and_both_are_sent(
    db: Database, env: dict[str, str], tmp_path: Path
) -> None:
    code = CodeCipher.from_settings(CRYPTO).encrypt("482913").model_dump()
    await db.store.append([user_added()])
    # Written past the door (an older tidings, a direct SQL insert): the store takes it.
    await db.store.append([session_event("session.otp.sms.challenged", "s-good-1", code=code)])
    await db.store.append(
        [session_event("session.otp.sms.challenged", "s-poison", user_id=LONG_ID, code=code)]
    )
    await db.store.append([session_event("session.otp.sms.challenged", "s-good-2", code=code)])

    result = tidings("run", "--until-idle", env=env, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 notifications settled" in result.stdout, result.stdout[-2000:]
    assert "database unavailable" not in result.stderr
    assert "unreachable" not in result.stderr
    sent = await db.store.query(EventQuery(event_types=("session.otp.sms.sent",)))
    assert sorted(e.aggregate_id for e in sent) == ["s-good-1", "s-good-2"]
    assert len(list((tmp_path / "outbox" / "acme").iterdir())) == 2

    status = tidings("projections", "status", "--format", "json", env=env)
    assert status.returncode == 0, status.stderr
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["requests"]["failures"] == 1, rows
    assert rows["requests"]["lag_events"] == 0, rows
    failure = rows["requests"]["recent_failures"][0]
    assert failure["aggregate_id"] == "s-poison"
    assert "54000" in failure["error"], failure


def test_events_append_refuses_oversized_ids_types_and_payloads(env: dict[str, str]) -> None:
    cases = {
        "aggregate_id is 10000 characters long; at most 200 (events.max_id_length)": line(
            aggregate_id=LONG_ID
        ),
        "payload.user_id is 10000 characters long; at most 200 (events.max_id_length)": line(
            aggregate_type="session",
            aggregate_id="s-1",
            event_type="session.otp.sms.challenged",
            payload={"user_id": LONG_ID, "code": "x"},
        ),
        "event_type is 300 characters long; at most 200 (events.max_type_length)": line(
            event_type="user." + "x" * 295
        ),
        "payload is 70015 bytes as JSON; at most 65536 (events.max_payload_bytes)": line(
            payload={"username": "a" * 70_000}
        ),
    }
    for message, stdin in cases.items():
        result = tidings("events", "append", "-", env=env, stdin=stdin)
        assert result.returncode == 1, result.stdout
        assert f"error: stdin line 1: {message}" in result.stderr, result.stderr
        assert "nothing was appended" in result.stderr
        assert "Traceback" not in result.stderr
    # A setting moves the bound, and the error names it.
    narrow = {**env, "TIDINGS_EVENTS_MAX_ID_LENGTH": "8"}
    result = tidings("events", "append", "-", env=narrow, stdin=line(aggregate_id="user-adaaa"))
    assert "aggregate_id is 10 characters long; at most 8 (events.max_id_length)" in result.stderr
    assert replayed(env) == []


def test_events_append_takes_only_producer_events_unless_allowed(env: dict[str, str]) -> None:
    forged = line(
        aggregate_type="notification",
        aggregate_id="n-1",
        event_type="notification.sent",
        payload={"channel": "smtp", "provider_message_id": "forged", "attempt": 1},
    )
    cases = {
        forged: "event_type notification.sent is written only by tidings itself",
        line(event_type="user.human.password.code.sent", payload={}): (
            "event_type user.human.password.code.sent is written only by tidings itself"
        ),
        line(aggregate_type="feed", event_type="feed.item.added"): (
            "event_type feed.item.added is not a producer event"
        ),
        line(aggregate_type="notification", event_type="user.removed", payload={}): (
            "aggregate_type notification does not fit event_type user.removed"
        ),
        line(instance_id="../outside"): "instance_id '../outside' is not an instance id",
    }
    for stdin, message in cases.items():
        result = tidings("events", "append", "-", env=env, stdin=stdin)
        assert result.returncode == 1
        assert f"stdin line 1: {message}" in result.stderr, result.stderr
    assert replayed(env) == []

    repaired = tidings("events", "append", "--allow-internal", "-", env=env, stdin=forged)
    assert repaired.returncode == 0, repaired.stderr
    assert "WARNING" in repaired.stderr and "--allow-internal" in repaired.stderr
    assert "line 1 notification.sent on acme notification/n-1" in repaired.stderr
    assert [r["event_type"] for r in replayed(env)] == ["notification.sent"]
    # Sizes hold for an operator too.
    too_long = line(
        aggregate_type="notification", event_type="notification.x", aggregate_id=LONG_ID
    )
    refused = tidings("events", "append", "--allow-internal", "-", env=env, stdin=too_long)
    assert refused.returncode == 1 and "events.max_id_length" in refused.stderr


def test_unreadable_input_is_an_error_with_a_line(env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(
        line().encode()
        + b"\n"
        + line(aggregate_id="u2").encode().replace(b"u2", b"u\xff2")
        + b"\n"
        + line(aggregate_id="u3", payload={"username": "a\u0000b"}).encode()
        + b"\n"
        + line(aggregate_id=LONG_ID).encode()
        + b"\n"
    )
    result = tidings("events", "append", source, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: {source} line 2: not valid UTF-8 (byte 0xff at column" in result.stderr
    assert (
        f"error: {source} line 3: payload.username holds a NUL character (\\u0000)" in result.stderr
    ), result.stderr
    assert f"error: {source} line 4: aggregate_id is 10000 characters long" in result.stderr
    assert "database" not in result.stderr
    assert replayed(env) == []


def test_the_check_is_one_function_for_every_door() -> None:
    """The HTTP API calls the same check: it names the event's index in the batch."""
    good = NewEvent(
        instance_id="acme", aggregate_type="user", aggregate_id="u", event_type="user.removed"
    )
    bad = good.model_copy(update={"aggregate_id": "x" * 300})
    check_producer_events([good], limits=EventSettings())
    with pytest.raises(EventRefused) as refused:
        check_producer_events([good, bad], limits=EventSettings())
    assert (refused.value.index, refused.value.field, refused.value.limit) == (
        1,
        "aggregate_id",
        "events.max_id_length",
    )
    assert code_event("user.human.password.code.added").event_type.startswith("user.")


def replayed(env: dict[str, str]) -> list[dict[str, Any]]:
    result = tidings("replay", "--format", "jsonl", env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(row) for row in result.stdout.splitlines()]
