"""The fan-out hub: live delivery, resume without gap or duplicate, slow consumers, resets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.feed_helpers import inapp_requested, inapp_sent, now, sent_inapp
from tests.ops_helpers import wait_for
from tidings.eventstore import Database
from tidings.feeds.hub import FeedHub, SlowConsumer, StreamClosed, StreamEvent, Subscription
from tidings.feeds.operations import mark, prune_feed

TIMEOUT = 10.0


@asynccontextmanager
async def running_hub(db: Database, **options: Any) -> AsyncIterator[FeedHub]:
    hub = FeedHub(store=db.store, conninfo=db.conninfo, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


async def collect(
    sub: Subscription, until: Callable[[list[StreamEvent]], bool]
) -> list[StreamEvent]:
    """Events from the subscription until `until` holds (or fail after TIMEOUT)."""
    got: list[StreamEvent] = []

    async def run() -> None:
        async for event in sub:
            got.append(event)
            if until(got):
                return

    await asyncio.wait_for(run(), TIMEOUT)
    return got


def messages(events: list[StreamEvent]) -> list[StreamEvent]:
    return [e for e in events if e.kind in ("message", "state")]


async def test_a_new_item_reaches_the_users_connections_and_no_one_elses(db: Database) -> None:
    async with running_hub(db) as hub:
        ada = await hub.subscribe("acme", "user-ada", after=None)
        bob = await hub.subscribe("acme", "user-bob", after=None)
        assert hub.connections("acme", "user-ada") == 1 and hub.connected() == 2
        [sent] = await sent_inapp(db.store, ["n-1"])
        got = await collect(ada, lambda g: any(e.kind == "counts" for e in g))
        assert [e.kind for e in got] == ["message", "counts"]
        message, counts = got
        assert message.position == sent.position == counts.position
        assert message.data["id"] == "n-1" and message.data["title"] == "item n-1"
        assert message.data["read"] is False and "user_id" not in message.data
        assert counts.data == {"total": 1, "unread": 1, "unseen": 1}
        assert message.sse().startswith(f"event: message\nid: {sent.position}\ndata: {{")

        await mark(db.store, instance_id="acme", user_id="user-ada", notification_id="n-1",
                   action="read")  # fmt: skip
        got = await collect(ada, lambda g: any(e.kind == "counts" for e in g))
        assert [(e.kind, e.data.get("change")) for e in got] == [
            ("state", "read"),
            ("counts", None),
        ]
        assert got[1].data == {"total": 1, "unread": 0, "unseen": 0}
        assert bob.queue.empty()
        await ada.close()
        assert hub.connections("acme", "user-ada") == 0


async def test_a_resumed_stream_has_no_gap_and_no_duplicate_while_items_keep_coming(
    db: Database,
) -> None:
    first = await sent_inapp(db.store, [f"n-a{i}" for i in range(5)])
    resume_from = first[1].position  # the client saw the first two

    async def writer() -> None:
        for i in range(40):
            await sent_inapp(db.store, [f"n-b{i}"])
            await sent_inapp(db.store, [f"x-{i}"], user_id="user-bob")
            if i % 5 == 0:
                await mark(db.store, instance_id="acme", user_id="user-ada",
                           notification_id=f"n-b{i}", action="read")  # fmt: skip

    async with running_hub(db, batch=7) as hub:  # small pages: the backfill pages too
        writing = asyncio.create_task(writer())
        sub = await hub.subscribe("acme", "user-ada", after=resume_from)
        await writing
        expected = 3 + 40 + 8  # three unseen, forty new, eight reads
        got = messages(await collect(sub, lambda g: len(messages(g)) >= expected))
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT position FROM tidings.events WHERE position > %s"
                " AND aggregate_id NOT LIKE 'x-%%' AND event_type <> 'notification.requested'"
                " ORDER BY position",
                (resume_from,),
            )
        ).fetchall()
    positions = [e.position for e in got]
    assert positions == sorted(set(positions)), "out of order or duplicated"
    assert positions == [r[0] for r in rows], "a gap"


async def test_two_processes_each_deliver_to_their_own_connections(db: Database) -> None:
    async with running_hub(db) as one, running_hub(db) as two:
        phone = await one.subscribe("acme", "user-ada", after=None)
        laptop = await two.subscribe("acme", "user-ada", after=None)
        [sent] = await sent_inapp(db.store, ["n-1"])
        for sub in (phone, laptop):
            got = await collect(sub, lambda g: bool(messages(g)))
            assert [e.position for e in messages(got)] == [sent.position]


async def test_a_slow_consumer_is_dropped_with_a_reason_and_resumes_losing_nothing(
    db: Database,
) -> None:
    async with running_hub(db, queue_size=4) as hub:
        sub = await hub.subscribe("acme", "user-ada", after=None)
        start = sub.last
        appended = [(await sent_inapp(db.store, [f"n-{i}"]))[0] for i in range(6)]
        with pytest.raises(SlowConsumer) as caught:
            await collect(sub, lambda g: False)
        assert caught.value.reason == "slow_consumer" and "too slow" in str(caught.value)
        assert caught.value.resume_after == start
        assert hub.dropped_slow == 1 and hub.connections("acme", "user-ada") == 0

        again = await hub.subscribe("acme", "user-ada", after=caught.value.resume_after)
        got = messages(await collect(again, lambda g: len(messages(g)) >= 6))
        assert [e.position for e in got] == [a.position for a in appended]


async def test_a_cursor_older_than_retention_or_unknown_gets_a_reset(db: Database) -> None:
    old = await sent_inapp(db.store, ["n-old"])
    async with db.pool.connection() as conn:
        await conn.execute("UPDATE tidings.feed_items SET sent_at = sent_at - interval '91 days'")
    await prune_feed(db.store, retention=timedelta(days=90), now=now())
    await sent_inapp(db.store, ["n-new"])
    async with running_hub(db) as hub:
        stale = await hub.subscribe("acme", "user-ada", after=old[0].position - 1)
        [reset] = await collect(stale, lambda g: True)
        assert reset.kind == "reset" and "older than the feed keeps" in reset.data["reason"]
        unknown = await hub.subscribe("acme", "user-ada", after=2**60)
        assert (await collect(unknown, lambda g: True))[0].kind == "reset"
        # After a reset the stream goes on live.
        [sent] = await sent_inapp(db.store, ["n-later"])
        got = await collect(stale, lambda g: bool(messages(g)))
        assert [e.position for e in messages(got)] == [sent.position]


async def test_an_event_that_commits_late_is_not_passed_over(db: Database) -> None:
    """A writer that took its position first but commits last is still delivered.

    (Two users: an open in-app send holds its user's counts row until it commits.)
    """
    async with running_hub(db) as hub:
        bob = await hub.subscribe("acme", "user-bob", after=None)
        ada = await hub.subscribe("acme", "user-ada", after=None)
        await db.store.append(
            [inapp_requested("n-late", user_id="user-bob"), inapp_requested("n-early")]
        )
        async with await psycopg.AsyncConnection.connect(db.conninfo) as late:
            async with late.transaction():
                # The older transaction id, still open while a younger one commits.
                await db.store.append([inapp_sent("n-late", user_id="user-bob")], conn=late)
                [early] = await db.store.append([inapp_sent("n-early")])
                await asyncio.sleep(0.3)  # the hub is woken meanwhile, and must wait
                assert bob.queue.empty() and ada.queue.empty()
            [late_one] = messages(await collect(bob, lambda g: bool(messages(g))))
            [early_one] = messages(await collect(ada, lambda g: bool(messages(g))))
    assert (late_one.data["id"], early_one.data["id"]) == ("n-late", "n-early")
    assert late_one.position < early_one.position == early.position


async def test_stopping_the_hub_closes_every_stream_with_its_resume_position(
    db: Database,
) -> None:
    hub = FeedHub(store=db.store, conninfo=db.conninfo)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    sub = await hub.subscribe("acme", "user-ada", after=None)
    [sent] = await sent_inapp(db.store, ["n-1"])
    await collect(sub, lambda g: bool(messages(g)))
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)
    with pytest.raises(StreamClosed) as caught:
        await collect(sub, lambda g: False)
    assert caught.value.resume_after == sent.position
    assert "shutting down" in str(caught.value)


async def test_many_streams_resuming_at_once_each_get_their_own_events(db: Database) -> None:
    """Their backfills are read together (one query for many); each gets its own, in order."""
    users = [f"user-{i}" for i in range(30)]
    sent: dict[str, list[int]] = {}
    for i, user in enumerate(users):
        ids = [f"n-{user}-{k}" for k in range(i % 4 + 1)]
        sent[user] = [a.position for a in await sent_inapp(db.store, ids, user_id=user)]

    def enough(count: int) -> Callable[[list[StreamEvent]], bool]:
        return lambda got: len(messages(got)) >= count

    async with running_hub(db, batch=3) as hub:
        subs = [await hub.subscribe("acme", user, after=0) for user in users]
        got = await asyncio.gather(
            *(collect(sub, enough(len(sent[user]))) for sub, user in zip(subs, users, strict=True))
        )
    for user, events in zip(users, got, strict=True):
        assert [e.position for e in messages(events)] == sent[user]
        assert all(e.data["id"].startswith(f"n-{user}-") for e in messages(events))


async def test_a_consumer_too_slow_during_its_backfill_is_closed_at_once(db: Database) -> None:
    first = await sent_inapp(db.store, [f"n-{i}" for i in range(5)])
    async with running_hub(db, queue_size=2, batch=2) as hub:
        sub = await hub.subscribe("acme", "user-ada", after=first[0].position - 1)
        [event] = await collect(sub, lambda g: True)  # one backfill page read, then it stalls
        assert event.position == first[0].position
        more = [(await sent_inapp(db.store, [f"m-{i}"]))[0] for i in range(3)]

        async def overflowed() -> bool:  # the live events overflow its queue meanwhile
            return sub.closed is not None

        await wait_for(overflowed, "the hub to close the stalled stream", TIMEOUT)
        with pytest.raises(SlowConsumer) as caught:
            await collect(sub, lambda g: False)
        assert caught.value.resume_after == first[0].position
        again = await hub.subscribe("acme", "user-ada", after=caught.value.resume_after)
        got = messages(await collect(again, lambda g: len(messages(g)) >= 7))
    assert [e.position for e in got] == [a.position for a in [*first[1:], *more]]
