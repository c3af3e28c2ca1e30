"""The transports over the hub: SSE bodies, long-poll, resume after a kill and a restart."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.feed_helpers import sent_inapp
from tests.ops_helpers import wait_for
from tests.test_feed_hub import TIMEOUT, running_hub
from tidings.api.sse import serve_sse
from tidings.config import InAppSettings, Settings
from tidings.eventstore import Database
from tidings.feeds.hub import Subscription
from tidings.feeds.operations import list_feed, mark
from tidings.feeds.runtime import FeedRuntime
from tidings.feeds.streams import long_poll, parse_after

SSE_ID = re.compile(r"^id: (\d+)$", re.MULTILINE)
SSE_EVENT = re.compile(r"^event: (\w+)$", re.MULTILINE)


async def sse_stream(sub: Subscription, *, heartbeat: float) -> AsyncGenerator[str]:
    """The SSE body serve_sse writes for `sub`, chunk by chunk; closing it is the client going."""
    chunks: asyncio.Queue[str | None] = asyncio.Queue()
    gone = asyncio.Event()
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked > 1:
            await gone.wait()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.put_nowait(message["body"].decode() if message.get("more_body") else None)

    serving = asyncio.create_task(serve_sse(sub, heartbeat=heartbeat, receive=receive, send=send))
    try:
        while (chunk := await chunks.get()) is not None:
            yield chunk
    finally:
        gone.set()
        await serving


def test_a_stream_resumes_from_last_event_id_before_after() -> None:
    assert parse_after("42", "7") == 42
    assert parse_after(None, "7") == 7
    assert parse_after("", None) is None
    with pytest.raises(ValueError, match="not a stream position"):
        parse_after("abc", None)


async def test_the_sse_body_carries_ids_heartbeats_and_a_closing_reason(db: Database) -> None:
    hub_stop = asyncio.Event()
    from tidings.feeds.hub import FeedHub

    hub = FeedHub(store=db.store, conninfo=db.conninfo)
    running = asyncio.create_task(hub.run(hub_stop))
    sub = await hub.subscribe("acme", "user-ada", after=None)
    body = sse_stream(sub, heartbeat=0.2)
    assert (await anext(body)).startswith("retry: 2000\n")
    assert await asyncio.wait_for(anext(body), TIMEOUT) == ": heartbeat\n\n"  # quiet
    [sent] = await sent_inapp(db.store, ["n-1"])
    chunk = await asyncio.wait_for(anext(body), TIMEOUT)
    while chunk.startswith(":"):
        chunk = await asyncio.wait_for(anext(body), TIMEOUT)
    assert SSE_EVENT.findall(chunk) == ["message"] and SSE_ID.findall(chunk) == [str(sent.position)]
    hub_stop.set()
    await asyncio.wait_for(running, TIMEOUT)
    rest = [chunk async for chunk in body if not chunk.startswith(":")]
    assert rest[-1].startswith("event: closed\n") and "shutting down" in rest[-1]
    assert hub.connections("acme", "user-ada") == 0


async def test_sse_resumes_without_gap_or_duplicate_after_a_kill_and_a_server_restart(
    db: Database,
) -> None:
    """Read half, drop the connection, restart the hub (a new process), resume by id."""
    await sent_inapp(db.store, [f"n-{i}" for i in range(3)])
    start = (await list_feed(db.store, instance_id="acme", user_id="user-ada")).stream_after
    seen: list[int] = []
    kinds: list[str] = []

    async def read(after: int | None, count: int) -> None:
        async with running_hub(db) as hub:
            body = sse_stream(await hub.subscribe("acme", "user-ada", after=after), heartbeat=5)
            try:
                while len([k for k in kinds if k != "counts"]) < count:
                    chunk = await asyncio.wait_for(anext(body), TIMEOUT)
                    for kind, position in zip(
                        SSE_EVENT.findall(chunk), SSE_ID.findall(chunk), strict=True
                    ):
                        kinds.append(kind)
                        if kind != "counts":
                            seen.append(int(position))
            finally:
                await body.aclose()  # the connection is gone mid-stream

    async def writer() -> None:
        for i in range(20):
            await sent_inapp(db.store, [f"m-{i}"])
            if i % 4 == 0:
                await mark(db.store, instance_id="acme", user_id="user-ada",
                           notification_id=f"m-{i}", action="read")  # fmt: skip

    writing = asyncio.create_task(writer())
    await read(start, 8)
    await read(seen[-1], 25)  # the Last-Event-ID of the first connection, on a new hub
    await writing
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT position FROM tidings.events WHERE position > %s"
                " AND event_type <> 'notification.requested' ORDER BY position",
                (start,),
            )
        ).fetchall()
    assert seen == [r[0] for r in rows]


async def test_a_long_poll_answers_at_once_on_arrival_or_empty_at_the_deadline(
    db: Database,
) -> None:
    [first] = await sent_inapp(db.store, ["n-1"])
    async with running_hub(db) as hub:
        got = await long_poll(hub, "acme", "user-ada", after=first.position - 1, wait=5)
        assert [(e.kind, e.position) for e in got] == [
            ("message", first.position), ("counts", first.position),
        ]  # fmt: skip
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await long_poll(hub, "acme", "user-ada", after=first.position, wait=0.3) == []
        assert loop.time() - began >= 0.3

        async def later() -> int:
            await asyncio.sleep(0.2)
            return (await sent_inapp(db.store, ["n-2"]))[0].position

        arriving = asyncio.create_task(later())
        got = await long_poll(hub, "acme", "user-ada", after=first.position, wait=5)
        assert [e.position for e in got if e.kind == "message"] == [await arriving]
        assert hub.connected() == 0


async def test_the_runtime_drops_items_past_the_retention_while_it_runs(db: Database) -> None:
    await sent_inapp(db.store, ["n-old"])
    async with db.pool.connection() as conn:
        await conn.execute("UPDATE tidings.feed_items SET sent_at = sent_at - interval '2 days'")
    await sent_inapp(db.store, ["n-new"])
    settings = Settings(inapp=InAppSettings(retention=timedelta(days=1)))
    runtime = FeedRuntime(db=db, settings=settings, clock=lambda: datetime.now(UTC))
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:

        async def old_one_gone() -> bool:
            page = await list_feed(db.store, instance_id="acme", user_id="user-ada")
            return len(page.items) == 1

        await wait_for(old_one_gone, "retention to drop the old item", TIMEOUT)
    finally:
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)
        await runtime.close()
    page = await list_feed(db.store, instance_id="acme", user_id="user-ada")
    assert [i.notification_id for i in page.items] == ["n-new"]
