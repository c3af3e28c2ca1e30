"""Streaming reads through a server-side cursor, and append wake-ups."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from tests.helpers import event
from tidings.eventstore import EventQuery, EventStore, NewEvent, WakeUp, wakeups


async def test_stream_reads_in_batches_from_a_server_side_cursor(
    store: EventStore, conninfo: str
) -> None:
    for chunk in range(5):
        await store.append([event(f"u{chunk}-{n}") for n in range(1000)])

    seen = 0
    last = 0
    activity: list[tuple[Any, ...]] = []
    async for stored in store.stream(EventQuery(), batch_size=700):
        assert stored.position > last
        last = stored.position
        seen += 1
        if seen == 1:
            async with await psycopg.AsyncConnection.connect(conninfo) as other:
                cur = await other.execute(
                    "SELECT state, query FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND query LIKE 'FETCH%%'"
                )
                activity = await cur.fetchall()
    assert seen == 5000
    assert activity, "the stream must fetch from a cursor, not load the result at once"
    state, statement = activity[0]
    assert state == "idle in transaction"
    assert "700" in statement and "tidings_stream" in statement


async def test_stream_applies_the_query_filters(store: EventStore) -> None:
    await store.append([event("a"), event("b", "user.removed"), event("c", instance_id="x")])
    got = [e.aggregate_id async for e in store.stream(EventQuery(event_types=("user.removed",)))]
    assert got == ["b"]


async def next_wakeup(stream: Any, timeout: float = 5.0) -> WakeUp | None:
    result: WakeUp | None = await asyncio.wait_for(anext(stream), timeout)
    return result


async def test_append_wakes_listeners_on_commit_only(store: EventStore, conninfo: str) -> None:
    stream = wakeups(conninfo, timeout=0.2)
    try:
        assert await next_wakeup(stream) is None  # quiet: a timeout tick
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await conn.execute("BEGIN")
            (stored,) = await store.append(
                [event("u1", "user.human.password.code.added", instance_id="t-7")], conn=conn
            )
            assert await next_wakeup(stream) is None, "no wake-up before the commit"
            await conn.commit()
        woke = await next_wakeup(stream)
        while woke is None:
            woke = await next_wakeup(stream)
        assert woke.position == stored.position
        assert woke.instance_ids == ("t-7",)
        assert woke.event_types == ("user.human.password.code.added",)
    finally:
        await stream.aclose()


async def test_listener_reconnects_after_losing_its_connection(
    store: EventStore, conninfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.eventstore.listener")
    stream = wakeups(conninfo, timeout=0.2, reconnect_delays=(0.05,))
    try:
        assert await next_wakeup(stream) is None
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            )
        # The listener notices, reconnects and says so; the consumer gets ticks meanwhile.
        for _ in range(50):
            assert await next_wakeup(stream) is None
            if "reachable again" in caplog.text:
                break
        assert "unreachable since" in caplog.text
        assert "reachable again" in caplog.text
        await store.append([event("after-reconnect")])
        for _ in range(20):
            woke = await next_wakeup(stream)
            if woke is not None:
                break
        assert woke is not None and woke.position is not None
    finally:
        await stream.aclose()


async def test_on_listening_says_when_an_append_can_no_longer_be_missed(
    store: EventStore, conninfo: str
) -> None:
    """A consumer that reads after on_listening fired gets a wake-up for any later append."""
    listening = asyncio.Event()
    stream = wakeups(conninfo, timeout=5, on_listening=listening.set)
    first = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        late = NewEvent(
            instance_id="acme",
            aggregate_type="user",
            aggregate_id="u-late",
            event_type="user.human.added",
        )
        await store.append([late])
        woke = await asyncio.wait_for(first, 10)
        assert woke is not None and "user.human.added" in woke.event_types
    finally:
        first.cancel()
        await stream.aclose()
