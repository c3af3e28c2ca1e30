"""`tidings notifications list`, run for real against a log the projector and workers wrote.

The scenario goes through the whole flow: users and code events are appended,
the projector requests the messages, and the workers (fixed clock, lowest
backoff, one notification per claim) send them to a local webhook receiver
that answers as scripted. That leaves seven notifications, in this order of
request:

    sent          acme    user-ada  PasswordReset  sent on the first attempt
    sent_retried  globex  user-cy   PasswordReset  503 first, then sent
    bounced       acme    user-ada  VerifySMSOTP   400: canceled, permanent_error
    exhausted     globex  user-cy   InitCode       503 twice: canceled, max_attempts
    retrying      acme    user-bob  VerifyEmail    503 (a long body): retry due later
    leased        globex  user-cy   InviteUser     claimed by a worker, not sent yet
    pending       acme    user-bob  VerifyPhone    requested only
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.cli import clean_env, tidings
from tests.http_peer import HttpPeer, Reply, serve_http
from tests.projection_helpers import code_event
from tests.worker_helpers import (
    CRYPTO,
    FixedClock,
    lowest,
    notification_events,
    requested,
    user_added,
    worker_settings,
)
from tidings.eventstore import Database, EventQuery, NewEvent
from tidings.notification.codes import CodeCipher
from tidings.notification.events import RetryRequested, Sent
from tidings.service import Service
from tidings.views.sql import query

CODE = "482913"
CIPHER = CodeCipher.from_settings(CRYPTO).encrypt(CODE).model_dump()
OWNER = "worker-7:4242:abc123"
RETRY_DELAY = timedelta(minutes=2)
LONG_BODY = b"the provider is overloaded, please come back later " * 8
ORDER = ["sent", "sent_retried", "bounced", "exhausted", "retrying", "leased", "pending"]
ALL = list(reversed(ORDER))  # newest first


@dataclass
class Scenario:
    ids: dict[str, str] = field(default_factory=dict)  # name -> notification id
    requested_at: dict[str, datetime] = field(default_factory=dict)
    clock: FixedClock = field(default_factory=FixedClock)

    def names(self, rows: list[dict[str, Any]]) -> list[str]:
        by_id = {nid: name for name, nid in self.ids.items()}
        return [by_id[row["notification_id"]] for row in rows]


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serve_http() as server:
        yield server


@pytest.fixture
async def scenario(db: Database, peer: HttpPeer) -> AsyncIterator[Scenario]:
    scenario = Scenario()
    settings = worker_settings(
        peer.url,
        bulk_limit=1,
        max_attempts=2,
        max_ttl=timedelta(hours=1),
        min_retry_delay=RETRY_DELAY,
        max_retry_delay=timedelta(minutes=10),
        transaction_duration=timedelta(minutes=10),
    )
    service = Service(db=db, settings=settings, clock=scenario.clock, uniform=lowest, owner=OWNER)
    try:
        await db.store.append(
            [user_added("user-ada"), user_added("user-bob"),
             user_added("user-cy", instance_id="globex")]
        )  # fmt: skip

        async def request(name: str, event_type: str, user: str, instance: str = "acme") -> None:
            await db.store.append([code_event(event_type, user, instance_id=instance, code=CIPHER)])
            await service.projector.catch_up()
            newest = (await db.store.query(EventQuery(event_types=("notification.requested",))))[-1]
            assert newest.aggregate_id not in scenario.ids.values()
            scenario.ids[name] = newest.aggregate_id
            scenario.requested_at[name] = newest.created_at

        async def attempt(kind: str, *answers: Reply) -> None:
            peer.script(*answers)
            claimed = await service.pool.claim(kind)  # type: ignore[arg-type]
            assert len(claimed) == 1
            await service.pool.process(claimed)

        await request("sent", "user.human.password.code.added", "user-ada")
        await attempt("request", Reply.json({"id": "prov-1"}))
        await request("sent_retried", "user.human.password.code.added", "user-cy", "globex")
        await attempt("request", Reply(503, body=b"busy"))
        scenario.clock.advance(RETRY_DELAY)
        await attempt("retry", Reply.json({"id": "prov-2"}))
        await request("bounced", "user.human.otp.sms.code.added", "user-ada")
        await attempt("request", Reply(400, body=b"bad recipient"))
        await request("exhausted", "user.human.initialization.code.added", "user-cy", "globex")
        await attempt("request", Reply(503, body=b"busy"))
        scenario.clock.advance(RETRY_DELAY)
        await attempt("retry", Reply(503, body=b"still busy"))
        await request("retrying", "user.human.email.code.added", "user-bob")
        await attempt("request", Reply(503, body=LONG_BODY))
        await request("leased", "user.human.invite.code.added", "user-cy", "globex")
        assert len(await service.pool.claim("request")) == 1  # held, never sent
        await request("pending", "user.human.phone.code.added", "user-bob")
        yield scenario
    finally:
        await service.close()


def moment(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def listed(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = tidings("notifications", "list", *args, env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def env(conninfo: str) -> dict[str, str]:
    return clean_env(TIDINGS_DATABASE_URL=conninfo, COLUMNS="160")


async def test_each_filter_selects_exactly_its_notifications(
    scenario: Scenario, env: dict[str, str]
) -> None:
    at = {name: moment.isoformat() for name, moment in scenario.requested_at.items()}
    cases: list[tuple[list[str], list[str]]] = [
        ([], ALL),
        (["--instance", "globex"], ["leased", "exhausted", "sent_retried"]),
        (["--instance", "globex", "--instance", "acme"], ALL),
        (["--instance", "nowhere"], []),
        (["--user", "user-bob"], ["pending", "retrying"]),
        (["--user", "user-cy", "--instance", "acme"], []),
        (["--state", "pending"], ["pending", "leased"]),
        (["--state", "retrying"], ["retrying"]),
        (["--state", "sent"], ["sent_retried", "sent"]),
        (["--state", "canceled"], ["exhausted", "bounced"]),
        (["--state", "Pending", "--state", "canceled"],
         ["pending", "leased", "exhausted", "bounced"]),
        (["--type", "PasswordReset"], ["sent_retried", "sent"]),
        (["--type", "verifyemail", "--type", "InviteUser"], ["leased", "retrying"]),
        (["--user", "user-cy", "--state", "canceled"], ["exhausted"]),
        (["--instance", "acme", "--type", "VerifyPhone", "--state", "pending"], ["pending"]),
        (["--since", at["retrying"]], ["pending", "leased", "retrying"]),
        (["--until", at["retrying"]], ["exhausted", "bounced", "sent_retried", "sent"]),
        (["--since", at["sent_retried"], "--until", at["exhausted"]], ["bounced", "sent_retried"]),
        (["--since", "1h"], ALL),
        (["--since", "1h", "--state", "sent", "--state", "retrying"],
         ["retrying", "sent_retried", "sent"]),
    ]  # fmt: skip
    for args, expected in cases:
        assert scenario.names(listed(env, *args)) == expected, args


async def test_limit_keeps_the_newest_and_says_more_matched(
    scenario: Scenario, env: dict[str, str]
) -> None:
    result = tidings("notifications", "list", "--limit", "3", env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert scenario.names(rows) == ["pending", "leased", "retrying"]
    assert "showing the newest 3; more notifications match" in result.stderr

    exact = tidings("notifications", "list", "--limit", "7", env=env)
    assert len(exact.stdout.splitlines()) == 7
    assert exact.stderr == "", "no note when nothing was left out"

    canceled = tidings("notifications", "list", "--state", "canceled", "--limit", "1", env=env)
    assert scenario.names([json.loads(canceled.stdout)]) == ["exhausted"]
    assert "more notifications match" in canceled.stderr


async def test_each_state_shows_attempts_errors_and_times(
    db: Database, scenario: Scenario, env: dict[str, str]
) -> None:
    found = listed(env)
    rows = dict(zip(scenario.names(found), found, strict=True))
    for name, row in rows.items():
        assert moment(row["requested_at"]) == scenario.requested_at[name], name

    retrying = rows["retrying"]
    (_, retry_event) = await notification_events(db, scenario.ids["retrying"])
    retry = RetryRequested.model_validate(retry_event.payload)
    assert retry.due_at == scenario.clock.now + RETRY_DELAY
    assert retrying == retrying | {
        "instance_id": "acme", "user_id": "user-bob", "message_type": "VerifyEmail",
        "channel": "email", "state": "retrying", "attempts": 1, "cancel_reason": None,
        "last_error": retry.error, "settled_at": None, "leased_until": None,
    }  # fmt: skip
    assert moment(retrying["next_due_at"]) == retry.due_at
    assert "503" in retry.error and "the provider is overloaded" in retry.error

    exhausted = rows["exhausted"]
    assert (exhausted["state"], exhausted["cancel_reason"], exhausted["attempts"]) == (
        "canceled", "max_attempts", 2,
    )  # fmt: skip
    assert "attempt 2 of 2 failed" in exhausted["last_error"]
    assert exhausted["next_due_at"] is None and exhausted["settled_at"] is not None
    assert (exhausted["instance_id"], exhausted["user_id"]) == ("globex", "user-cy")

    bounced = rows["bounced"]
    assert (bounced["state"], bounced["cancel_reason"], bounced["attempts"]) == (
        "canceled", "permanent_error", 1,
    )  # fmt: skip
    assert "400" in bounced["last_error"]
    assert (bounced["message_type"], bounced["channel"]) == ("VerifySMSOTP", "sms")

    sent_retried = rows["sent_retried"]
    (*_, sent_event) = await notification_events(db, scenario.ids["sent_retried"])
    sent = Sent.model_validate(sent_event.payload)
    assert sent_retried == sent_retried | {
        "state": "sent", "attempts": 2, "sent_via": "webhook", "provider_message_id": "prov-2",
        "next_due_at": None,
    }  # fmt: skip
    assert moment(sent_retried["settled_at"]) == sent_event.created_at
    assert sent.attempt == 2
    assert "503" in sent_retried["last_error"], "the error of the attempt that failed before"

    assert rows["sent"] == rows["sent"] | {
        "state": "sent", "attempts": 1, "last_error": None, "provider_message_id": "prov-1",
    }  # fmt: skip

    leased = rows["leased"]
    assert leased == leased | {
        "state": "pending", "attempts": 0, "lease_owner": OWNER, "message_type": "InviteUser",
    }  # fmt: skip
    assert moment(leased["leased_until"]) == scenario.clock.now + timedelta(minutes=10)

    pending = rows["pending"]
    assert pending == pending | {
        "state": "pending", "attempts": 0, "last_error": None, "leased_until": None,
        "lease_owner": None, "settled_at": None, "message_type": "VerifyPhone", "channel": "sms",
        "next_due_at": pending["requested_at"],  # a request is due from its request time
    }  # fmt: skip


async def test_the_table_fits_the_terminal_and_jsonl_keeps_full_values(
    db: Database, scenario: Scenario, env: dict[str, str]
) -> None:
    wide = tidings("notifications", "list", "--format", "table", env=env | {"COLUMNS": "200"})
    assert wide.returncode == 0, wide.stderr
    header, *lines = wide.stdout.splitlines()
    assert header.split() == [
        "REQUESTED", "INSTANCE", "NOTIFICATION", "USER", "TYPE", "CHANNEL", "STATE",
        "ATTEMPTS", "DUE/SETTLED", "DETAIL",
    ]  # fmt: skip
    assert all(len(line) <= 200 for line in [header, *lines])
    line = dict(zip(ALL, lines, strict=True))
    for name, nid in scenario.ids.items():
        assert nid in line[name], "ids are shown in full"
        assert scenario.requested_at[name].strftime("%Y-%m-%d %H:%M:%S") in line[name]

    retrying = line["retrying"].split()
    assert retrying[4:8] == ["user-bob", "VerifyEmail", "email", "retrying"]
    due = scenario.clock.now + RETRY_DELAY
    assert due.strftime("%Y-%m-%d %H:%M:%S") in line["retrying"]
    assert "webhook" in line["retrying"] and line["retrying"].endswith("…"), "long error cut"
    assert "canceled  2" in line["exhausted"]
    assert "max_attempts: attempt 2 of 2 failed" in line["exhausted"]
    assert "canceled  1" in line["bounced"] and "permanent_error: " in line["bounced"]
    assert "sent      2" in line["sent_retried"] and "earlier: " in line["sent_retried"]
    assert "in flight" in line["leased"] and f"leased by {OWNER} until" in line["leased"]
    assert "pending   0         now" in line["pending"]

    (retrying_row,) = listed(env, "--state", "retrying")
    (_, retry_event) = await notification_events(db, scenario.ids["retrying"])
    assert retrying_row["last_error"] == retry_event.payload["error"], "jsonl is not cut"
    assert len(retrying_row["last_error"]) > 200

    fits = tidings("notifications", "list", "--format", "table", env=env)
    assert all(len(line) <= 160 for line in fits.stdout.splitlines()), "COLUMNS=160"
    assert "CHANNEL" in fits.stdout.splitlines()[0]

    narrow = tidings("notifications", "list", "--format", "table", env=env | {"COLUMNS": "120"})
    assert "CHANNEL" not in narrow.stdout.splitlines()[0], "dropped first when narrow"
    for nid in scenario.ids.values():
        assert nid in narrow.stdout


async def test_no_code_or_ciphertext_in_any_output(scenario: Scenario, env: dict[str, str]) -> None:
    for output_format in ("table", "jsonl"):
        result = tidings("notifications", "list", "--format", output_format, env=env)
        assert result.returncode == 0, result.stderr
        for secret in (CODE, CIPHER["value"], "{{.Code}}"):
            assert secret not in result.stdout + result.stderr


async def test_an_empty_result_says_so_with_the_filters(
    scenario: Scenario, env: dict[str, str]
) -> None:
    result = tidings(
        "notifications", "list", "--user", "user-zoe", "--state", "sent",
        "--since", "2024-01-01T00:00:00", "--format", "table", env=env,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "no notifications match: --user user-zoe --state sent --since '2024-01-01 00:00:00 UTC'"
    )


def test_an_empty_log_says_so(conninfo: str) -> None:
    result = tidings("notifications", "list", env=clean_env(TIDINGS_DATABASE_URL=conninfo))
    assert (result.returncode, result.stdout) == (0, "")
    assert "no notifications match (the log holds no notifications)" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--state", "done"], "'pending', 'retrying', 'sent', 'canceled'"),
        (["--type", "Welcome"], "use one of: InitCode, VerifyEmail, PasswordReset"),
        (["--since", "yesterday"], "neither an ISO 8601 time nor a duration like 10m"),
        (["--limit", "0"], "x>=1"),
        (["--since", "1h", "--until", "2h"], "is not before --until"),
    ],
)
def test_bad_filters_say_what_is_allowed(args: list[str], says: str) -> None:
    result = tidings("notifications", "list", *args, env=clean_env())
    assert result.returncode == 2
    assert says in result.stderr
    assert result.stdout == ""


async def test_the_listing_takes_its_indexes_and_skips_the_unused_ways_in(
    db: Database, conninfo: str
) -> None:
    """With a log of some size, each main case reads a few rows by index."""
    for batch in range(30):  # 30 transactions: 30 request times
        await db.store.append(
            [requested(f"n-{i}", user_id=f"user-{i % 50}", instance_id=f"i-{i % 4}", code=None)
             for i in range(batch * 100, batch * 100 + 100)]
        )  # fmt: skip
    await db.store.append(
        [NewEvent(instance_id=f"i-{i % 4}", aggregate_type="notification", aggregate_id=f"n-{i}",
                  event_type="notification.sent", payload={"attempt": 1}, expected_sequence=1)
         for i in range(0, 3000, 3) if i % 100]
    )  # fmt: skip
    base: dict[str, Any] = {
        "instances": None, "user_id": None, "message_types": None, "since": None,
        "until": None, "last_types": None, "open_kinds": None, "settled_types": None,
        "limit": 51, "now": datetime.now().astimezone(),
    }  # fmt: skip

    async def plan(**params: Any) -> str:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await conn.execute("ANALYZE tidings.events")
            await conn.execute("ANALYZE tidings.pending_notifications")
            cur = await conn.execute(
                sql.SQL("EXPLAIN ") + query("list_notifications"), base | params
            )
            return "\n".join(row[0] for row in await cur.fetchall())

    newest = await plan()
    assert "Index Scan Backward using events_requested_at" in newest
    assert newest.count("One-Time Filter: false") == 2, "the other ways in fold away"
    assert "Seq Scan" not in newest

    by_user = await plan(user_id="user-7")
    assert "events_notification_user" in by_user and "Seq Scan on events" not in by_user

    pending = await plan(open_kinds=["request"], last_types=["notification.requested"])
    assert "on pending_notifications" in pending
    assert "events_requested_at" not in pending and "Seq Scan on events" not in pending
