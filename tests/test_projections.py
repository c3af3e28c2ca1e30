"""The users read model and the requests projection, run by the projector."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.projection_helpers import (
    CODE,
    FixedClock,
    all_users,
    code_event,
    make_projector,
    requests_of,
    session_event,
    user_added,
    user_event,
)
from tidings.eventstore import Database, StoredEvent
from tidings.notification.requests import notification_id
from tidings.notification.sources import MESSAGE_SOURCES
from tidings.projections import notify_user
from tidings.projections.base import Connection

# (source event type, expected message type, expected channel, builder kwargs)
MAPPINGS = [
    ("user.human.initialization.code.added", "InitCode", "email", {}),
    ("user.human.email.code.added", "VerifyEmail", "email", {}),
    ("user.human.password.code.added", "PasswordReset", "email", {}),
    ("user.human.password.code.added", "PasswordReset", "sms", {"notification_type": "sms"}),
    ("user.human.phone.code.added", "VerifyPhone", "sms", {}),
    ("user.human.passwordless.initialization.code.requested", "PasswordlessRegistration",
     "email", {}),
    ("user.human.invite.code.added", "InviteUser", "email", {}),
    ("user.human.otp.sms.code.added", "VerifySMSOTP", "sms", {}),
    ("user.human.otp.email.code.added", "VerifyEmailOTP", "email", {}),
]  # fmt: skip


@pytest.mark.parametrize(("event_type", "message_type", "channel", "extra"), MAPPINGS)
async def test_user_code_events_request_their_message(
    db: Database, event_type: str, message_type: str, channel: str, extra: dict[str, Any]
) -> None:
    await db.store.append([user_added()])
    (source,) = await db.store.append([code_event(event_type, **extra)])
    await make_projector(db).catch_up()

    ((event, requested),) = await requests_of(db)
    request = requested.request
    spec = MESSAGE_SOURCES[event_type]
    assert (request.message_type, request.channel) == (message_type, channel)
    assert event.aggregate_type == "notification"
    assert event.aggregate_id == notification_id(
        instance_id="acme", aggregate_type="user", aggregate_id="user-ada", sequence=2
    )
    assert (event.sequence, event.instance_id, event.owner) == (1, "acme", "org-acme")
    assert request.user_id == "user-ada"
    assert request.resource_owner == "org-acme"
    assert request.code == CODE, "the code passes through untouched"
    assert request.code_expiry == timedelta(minutes=10)
    assert request.url_template == "https://x/{{.Code}}"
    assert request.source is not None
    assert request.source.event_type == event_type
    assert request.source.position == source.position
    assert (request.source.aggregate_id, request.source.sequence) == ("user-ada", 2)
    assert request.sent_event_type == spec.sent_event_type
    assert request.is_otp == spec.is_otp
    assert request.unverified_channel == spec.unverified_channel


@pytest.mark.parametrize(
    ("event_type", "message_type", "channel"),
    [
        ("session.otp.sms.challenged", "VerifySMSOTP", "sms"),
        ("session.otp.email.challenged", "VerifyEmailOTP", "email"),
    ],
)
async def test_session_challenges_request_an_otp_for_the_sessions_user(
    db: Database, event_type: str, message_type: str, channel: str
) -> None:
    await db.store.append([user_added()])
    await db.store.append([session_event(event_type)])
    await make_projector(db).catch_up()
    ((_, requested),) = await requests_of(db)
    assert (requested.request.message_type, requested.request.channel) == (message_type, channel)
    assert requested.request.user_id == "user-ada"
    assert requested.request.is_otp
    assert requested.request.args == {"session_id": "session-1"}
    assert requested.request.source is not None
    assert requested.request.source.aggregate_type == "session"
    assert requested.request.sent_event_type == event_type.replace("challenged", "sent")


async def test_domain_claimed_requests_a_message_with_the_temporary_username(
    db: Database,
) -> None:
    await db.store.append([user_added(), user_event("user.domain.claimed", username="tmp-4711")])
    await make_projector(db).catch_up()
    ((_, requested),) = await requests_of(db)
    assert requested.request.message_type == "DomainClaimed"
    assert requested.request.args == {"temporary_username": "tmp-4711"}
    assert requested.request.code is None
    async with db.pool.connection() as conn:
        user = await notify_user(conn, instance_id="acme", user_id="user-ada")
    assert user is not None and user.username == "tmp-4711"


async def test_password_change_only_with_the_setting_on(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.projections")
    await db.store.append([user_added(), user_event("user.human.password.changed")])
    await make_projector(db).catch_up()
    assert await requests_of(db) == []
    assert "notify_on_password_change is off" in caplog.text

    await db.store.append([user_event("user.human.password.changed")])
    await make_projector(db, notify_on_password_change=True).catch_up()
    ((_, requested),) = await requests_of(db)
    assert (requested.request.message_type, requested.request.channel) == (
        "PasswordChange",
        "email",
    )


async def test_skip_rules_are_logged_with_their_reason(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.projections")
    clock = FixedClock()
    await db.store.append([user_added(), user_added("user-gone")])
    await db.store.append(
        [
            code_event("user.human.password.code.added", code_returned=True),
            code_event("user.human.otp.email.code.added", expiry="1m"),
            user_event("user.removed", "user-gone"),
            code_event("user.human.email.code.added", "user-gone"),
            session_event("session.otp.sms.challenged", user_id="user-gone"),
        ]
    )
    clock.advance(timedelta(minutes=2))  # the 1m code has expired, the others not
    await make_projector(db, clock=clock).catch_up()

    assert await requests_of(db) == []
    assert "code_returned" in caplog.text
    assert "the code expired at" in caplog.text
    assert caplog.text.count("user user-gone was removed") == 2


async def test_a_run_of_source_events_at_once_ends_as_one_at_a_time_would(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The source events between two user events go to the requests projection at once;
    a bad one among them sends the run back one event at a time (it alone is recorded
    and skipped), and each request still sees the user as of its own event."""
    caplog.set_level(logging.DEBUG, logger="tidings.projections")
    await db.store.append([user_added()])
    appended = await db.store.append(
        [
            code_event("user.human.password.code.added"),
            session_event("user.human.password.code.added", user_id="user-ada"),  # wrong type
            code_event("user.human.email.code.added"),
            user_event("user.removed"),
            code_event("user.human.phone.code.added"),  # after the removal: not requested
        ]
    )
    projector = make_projector(db)
    await projector.catch_up()

    requested = [r.request.source.position for _, r in await requests_of(db) if r.request.source]
    assert requested == [appended[0].position, appended[2].position]
    (failure,) = await projector.failures("requests")
    assert failure["position"] == appended[1].position
    assert "projection requests: a run of 3 events" in caplog.text
    assert caplog.text.count("user user-ada was removed") == 1
    assert caplog.text.count("requested PasswordReset") == 1, "logged once, not per try"

    # Rebuilt from the log: the same requests, none twice.
    caplog.clear()
    await projector.rebuild()
    again = [r.request.source.position for _, r in await requests_of(db) if r.request.source]
    assert again == requested


async def test_rerun_and_rebuild_never_request_twice(db: Database) -> None:
    await db.store.append([user_added()])
    await db.store.append([code_event("user.human.password.code.added")])
    await make_projector(db).catch_up()
    await make_projector(db).catch_up()
    assert len(await requests_of(db)) == 1

    requests_only = make_projector(db, only=("requests",))
    assert await requests_only.rebuild() == 1  # it read the source event again...
    assert len(await requests_of(db)) == 1  # ...and requested nothing new


class Crash(BaseException):
    """Stands for the process dying: not an error the projector may catch."""


class CrashOnce:
    name = "crasher"
    event_types = frozenset({"user.human.password.code.added"})

    def __init__(self) -> None:
        self.crashed = False

    async def handle(self, event: StoredEvent, conn: Connection) -> None:
        if not self.crashed:
            self.crashed = True
            raise Crash

    async def reset(self, conn: Connection) -> None:
        pass


async def test_crash_between_handling_and_commit_loses_and_doubles_nothing(
    db: Database,
) -> None:
    await db.store.append([user_added(), user_added("user-bob")])
    await db.store.append(
        [code_event("user.human.password.code.added"), code_event("user.human.email.code.added")]
    )
    crasher = CrashOnce()
    projector = make_projector(db, extra=[crasher])
    with pytest.raises(Crash):
        await projector.catch_up()
    # The batch had handled users and requests before the crash; none of it stayed.
    assert await requests_of(db) == []
    async with db.pool.connection() as conn:
        assert await all_users(conn) == []

    await projector.catch_up()
    assert sorted(r.request.message_type for _, r in await requests_of(db)) == [
        "PasswordReset",
        "VerifyEmail",
    ]
    await make_projector(db, extra=[crasher]).catch_up()
    assert len(await requests_of(db)) == 2


async def test_a_late_commit_is_not_skipped(db: Database, conninfo: str) -> None:
    await db.store.append([user_added(), user_added("user-bob")])
    projector = make_projector(db)
    await projector.catch_up()
    async with await psycopg.AsyncConnection.connect(conninfo) as slow:
        await slow.execute("BEGIN")
        await db.store.append([code_event("user.human.password.code.added")], conn=slow)
        await db.store.append([code_event("user.human.email.code.added", "user-bob")])
        await projector.catch_up()
        assert await requests_of(db) == [], "must wait for the open transaction"
        await slow.commit()
    await projector.catch_up()
    assert sorted(r.request.user_id for _, r in await requests_of(db)) == ["user-ada", "user-bob"]


async def test_message_event_on_the_wrong_aggregate_is_a_failure(db: Database) -> None:
    await db.store.append([user_added()])
    (wrong,) = await db.store.append(
        [session_event("user.human.password.code.added", user_id="user-ada")]
    )
    projector = make_projector(db)
    await projector.catch_up()
    assert await requests_of(db) == []
    (failure,) = await projector.failures("requests")
    assert failure["position"] == wrong.position
    assert "expected 'user'" in failure["error"]


async def test_malformed_events_are_recorded_and_skipped(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.projections")
    await db.store.append([user_added()])
    bad = await db.store.append(
        [
            user_event("user.human.added", "user-broken", email="x@y.z"),  # no username
            code_event("user.human.password.code.added", expiry="soon", code=None),
            user_event("user.human.email.changed", "user-never-added", email="a@b.c"),
            user_event("user.human.shoe.size.changed", shoe=44),  # unknown: passed over
        ]
    )
    good = await db.store.append([code_event("user.human.otp.sms.code.added")])
    projector = make_projector(db)
    await projector.catch_up()

    ((_, requested),) = await requests_of(db)
    assert requested.request.message_type == "VerifySMSOTP"
    assert requested.request.source is not None
    assert requested.request.source.position == good[0].position
    failures = {f["position"]: f for name in ("users", "requests")
                for f in await projector.failures(name)}  # fmt: skip
    assert sorted(failures) == [b.position for b in bad[:3]]
    assert "username: Field required" in failures[bad[0].position]["error"]
    assert "expiry" in failures[bad[1].position]["error"]
    assert "code" in failures[bad[1].position]["error"]
    assert "never added" in failures[bad[2].position]["error"]
    for stored in bad[:3]:
        assert f"position {stored.position}" in caplog.text
    status = {s.name: s for s in await projector.status()}
    assert (status["users"].failures, status["requests"].failures) == (2, 1)
    assert status["users"].lag_events == status["requests"].lag_events == 0


class DropConnectionOnce:
    """Loses the database connection once, as a restart or network cut would."""

    name = "flaky"
    event_types = frozenset({"user.human.added"})

    def __init__(self) -> None:
        self.dropped = False

    async def handle(self, event: StoredEvent, conn: Connection) -> None:
        if not self.dropped:
            self.dropped = True
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    async def reset(self, conn: Connection) -> None:
        pass


async def test_a_lost_database_is_retried_without_advancing(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.projections")
    await db.store.append([user_added(), code_event("user.human.password.code.added")])
    flaky = DropConnectionOnce()
    await make_projector(db, extra=[flaky]).catch_up()
    assert flaky.dropped
    assert "unreachable since" in caplog.text and "retried without advancing" in caplog.text
    assert len(await requests_of(db)) == 1


async def test_users_read_model_follows_the_user(db: Database) -> None:
    await db.store.append([user_added(email_verified=False)])
    await db.store.append(
        [
            user_event("user.human.email.verified"),
            user_event("user.human.email.changed", email="new@example.com"),
            user_event(
                "user.human.profile.changed", display_name="Countess", preferred_language="de"
            ),
            user_event("user.human.phone.changed", phone="+41790000009"),
            user_event("user.username.changed", username="countess"),
        ]
    )
    await make_projector(db).catch_up()
    async with db.pool.connection() as conn:
        user = await notify_user(conn, instance_id="acme", user_id="user-ada")
    assert user is not None
    assert (user.last_email, user.verified_email) == ("new@example.com", "user-ada@example.com")
    assert (user.last_phone, user.verified_phone) == ("+41790000009", "+41790000001")
    assert (user.display_name, user.first_name, user.preferred_language) == (
        "Countess",
        "Ada",
        "de",
    )
    assert (user.username, user.state, user.sequence) == ("countess", "active", 6)

    await db.store.append(
        [
            user_event("user.human.email.verified"),
            user_event("user.human.phone.removed"),
            user_event("user.removed"),
        ]
    )
    await make_projector(db).catch_up()
    async with db.pool.connection() as conn:
        user = await notify_user(conn, instance_id="acme", user_id="user-ada")
        assert await notify_user(conn, instance_id="other", user_id="user-ada") is None
    assert user is not None
    assert user.verified_email == "new@example.com"
    assert (user.last_phone, user.verified_phone, user.state) == (None, None, "removed")


async def test_rebuilt_users_equal_the_live_ones(db: Database) -> None:
    projector = make_projector(db, batch_size=7)
    for n in range(30):
        uid = f"user-{n}"
        await db.store.append([user_added(uid, email_verified=n % 2 == 0)])
        await db.store.append(
            [user_event("user.human.email.changed", uid, email=f"{n}@new.example")]
        )
        if n % 3 == 0:
            await db.store.append([user_event("user.human.email.verified", uid)])
        if n % 5 == 0:
            await db.store.append([user_event("user.removed", uid)])
        if n % 4 == 0:
            await projector.catch_up()  # the live model is built in many small steps
    await projector.catch_up()
    async with db.pool.connection() as conn:
        live = await all_users(conn)
    assert len(live) == 30

    users_only = make_projector(db, only=("users",))
    replayed = await users_only.rebuild()
    assert replayed == await users_only.events_to_replay()
    async with db.pool.connection() as conn:
        assert await all_users(conn) == live


async def test_a_wake_up_during_an_empty_step_is_not_lost(db: Database) -> None:
    """An append lands while a step that found nothing is still running (slowed on
    purpose): the projector reads it at once, not after its 30 s poll. Clearing the
    wake-up after the step used to erase that append's notify."""
    projector = make_projector(db)
    projector._settings = projector._settings.model_copy(
        update={"poll_every": timedelta(seconds=30)}
    )
    await db.store.append([user_added()])
    step = projector.step
    appended = asyncio.Event()

    async def slow_step() -> int:
        covered = await step()
        if not covered and not appended.is_set():
            appended.set()
            await db.store.append([code_event("user.human.password.code.added")])
            await asyncio.sleep(0.5)  # the slow part: its notify arrives meanwhile
        return covered

    projector.step = slow_step  # type: ignore[method-assign,assignment]
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop=stop))
    try:
        await asyncio.wait_for(appended.wait(), 10)
        for _ in range(200):  # up to 10 s, a third of the poll: only the wake-up explains it
            if await requests_of(db):
                break
            await asyncio.sleep(0.05)
        assert len(await requests_of(db)) == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def test_projector_wakes_on_append(db: Database) -> None:
    projector = make_projector(db)
    projector._settings = projector._settings.model_copy(
        update={"poll_every": timedelta(seconds=30)}
    )
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop=stop))
    try:
        await db.store.append([user_added(), code_event("user.human.password.code.added")])
        for _ in range(100):  # well under the 30 s poll: only a wake-up explains it
            if await requests_of(db):
                break
            await asyncio.sleep(0.05)
        assert len(await requests_of(db)) == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def test_two_projectors_overlapping_lose_nothing_and_log_no_error(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby took over while the old leader's batch was still open: no ERROR, no skip."""
    caplog.set_level(logging.INFO, logger="tidings.projections")
    await db.store.append([user_added(), code_event("user.human.password.code.added")])
    old, new = make_projector(db), make_projector(db)
    await new.status()  # its checkpoints exist: it starts at once when its turn comes
    async with db.pool.connection() as conn:
        async with conn.transaction():
            assert await old.step(conn=conn) == 2
            # The new leader reads the same batch and waits on the old one's rows.
            overlapping = asyncio.create_task(new.catch_up())
            await asyncio.sleep(0)  # let it start before the old batch commits
            for _ in range(100):
                if await _waits_on_a_lock(db):
                    break
                await asyncio.sleep(0.02)
        assert await overlapping == 0, "the old leader's batch covered everything"
    assert len(await requests_of(db)) == 1, "one request, nothing doubled"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    assert "skipped" not in caplog.text, "a batch rolled back skipped nothing"
    assert "another projector moved the checkpoint" in caplog.text
    assert "nothing lost" in caplog.text
    statuses = await new.status()
    assert [s.failures for s in statuses] == [0] * len(statuses)


async def _waits_on_a_lock(db: Database) -> bool:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cur.fetchone()
    return bool(row and row[0])


class AppendsAlreadyThere:
    """Appends what another writer appended first, as two projectors racing on one request do."""

    name = "racing"
    event_types = frozenset({"user.human.added"})

    def __init__(self, db: Database) -> None:
        self._db = db

    async def handle(self, event: StoredEvent, conn: Connection) -> None:
        taken = user_added("user-taken").model_copy(update={"expected_sequence": 0})
        await self._db.store.append([taken], conn=conn)

    async def reset(self, conn: Connection) -> None:
        pass


async def test_a_conflicting_append_in_a_projection_is_a_failure_not_an_error(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.projections")
    await db.store.append([user_added("user-taken")])
    await db.store.append([user_added()])
    projector = make_projector(db, extra=[AppendsAlreadyThere(db)])
    await projector.catch_up()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    assert "projection racing skipped user.human.added" in caplog.text
    assert "recorded as a failure" in caplog.text
    racing = next(s for s in await projector.status() if s.name == "racing")
    assert racing.failures == 2 and racing.lag_events == 0
