"""The worker pool end to end: the lifecycle's decisions through a real channel.

The rules themselves are tested pure in tests/unit/test_lifecycle.py; these
tests check that the workers read the queue, ask the lifecycle, send and record
what it decided. Messages go through the real webhook channel to a local HTTP
server, which answers as a provider would (success, 503, 400, ...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.http_peer import HttpPeer, Reply, serve_http
from tests.worker_helpers import (
    FixedClock,
    lowest,
    notification_events,
    requested,
    user_added,
    users_projected,
    worker_settings,
)
from tidings.config import Settings
from tidings.eventstore import Database, EventQuery, NewEvent
from tidings.notification.events import Canceled, RetryRequested, Sent
from tidings.notification.requests import SourceRef
from tidings.service import Service
from tidings.workers import Outcome


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serve_http() as server:
        yield server


@pytest.fixture
async def harness(db: Database, peer: HttpPeer) -> AsyncIterator[Callable[..., Harness]]:
    """Makes harnesses; closes their channels (HTTP clients) when the test ends."""
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        made.append(Harness(db, peer, **settings))
        return made[-1]

    yield make
    for h in made:
        await h.close()


def source_ref(user_id: str, position: int, *, created_at: datetime | None = None) -> SourceRef:
    """The source event of a request: a password code added at `position` of the log."""
    return SourceRef(
        aggregate_type="user",
        aggregate_id=user_id,
        sequence=1,
        event_type="user.human.password.code.added",
        position=position,
        created_at=created_at or datetime.now(UTC),
    )


class Harness:
    """A service with a fixed clock, and helpers to run one claim-and-send round."""

    def __init__(self, db: Database, peer: HttpPeer, **settings: Any) -> None:
        self.db = db
        self.peer = peer
        self.clock = FixedClock()
        self.settings = worker_settings(peer.url, **settings)
        self.service = Service(db=db, settings=self.settings, clock=self.clock, uniform=lowest)
        self._old: list[Service] = []

    def reconfigure(self, settings: Any) -> None:
        self._old.append(self.service)
        self.settings = settings
        self.service = Service(db=self.db, settings=settings, clock=self.clock, uniform=lowest)

    async def close(self) -> None:
        for service in [*self._old, self.service]:
            await service.close()

    async def setup(self, *events: NewEvent) -> None:
        await self.db.store.append([user_added(), user_added("user-bob")])
        await users_projected(self.db, self.settings)
        if events:
            await self.db.store.append(list(events))

    async def round(self, kind: str = "request") -> list[Outcome]:
        claimed = await self.service.pool.claim(kind)  # type: ignore[arg-type]
        return await self.service.pool.process(claimed)

    async def events(self, notification_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            (e.event_type, e.payload) for e in await notification_events(self.db, notification_id)
        ]

    async def pending(self) -> list[dict[str, Any]]:
        return await self.service.pool.queue.snapshot()


async def test_sent_records_the_outcome_and_the_source_sent_event(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness()
    await h.setup(requested("n-1"))
    assert [o.result for o in await h.round()] == ["sent"]

    (delivery,) = peer.requests
    body = delivery.json()
    assert body["notification_id"] == "n-1" and body["attempt"] == 1
    assert body["to"]["address"] == "user-ada@example.com"
    assert "482913" in body["content"]["text"], "the decrypted code is in the message"
    assert delivery.headers["webhook-id"] == "n-1"

    events = await h.events("n-1")
    assert [t for t, _ in events] == ["notification.requested", "notification.sent"]
    sent = Sent.model_validate(events[1][1])
    assert (sent.channel, sent.attempt) == ("webhook", 1)
    source = await db.store.query(
        EventQuery(aggregate_ids=("user-ada",), event_types=("user.human.password.code.sent",))
    )
    assert [e.payload["notification_id"] for e in source] == ["n-1"]
    assert await h.pending() == []
    assert "482913" not in str(await db.store.query(EventQuery())), "no code in the log in plain"


async def test_transient_failure_retries_with_backoff_from_the_snapshot(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness(min_retry_delay=timedelta(seconds=2), retry_delay_factor=1.5)
    await h.setup(requested("n-1"))
    peer.script(Reply(503, body=b"busy"))
    assert [o.result for o in await h.round()] == ["retry"]

    (_, retry_payload) = (await h.events("n-1"))[1]
    retry = RetryRequested.model_validate(retry_payload)
    assert retry.attempt == 1
    assert retry.backoff == timedelta(seconds=2)  # lowest draw in [2s, 3s)
    assert retry.due_at == h.clock.now + timedelta(seconds=2)
    assert "503" in retry.error
    assert retry.notify_user.verified_email == "user-ada@example.com"
    (row,) = await h.pending()
    assert (row["kind"], row["attempts"], row["due_at"]) == ("retry", 1, retry.due_at)

    # The user changes address before the retry: the retry uses the first attempt's snapshot.
    await db.store.append(
        [
            NewEvent(instance_id="acme", aggregate_type="user", aggregate_id="user-ada",
                     event_type="user.human.email.changed", payload={"email": "new@example.com"}),
            NewEvent(instance_id="acme", aggregate_type="user", aggregate_id="user-ada",
                     event_type="user.human.email.verified", payload={}),
        ]
    )  # fmt: skip
    await users_projected(db, h.settings)
    assert await h.round("retry") == [], "not due yet"
    h.clock.advance(timedelta(seconds=2))
    assert [o.result for o in await h.round("retry")] == ["sent"]
    assert peer.requests[-1].json()["to"]["address"] == "user-ada@example.com"
    assert peer.requests[-1].json()["attempt"] == 2
    assert [t for t, _ in await h.events("n-1")][-1] == "notification.sent"


async def test_max_attempts_cancels_and_nothing_follows(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness(max_attempts=3, max_retry_delay=timedelta(seconds=5))
    await h.setup(requested("n-1"))
    peer.script(Reply(500), Reply(500), Reply(500))
    await h.round()
    for _ in range(2):
        h.clock.advance(timedelta(seconds=10))
        await h.round("retry")
    types = [t for t, _ in await h.events("n-1")]
    assert types == ["notification.requested"] + ["notification.retry.requested"] * 2 + [
        "notification.canceled"
    ]
    canceled = Canceled.model_validate((await h.events("n-1"))[-1][1])
    assert (canceled.reason, canceled.attempt) == ("max_attempts", 3)
    assert "attempt 3 of 3 failed" in canceled.error
    h.clock.advance(timedelta(minutes=1))
    assert await h.round("retry") == [] and await h.round() == []
    assert len(peer.requests) == 3


async def test_a_provider_quoting_the_code_never_puts_it_in_the_log(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    """Errors go into retry and canceled events; a code a provider echoes is masked."""
    h = harness()
    await h.setup(requested("n-1", code="R3S/T 77"))
    peer.script(Reply(503, body=b"busy with code R3S/T 77, link ...?code=R3S%2FT%2077"))
    assert [o.result for o in await h.round()] == ["retry"]
    await db.store.append([requested("n-2", code="950117")])
    peer.script(Reply(422, body=b'{"error": "code 950117 rejected"}'))
    assert [o.result for o in await h.round()] == ["canceled"]
    retry = RetryRequested.model_validate((await h.events("n-1"))[-1][1])
    canceled = Canceled.model_validate((await h.events("n-2"))[-1][1])
    assert "503" in retry.error and "***" in retry.error
    assert "R3S/T 77" not in retry.error and "R3S%2FT%2077" not in retry.error
    assert "422" in canceled.error and "code *** rejected" in canceled.error
    assert "950117" not in canceled.error


async def test_expired_notifications_are_canceled_never_sent(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness(max_ttl=timedelta(minutes=5))
    await h.setup(requested("n-1"))
    h.clock.advance(timedelta(minutes=5, seconds=1))
    assert [o.reason for o in await h.round()] == ["expired"]
    assert peer.requests == []
    canceled = Canceled.model_validate((await h.events("n-1"))[-1][1])
    assert (canceled.reason, canceled.attempt) == ("expired", 0)
    assert "max_ttl (5m)" in canceled.error


async def test_removed_or_unknown_users_cancel(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness()
    await h.setup(
        requested("n-ghost", user_id="user-nobody"), requested("n-bob", user_id="user-bob")
    )
    await db.store.append(
        [NewEvent(instance_id="acme", aggregate_type="user", aggregate_id="user-bob",
                  event_type="user.removed", payload={})]
    )  # fmt: skip
    await users_projected(db, h.settings)
    outcomes = await h.round()
    assert sorted(o.reason or "" for o in outcomes) == ["user_removed", "user_unknown"]
    assert peer.requests == []
    ghost = Canceled.model_validate((await h.events("n-ghost"))[-1][1])
    assert ghost.reason == "user_unknown" and "not in the users read model" in ghost.error
    bob = Canceled.model_validate((await h.events("n-bob"))[-1][1])
    assert bob.reason == "user_removed"


async def test_a_user_the_users_model_has_not_read_yet_is_waited_for(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness], conninfo: str
) -> None:
    """The request's source event lies beyond the users projection's checkpoint: the
    worker puts the notification off (no attempt, no event), and sends it once the
    model has the user. It was canceled as user_removed at once before."""
    h = harness()
    await h.setup()
    await db.store.append([user_added("user-late")])  # not projected yet
    source_position = await db.store.last_position()
    await db.store.append(
        [requested("n-late", user_id="user-late", source=source_ref("user-late", source_position))]
    )
    outcomes = await h.round()
    assert [o.result for o in outcomes] == ["wait"]
    assert "not in the users read model yet" in (outcomes[0].reason or "")
    assert [t for t, _ in await h.events("n-late")] == ["notification.requested"]
    (row,) = await h.pending()
    assert (row["kind"], row["attempts"]) == ("request", 0)
    assert peer.requests == []
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT leased_until, claims FROM tidings.pending_notifications")
        ((leased_until, claims),) = await cur.fetchall()
    assert leased_until == h.clock.now + timedelta(seconds=1), "put off for a second only"
    assert claims == 0, "a wait is not counted as a claim whose lease ran out"

    await users_projected(db, h.settings)
    assert await h.round() == [], "put off: not claimable yet"
    h.clock.advance(timedelta(seconds=1))
    assert [o.result for o in await h.round()] == ["sent"]
    assert peer.requests[-1].json()["to"]["address"] == "user-late@example.com"
    sent = Sent.model_validate((await h.events("n-late"))[-1][1])
    assert sent.attempt == 1, "the wait was no attempt"


async def test_an_expired_code_is_never_sent_on_a_retry(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    """The code is valid 1 minute; the first attempt fails, the retry comes after the
    code expired (but within max_ttl): canceled as code_expired, nothing sent again."""
    h = harness(max_ttl=timedelta(minutes=30))
    source = source_ref("user-ada", 1, created_at=h.clock.now)
    await h.setup(requested("n-1", source=source, code_expiry=timedelta(minutes=1)))
    peer.script(Reply(503))
    assert [o.result for o in await h.round()] == ["retry"]
    h.clock.advance(timedelta(minutes=2))
    outcomes = await h.round("retry")
    assert [(o.result, o.reason) for o in outcomes] == [("canceled", "code_expired")]
    assert len(peer.requests) == 1, "the expired code never went out"
    canceled = Canceled.model_validate((await h.events("n-1"))[-1][1])
    assert (canceled.reason, canceled.attempt) == ("code_expired", 1)
    assert "its code expired at" in canceled.error
    assert "482913" not in canceled.error


async def test_every_attempt_carries_the_same_webhook_id(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    """Attempt 1 fails, attempt 2 succeeds: both carry the notification id as webhook-id,
    so a receiver that accepted attempt 1 after all can drop attempt 2."""
    h = harness()
    await h.setup(requested("n-1"))
    peer.script(Reply(503))
    await h.round()
    h.clock.advance(timedelta(seconds=5))
    assert [o.result for o in await h.round("retry")] == ["sent"]
    assert [r.headers["webhook-id"] for r in peer.requests] == ["n-1", "n-1"]


async def test_a_late_outcome_is_refused(
    db: Database,
    peer: HttpPeer,
    caplog: pytest.LogCaptureFixture,
    harness: Callable[..., Harness],
) -> None:
    """Lease ran out: two workers hold the same notification; one outcome is recorded."""
    caplog.set_level(logging.WARNING, logger="tidings.workers")
    h = harness(transaction_duration=timedelta(seconds=10))
    await h.setup(requested("n-1"))
    first = await h.service.pool.claim("request")
    assert await h.service.pool.claim("request") == [], "leased"
    h.clock.advance(timedelta(seconds=11))
    second = await h.service.pool.claim("request")
    assert [c.claims for c in second] == [2]
    assert [o.result for o in await h.service.pool.process(second)] == ["sent"]
    assert [o.result for o in await h.service.pool.process(first)] == ["refused"]
    assert [t for t, _ in await h.events("n-1")] == ["notification.requested", "notification.sent"]
    assert "late outcome refused" in caplog.text
    assert len(peer.requests) == 2, "at most the in-flight message went out twice"


async def test_poison_in_a_bulk_cancels_alone(
    db: Database, peer: HttpPeer, tmp_path: Any, harness: Callable[..., Harness]
) -> None:
    broken = tmp_path / "templates" / "poison"
    broken.mkdir(parents=True)
    (broken / "texts.en.yaml").write_text("PasswordReset:\n  body: '{{ user.no_such_field }}'\n")
    h = harness()
    data = h.settings.model_dump()
    data["templates"]["dir"] = tmp_path / "templates"
    data["channels"]["instances"] = {"nochannel": {"sms": "twilio"}}
    h.reconfigure(Settings(**data))
    await db.store.append(
        [user_added(), user_added(instance_id="poison"), user_added(instance_id="nochannel")]
    )
    await users_projected(db, h.settings)
    await db.store.append(
        [
            requested("ok-1"),
            requested("render", instance_id="poison"),
            requested("vanished", user_id="user-gone"),
            requested("unconfigured", instance_id="nochannel", channel="sms"),
            requested("ok-2"),
        ]
    )
    outcomes = await h.round()
    assert sorted(o.result for o in outcomes) == ["canceled"] * 3 + ["sent"] * 2
    reasons = {}
    for nid in ("render", "vanished", "unconfigured"):
        canceled = Canceled.model_validate((await h.events(nid))[-1][1])
        reasons[nid] = (canceled.reason, canceled.error)
    assert reasons["render"][0] == "permanent_error"
    assert "texts.en.yaml:2" in reasons["render"][1]
    assert reasons["vanished"][0] == "user_unknown"
    assert reasons["unconfigured"][0] == "permanent_error"
    assert "TIDINGS_CHANNELS_TWILIO" in reasons["unconfigured"][1]
    assert sorted(r.json()["notification_id"] for r in peer.requests) == ["ok-1", "ok-2"]


async def test_an_unreadable_request_is_canceled(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    h = harness()
    await h.setup(
        NewEvent(instance_id="acme", aggregate_type="notification", aggregate_id="n-bad",
                 event_type="notification.requested", payload={"request": {"user_id": 5}})
    )  # fmt: skip
    assert [o.reason for o in await h.round()] == ["invalid_request"]


async def test_a_wake_up_during_the_idle_check_is_not_lost(
    db: Database, peer: HttpPeer, harness: Callable[..., Harness]
) -> None:
    """A request is appended while a worker that found nothing is still deciding how
    long to sleep (slowed on purpose): it is sent at once, not after the 30 s poll.
    Clearing the wake-up after that check used to erase the append's notify."""
    h = harness(requeue_every=timedelta(seconds=30), retry_requeue_every=timedelta(seconds=30))
    await h.setup()
    pool = h.service.pool
    idle_wait = pool._idle_wait
    appended = asyncio.Event()

    async def slow_idle_wait(kind: Any, interval: float) -> float:
        wait = await idle_wait(kind, interval)  # nothing due: the whole interval
        if kind == "request" and not appended.is_set():
            appended.set()
            await db.store.append([requested("n-1")])
            await asyncio.sleep(0.5)  # the slow part: the notify arrives meanwhile
        return wait

    pool._idle_wait = slow_idle_wait  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(pool.run(stop=stop, workers=1, retry_workers=0))
    try:
        await asyncio.wait_for(appended.wait(), 10)
        for _ in range(200):  # up to 10 s, a third of the poll: only the wake-up explains it
            if peer.requests:
                break
            await asyncio.sleep(0.05)
        assert [r.json()["notification_id"] for r in peer.requests] == ["n-1"]
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
