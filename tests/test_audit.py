"""`tidings audit verify`: a realistic log passes; each way of breaking it is caught.

The clean log is produced the way production produces it: user and session
events are appended, the projector turns them into requests, and workers
send them through the real webhook channel to a local HTTP peer (sent at
once, sent after a retry, canceled, still waiting for a retry, not yet
claimed). Each corruption then breaks one thing with SQL or with an append
that bypasses the expected-sequence guard, and the test asserts exactly which
violations the audit reports: rule, instance, aggregate and sequence.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.cli import clean_env, tidings
from tests.http_peer import HttpPeer, Reply, serve_http
from tests.projection_helpers import code_event, make_projector, session_event, user_event
from tests.test_health import make_server
from tests.worker_helpers import CRYPTO, FixedClock, lowest, user_added, worker_settings
from tidings.audit import RULES, AuditReport, LogAuditor, Violation
from tidings.audit.users_copy import UsersCopy
from tidings.config import DatabaseSettings, Settings
from tidings.eventstore import Database, EventQuery, NewEvent, open_database
from tidings.notification.codes import CodeCipher
from tidings.notification.events import RetryRequested
from tidings.notification.requests import notification_id
from tidings.service import Service

Found = set[tuple[str, str, str, int | None]]


@dataclass(frozen=True)
class Log:
    """The notifications of the clean log, by what happened to them."""

    settings: Settings
    sent: str  # password reset, sent at once
    otp: str  # session OTP, sent at once
    retried: str  # email code: 503, then sent on attempt 2
    canceled: str  # password reset: 400, canceled (permanent error)
    retry_pending: str  # email code: 503, retry not due yet
    request_pending: str  # password reset, not claimed yet


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serve_http() as server:
        yield server


@pytest.fixture
async def log(db: Database, peer: HttpPeer) -> AsyncIterator[Log]:
    service, built = await build_log(db, peer)
    try:
        yield built
    finally:
        await service.close()


def encrypted_code() -> dict[str, Any]:
    return CodeCipher.from_settings(CRYPTO).encrypt("482913").model_dump()


async def build_log(db: Database, peer: HttpPeer) -> tuple[Service, Log]:
    clock = FixedClock()
    settings = worker_settings(
        peer.url, min_retry_delay=timedelta(seconds=2), max_retry_delay=timedelta(seconds=5)
    )
    service = Service(db=db, settings=settings, clock=clock, uniform=lowest)
    await db.store.append(
        [user_added(u) for u in ("user-ada", "user-bob", "user-cy", "user-dee", "user-eve")]
        + [
            user_event("user.human.profile.changed", "user-bob", first_name="Robert"),
            user_event("user.human.email.changed", "user-eve", email="eve@new.example.com"),
            user_event("user.human.email.verified", "user-eve"),
        ]
    )

    async def request(event: NewEvent) -> str:
        (appended,) = await db.store.append([event])
        await service.projector.catch_up()
        return notification_id(
            instance_id=event.instance_id,
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            sequence=appended.sequence,
        )

    async def attempt(kind: str = "request") -> list[str]:
        claimed = await service.pool.claim(kind)  # type: ignore[arg-type]
        return [o.result for o in await service.pool.process(claimed)]

    password = "user.human.password.code.added"
    email = "user.human.email.code.added"
    sent = await request(code_event(password, "user-ada", code=encrypted_code()))
    assert await attempt() == ["sent"]
    otp = await request(
        session_event("session.otp.email.challenged", "session-1", code=encrypted_code())
    )
    assert await attempt() == ["sent"]
    retried = await request(code_event(email, "user-bob", code=encrypted_code()))
    peer.script(Reply(503))
    assert await attempt() == ["retry"]
    clock.advance(timedelta(seconds=3))
    assert await attempt("retry") == ["sent"]
    canceled = await request(code_event(password, "user-cy", code=encrypted_code()))
    peer.script(Reply(400, body=b'{"error": "bad recipient"}'))
    assert await attempt() == ["canceled"]
    retry_pending = await request(code_event(email, "user-dee", code=encrypted_code()))
    peer.script(Reply(503))
    assert await attempt() == ["retry"]
    request_pending = await request(code_event(password, "user-eve", code=encrypted_code()))
    log = Log(settings, sent, otp, retried, canceled, retry_pending, request_pending)
    return service, log


async def verify(db: Database, log: Log, **options: Any) -> AuditReport:
    return await LogAuditor(db=db, settings=log.settings.notifications, **options).verify()


def found(report: AuditReport) -> Found:
    assert report.violation_count == len(report.violations), "nothing left out"
    return {(v.rule, v.instance_id, v.aggregate, v.sequence) for v in report.violations}


def only(report: AuditReport, rule: str) -> Violation:
    (violation,) = [v for v in report.violations if v.rule == rule]
    return violation


def n(notification: str) -> str:
    return f"notification/{notification}"


async def sql(conninfo: str, statement: str, *params: Any) -> None:
    """Change the database behind tidings' back, as a corruption does."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(statement.encode(), params)


async def events_of(db: Database, notification: str) -> list[tuple[int, str, dict[str, Any]]]:
    events = await db.store.query(
        EventQuery(aggregate_types=("notification",), aggregate_ids=(notification,))
    )
    return [(e.sequence, e.event_type, e.payload) for e in events]


def outcome(notification: str, event_type: str, payload: dict[str, Any]) -> NewEvent:
    """An outcome appended without the expected-sequence guard (a rogue writer)."""
    return NewEvent(
        instance_id="acme",
        aggregate_type="notification",
        aggregate_id=notification,
        event_type=event_type,
        payload=payload,
        creator="rogue",
    )


def canceled(reason: str, attempt: int) -> dict[str, Any]:
    return {"reason": reason, "error": "rogue", "attempt": attempt}


def sent(attempt: int) -> dict[str, Any]:
    return {"channel": "webhook", "provider_message_id": "rogue", "attempt": attempt}


# --- a clean log ------------------------------------------------------------------


async def test_a_clean_log_passes_and_says_what_it_checked(db: Database, log: Log) -> None:
    report = await verify(db, log)

    assert report.ok and report.violations == () and report.violation_count == 0
    checked = report.checked
    assert checked["notifications"] == 6
    assert checked["requests"] == 6
    assert checked["sent"] == 3
    assert checked["pending_rows"] == 2
    assert checked["users"] == 5
    assert checked["users_events_replayed"] == 8
    assert checked["users_not_compared"] == 0
    # 5 users + 1 session + 6 notifications.
    assert checked["aggregates"] == 12
    total = len(await db.store.query(EventQuery()))
    assert checked["events"] == total
    assert checked["last_position"] == await db.store.last_position()


async def test_the_cli_passes_a_clean_log_as_table_and_as_json(
    db: Database, log: Log, conninfo: str
) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    table = tidings("audit", "verify", env=env)
    assert table.returncode == 0, table.stderr
    assert "ok: every rule holds" in table.stdout
    assert "(6 notifications)" in table.stdout and "2 pending rows, 5 users" in table.stdout

    result = tidings("audit", "verify", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["violations"] == [] and document["violation_count"] == 0
    assert document["checked"]["notifications"] == 6
    assert document["checked"]["events"] == len(await db.store.query(EventQuery()))


def test_usage_errors_exit_2(conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    assert tidings("audit", "verify", "--format", "xml", env=env).returncode == 2
    assert tidings("audit", "verify", "--max-violations", "-1", env=env).returncode == 2
    bad_settings = clean_env(TIDINGS_DATABASE_URL=conninfo, TIDINGS_NOTIFICATIONS_MAX_ATTEMPTS="0")
    assert tidings("audit", "verify", env=bad_settings).returncode == 2


# --- rules of one notification ----------------------------------------------------


async def test_a_notification_that_does_not_start_with_its_request(
    db: Database, log: Log, conninfo: str
) -> None:
    await db.store.append([outcome("n-orphan", "notification.sent", sent(1))])
    # One requested twice: the queue keeps the first request, a rebuild the second.
    ((_, _, request),) = await events_of(db, log.request_pending)
    await db.store.append([outcome(log.request_pending, "notification.requested", request)])
    # And one whose request (sequence 1) was deleted: also a gap.
    await sql(
        conninfo,
        "DELETE FROM tidings.events WHERE aggregate_id = %s AND sequence = 1",
        log.canceled,
    )

    report = await verify(db, log)

    assert not report.ok
    assert found(report) == {
        ("starts-with-requested", "acme", "notification/n-orphan", 1),
        ("starts-with-requested", "acme", n(log.request_pending), 2),
        ("pending-queue", "acme", n(log.request_pending), 2),
        ("starts-with-requested", "acme", n(log.canceled), 2),
        ("sequence-gap", "acme", n(log.canceled), 2),
    }
    details = {(v.aggregate_id, v.rule): v.detail for v in report.violations}
    assert details[(log.request_pending, "starts-with-requested")] == (
        "notification.requested again at sequence 2; only sequence 1 requests"
    )
    assert details[(log.canceled, "starts-with-requested")] == (
        "the first event is notification.canceled at sequence 2; a notification starts with "
        "notification.requested at sequence 1"
    )
    orphan = next(v for v in report.violations if v.aggregate_id == "n-orphan")
    assert "the first event is notification.sent at sequence 1" in orphan.detail
    assert orphan.position is not None


async def test_settled_twice_and_events_after_settling(db: Database, log: Log) -> None:
    await db.store.append(
        [
            outcome(log.sent, "notification.canceled", canceled("expired", 0)),
            outcome(log.canceled, "notification.retry.requested", {"attempt": 2}),
        ]
    )

    report = await verify(db, log)

    assert found(report) == {
        ("settled-once", "acme", n(log.sent), 3),
        ("settled-once", "acme", n(log.canceled), 3),
        # A queue rebuilt from this log would hold the canceled one again (its
        # last event asks for a retry), the live queue does not.
        ("pending-queue", "acme", n(log.canceled), 3),
    }
    twice = next(v for v in report.violations if v.aggregate_id == log.sent)
    assert "notification.sent at sequence 2 is settled again by notification.canceled" in (
        twice.detail
    )


async def test_a_skipped_attempt_number(db: Database, log: Log) -> None:
    (_, (seq, _, retry)) = await events_of(db, log.retry_pending)
    assert seq == 2
    skipping = RetryRequested.model_validate(retry).model_copy(update={"attempt": 3})
    await db.store.append(
        [
            outcome(
                log.retry_pending,
                "notification.retry.requested",
                skipping.model_dump(mode="json"),
            )
        ]
    )

    report = await verify(db, log)

    assert found(report) == {("attempts", "acme", n(log.retry_pending), 3)}
    assert "attempt 3 after 1 failed, expected attempt 2" in report.violations[0].detail


async def test_attempts_beyond_max_attempts(db: Database, log: Log) -> None:
    # The request is still pending; a rogue writer retries it thrice and cancels
    # a fourth attempt, with max_attempts at 3.
    (_, (_, _, retry)) = await events_of(db, log.retry_pending)
    base = RetryRequested.model_validate(retry)
    await db.store.append(
        [
            outcome(
                log.retry_pending,
                "notification.retry.requested",
                base.model_copy(update={"attempt": k}).model_dump(mode="json"),
            )
            for k in (2, 3)
        ]
        + [outcome(log.retry_pending, "notification.canceled", canceled("max_attempts", 4))]
    )

    report = await verify(db, log)

    assert log.settings.notifications.max_attempts == 3
    assert found(report) == {("attempts", "acme", n(log.retry_pending), 5)}
    assert "attempt 4 is over notifications.max_attempts (3)" in report.violations[0].detail


async def test_a_cancel_that_miscounts_its_attempts(db: Database, log: Log) -> None:
    # expired: the worker canceled before attempting, so it counts 0 attempts, not 1.
    await db.store.append(
        [outcome(log.request_pending, "notification.canceled", canceled("expired", 1))]
    )

    report = await verify(db, log)

    assert found(report) == {("attempts", "acme", n(log.request_pending), 2)}
    assert "(expired) counts 1 attempts after 0 failed, expected 0" in (report.violations[0].detail)


async def test_payloads_that_do_not_read_as_their_model(
    db: Database, log: Log, conninfo: str
) -> None:
    await sql(
        conninfo,
        "UPDATE tidings.events SET payload = payload - 'channel'"
        " WHERE aggregate_id = %s AND event_type = 'notification.sent'",
        log.sent,
    )
    # An unknown event on an open notification also closes it in the log's eyes:
    # the queue no longer matches.
    await db.store.append([outcome(log.request_pending, "notification.escalated", {})])

    report = await verify(db, log)

    assert found(report) == {
        ("unreadable-payload", "acme", n(log.sent), 2),
        ("unknown-event-type", "acme", n(log.request_pending), 2),
        ("pending-queue", "acme", n(log.request_pending), 1),
    }
    assert "channel: Field required" in only(report, "unreadable-payload").detail


# --- the log's structure ----------------------------------------------------------


async def test_a_sequence_gap(db: Database, log: Log, conninfo: str) -> None:
    # The failed first attempt disappears: a gap, and the sent attempt 2 now
    # follows no failed one.
    await sql(
        conninfo,
        "DELETE FROM tidings.events WHERE aggregate_id = %s AND sequence = 2",
        log.retried,
    )
    # A gap on a session aggregate: every aggregate type is checked.
    await db.store.append(
        [
            NewEvent(
                instance_id="acme",
                aggregate_type="session",
                aggregate_id="session-1",
                event_type="session.checked",
            )
        ]
    )
    await sql(
        conninfo,
        "UPDATE tidings.events SET sequence = 7"
        " WHERE aggregate_id = 'session-1' AND event_type = 'session.checked'",
    )

    report = await verify(db, log)

    assert found(report) == {
        ("sequence-gap", "acme", n(log.retried), 3),
        ("attempts", "acme", n(log.retried), 3),
        ("sequence-gap", "acme", "session/session-1", 7),
    }
    gaps = {v.aggregate: v.detail for v in report.violations if v.rule == "sequence-gap"}
    assert gaps[n(log.retried)] == ("the aggregate goes from 1 to sequence 3: sequence 2 missing")
    assert gaps["session/session-1"] == (
        "the aggregate goes from 2 to sequence 7: sequence 3..6 missing"
    )


async def test_a_request_whose_source_event_is_missing_or_another(
    db: Database, log: Log, conninfo: str
) -> None:
    # cy's code event (user-cy sequence 2, its last) is deleted; eve's source
    # event is now of another type than the request names.
    await sql(
        conninfo,
        "DELETE FROM tidings.events WHERE aggregate_type = 'user' AND aggregate_id = 'user-cy'"
        " AND event_type = 'user.human.password.code.added'",
    )
    await sql(
        conninfo,
        "UPDATE tidings.events SET event_type = 'user.human.otp.email.code.added'"
        " WHERE aggregate_type = 'user' AND aggregate_id = 'user-eve'"
        " AND event_type = 'user.human.password.code.added'",
    )

    report = await verify(db, log)

    assert found(report) == {
        ("source-exists", "acme", n(log.canceled), 1),
        ("source-exists", "acme", n(log.request_pending), 1),
    }
    details = {v.aggregate_id: v.detail for v in report.violations}
    assert details[log.canceled] == (
        "its source event user/user-cy sequence 2 (user.human.password.code.added) "
        "is not in the log"
    )
    assert details[log.request_pending] == (
        "its source event user/user-eve sequence 4 is user.human.otp.email.code.added, "
        "the request names user.human.password.code.added"
    )


async def test_a_sent_notification_whose_source_sent_event_is_missing(
    db: Database, log: Log, conninfo: str
) -> None:
    await sql(
        conninfo,
        "DELETE FROM tidings.events WHERE aggregate_type = 'session'"
        " AND event_type = 'session.otp.email.sent'",
    )

    report = await verify(db, log)

    assert found(report) == {("source-sent", "acme", n(log.otp), 2)}
    assert report.violations[0].detail == (
        "sent, but its source session/session-1 has no session.otp.email.sent for this notification"
    )


async def test_a_source_sent_event_for_another_notification_does_not_count(
    db: Database, log: Log, conninfo: str
) -> None:
    await sql(
        conninfo,
        "UPDATE tidings.events SET payload = jsonb_set(payload, '{notification_id}', '\"x\"')"
        " WHERE aggregate_id = 'user-ada' AND event_type = 'user.human.password.code.sent'",
    )

    report = await verify(db, log)

    assert found(report) == {("source-sent", "acme", n(log.sent), 2)}


# --- read models ------------------------------------------------------------------


async def test_a_pending_queue_row_altered_removed_or_added(
    db: Database, log: Log, conninfo: str
) -> None:
    # Leases are the workers' business, never a violation.
    await sql(
        conninfo,
        "UPDATE tidings.pending_notifications SET leased_until = now(), lease_owner = 'w',"
        " claims = 9",
    )
    await sql(
        conninfo,
        "UPDATE tidings.pending_notifications SET attempts = 2 WHERE notification_id = %s",
        log.retry_pending,
    )
    await sql(
        conninfo,
        "DELETE FROM tidings.pending_notifications WHERE notification_id = %s",
        log.request_pending,
    )
    await sql(
        conninfo,
        "INSERT INTO tidings.pending_notifications (instance_id, notification_id, kind,"
        " sequence, attempts, requested_at, due_at) VALUES ('acme', %s, 'request', 1, 0,"
        " now(), now())",
        log.sent,
    )

    report = await verify(db, log)

    assert found(report) == {
        ("pending-queue", "acme", n(log.retry_pending), 2),
        ("pending-queue", "acme", n(log.request_pending), 1),
        ("pending-queue", "acme", n(log.sent), 1),
    }
    details = {v.aggregate_id: v.detail for v in report.violations}
    assert details[log.retry_pending] == "the queue row differs from the log in attempts"
    assert "not in the pending queue: no worker will send it" in details[log.request_pending]
    assert "not open in the log" in details[log.sent]


async def test_a_users_row_altered_or_removed(db: Database, log: Log, conninfo: str) -> None:
    await sql(
        conninfo,
        "UPDATE tidings.users SET verified_email = 'evil@example.com', display_name = 'Bobby'"
        " WHERE user_id = 'user-bob'",
    )
    await sql(conninfo, "DELETE FROM tidings.users WHERE user_id = 'user-dee'")

    report = await verify(db, log)

    assert found(report) == {
        # bob's row was last changed by his profile change: user-bob sequence 2.
        ("users-read-model", "acme", "user/user-bob", 2),
        ("users-read-model", "acme", "user/user-dee", 1),
    }
    details = {v.aggregate_id: v.detail for v in report.violations}
    assert details["user-bob"] == (
        "tidings.users differs from a replay of the log in display_name, verified_email"
    )
    assert "evil@example.com" not in details["user-bob"], "no addresses in the report"
    assert details["user-dee"] == (
        "in a replay of the log (at sequence 1) but not in tidings.users"
    )
    # The audit's replay went to a private copy: the live table is as it was.
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT count(*) FROM tidings.users")
        assert await cur.fetchone() == (4,)


async def test_the_users_model_is_compared_up_to_its_checkpoint(db: Database, log: Log) -> None:
    # User events the projector has not handled yet are not the model's fault.
    await db.store.append(
        [user_event("user.human.profile.changed", "user-ada", first_name="Augusta")]
    )
    report = await verify(db, log)
    assert report.ok, report.violations


def in_a_thread_of_its_own(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` on its own event loop, as another process would, and wait for it."""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(work)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and not failed, failed


async def change_ada_and_project(db_settings: DatabaseSettings) -> None:
    async with open_database(db_settings) as other:
        await other.store.append(
            [user_event("user.human.profile.changed", "user-ada", first_name="Augusta")]
        )
        await make_projector(other).catch_up()


async def test_users_projected_while_the_copy_is_replayed_are_caught_up(
    db: Database, log: Log, db_settings: DatabaseSettings
) -> None:
    changed: list[int] = []

    def meanwhile(events: int) -> None:
        if not changed:  # the first progress comes from the users replay
            changed.append(events)
            in_a_thread_of_its_own(change_ada_and_project(db_settings))

    report = await LogAuditor(db=db, settings=log.settings.notifications).verify(progress=meanwhile)

    assert changed == [8]
    assert report.ok, report.violations
    assert report.checked["users_events_replayed"] == 9
    assert report.checked["users_not_compared"] == 0


async def test_users_projected_after_the_copy_are_left_out_not_reported(
    db: Database, log: Log, db_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The projector handles ada's change after the copy's last catch-up and
    # before the snapshot: the live model has it, the copy does not.
    replay_to = UsersCopy.replay_to

    async def once(copy: UsersCopy, upto: int, **kwargs: Any) -> int:
        if copy.upto:
            in_a_thread_of_its_own(change_ada_and_project(db_settings))
            return 0
        return await replay_to(copy, upto, **kwargs)

    monkeypatch.setattr(UsersCopy, "replay_to", once)

    report = await verify(db, log)

    assert report.ok, report.violations
    assert report.checked["users_events_replayed"] == 8
    assert report.checked["users_not_compared"] == 1


# --- reporting --------------------------------------------------------------------


async def test_violations_are_all_counted_but_only_some_listed(
    db: Database, log: Log, conninfo: str
) -> None:
    await sql(conninfo, "DELETE FROM tidings.pending_notifications")
    await sql(
        conninfo,
        "UPDATE tidings.users SET display_name = 'x'",
    )

    report = await verify(db, log, max_violations=3)

    assert report.violation_count == 7 and len(report.violations) == 3 and report.truncated
    assert report.by_rule == {"pending-queue": 2, "users-read-model": 5}

    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    result = tidings("audit", "verify", "--format", "json", "--max-violations", "1", env=env)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["truncated"] is True
    assert document["violation_count"] == 7 and len(document["violations"]) == 1
    assert document["violations_by_rule"] == {"pending-queue": 2, "users-read-model": 5}
    (first,) = document["violations"]
    assert set(first) == {
        "rule", "instance_id", "aggregate_type", "aggregate_id", "sequence", "position", "detail",
    }  # fmt: skip
    assert document["advice"]["pending-queue"] == RULES["pending-queue"].advice
    assert "tidings projections rebuild pending" in document["advice"]["pending-queue"]

    table = tidings("audit", "verify", env=env)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RULE", "INSTANCE", "AGGREGATE", "SEQ", "POSITION", "DETAIL"]
    assert "FAILED: 7 violations (pending-queue 2, users-read-model 5)" in table.stdout
    assert "rebuild with `tidings projections rebuild users`" in table.stdout
    row = next(line for line in lines if line.startswith("pending-queue"))
    assert log.request_pending in row and "no worker will send it" in row


async def test_a_progress_bar_on_a_terminal(db: Database, log: Log, conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    returncode, stdout, stderr = run_with_terminal_stderr(["audit", "verify"], env)
    assert returncode == 0, stderr
    assert "verifying the log" in stderr
    assert "ok: every rule holds" in stdout and "verifying" not in stdout


def run_with_terminal_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    parent, child = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tidings", *args],
            stdout=subprocess.PIPE,
            stderr=child,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    return result.returncode, result.stdout.decode(), b"".join(chunks).decode(errors="replace")


# --- on a live system -------------------------------------------------------------


async def test_the_audit_reads_one_snapshot_and_holds_no_writer_back(
    db: Database, log: Log, conninfo: str
) -> None:
    """While the audit's snapshot is open, the platform appends and a worker claims.

    The audit holds no transaction id (so the projector's horizon is not held
    back) and no lock in their way (both run with a short lock_timeout, which
    would fail them); and it reports the log as it was when it started.
    """
    seen: list[dict[str, Any]] = []
    events_before = len(await db.store.query(EventQuery()))

    def meanwhile(_: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            audit = conn.execute(
                "SELECT backend_xid::text, backend_xmin::text, state FROM pg_stat_activity"
                " WHERE application_name = 'tidings audit'"
            ).fetchone()
            assert audit is not None
            if audit[2] != "idle in transaction" or seen:
                return  # the users copy phase, or done already
            conn.execute("SET lock_timeout = '5s'")
            conn.execute(
                "SELECT tidings.append_events(ARRAY['acme'], ARRAY['user'], ARRAY['user-ada'],"
                " ARRAY[NULL]::bigint[], ARRAY['user.human.phone.removed'], ARRAY['{}'::jsonb],"
                " ARRAY[''], ARRAY[''], 'tidings_events')"
            )
            claimed = conn.execute(
                "UPDATE tidings.pending_notifications SET leased_until = now() + interval '1m',"
                " lease_owner = 'w', claims = claims + 1"
                " WHERE notification_id IN (SELECT notification_id"
                "   FROM tidings.pending_notifications FOR UPDATE SKIP LOCKED)"
                " RETURNING notification_id"
            ).fetchall()
            seen.append({"xid": audit[0], "xmin": audit[1], "claimed": len(claimed)})

    report = await LogAuditor(db=db, settings=log.settings.notifications).verify(progress=meanwhile)

    assert seen == [{"xid": None, "xmin": seen[0]["xmin"], "claimed": 2}]
    assert seen[0]["xmin"] is not None, "the audit was inside its snapshot"
    assert report.ok, report.violations
    assert report.checked["events"] == events_before, "the append came after the snapshot"
    assert len(await db.store.query(EventQuery())) == events_before + 1
    # The next audit sees the appended event and the leases, and is still content.
    again = await verify(db, log)
    assert again.ok and again.checked["events"] == events_before + 1


async def test_rebuild_pending_writes_what_the_audit_compares_with(
    db: Database, log: Log, conninfo: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT notification_id, kind, attempts FROM tidings.pending_from_log ORDER BY 1"
        )
        from_log = await cur.fetchall()
        await conn.execute("DELETE FROM tidings.pending_notifications")
        cur = await conn.execute("SELECT tidings.rebuild_pending()")
        assert await cur.fetchone() == (2,)
        cur = await conn.execute(
            "SELECT notification_id, kind, attempts FROM tidings.pending_notifications ORDER BY 1"
        )
        assert await cur.fetchall() == from_log
    assert sorted(from_log) == sorted(
        [(log.retry_pending, "retry", 1), (log.request_pending, "request", 0)]
    )
    assert (await verify(db, log)).ok


def test_every_rule_says_what_to_do() -> None:
    assert set(RULES) == {
        "starts-with-requested", "settled-once", "attempts", "marks", "sequence-gap",
        "source-exists", "source-sent", "pending-queue", "users-read-model",
        "unreadable-payload", "unknown-event-type", "position-reachable",
    }  # fmt: skip
    for rule in RULES.values():
        assert rule.holds and rule.advice
    with pytest.raises(ValueError, match="unknown audit rule"):
        Violation("no-such-rule", "acme", "user", "u", 1, None, "x")


async def test_an_event_beyond_any_position_handed_out_is_reported_and_explains_readiness(
    db: Database, log: Log, conninfo: str
) -> None:
    """A row written by hand at a future position: the projector can never reach it."""
    await make_projector(db).catch_up()
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_current_xact_id()::text::bigint")
        row = await cur.fetchone()
        assert row is not None
        far = (int(row[0]) + 1_000_000) << 16
        await conn.execute(
            "INSERT INTO tidings.events (instance_id, aggregate_type, aggregate_id, sequence,"
            " event_type, payload, created_at, position)"
            " VALUES ('acme', 'user', 'user-by-hand', 1, 'user.human.added',"
            " '{\"username\": \"hand\"}', now() - interval '1 minute', %s)",
            (far,),
        )
    await make_projector(db).catch_up()

    report = await verify(db, log)
    violation = only(report, "position-reachable")
    assert (violation.aggregate, violation.sequence, violation.position) == (
        "user/user-by-hand", 1, far,
    )  # fmt: skip
    assert "the projector cannot reach it" in violation.detail

    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    result = tidings("audit", "verify", env=env)
    assert result.returncode != 0
    assert "position-reachable" in result.stdout
    assert "delete the row and append the event again" in result.stdout + result.stderr

    async with make_server(db, ready_max_projector_lag=timedelta(milliseconds=100)) as server:
        async with httpx.AsyncClient(timeout=10) as client:
            ready = await client.get(f"http://127.0.0.1:{server.address[1]}/readyz")
    assert ready.status_code == 503
    assert "exceeds 100ms" in ready.text
    assert "it cannot clear: 1 event lies beyond any position the store hands out" in ready.text
    assert "tidings audit verify" in ready.text
